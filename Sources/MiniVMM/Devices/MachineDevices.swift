// SPDX-License-Identifier: MIT
import GuestFirmware

/// The machine's devices on the port bus, registered explicitly and in order (kvmtool's lesson, without constructor
/// magic), each at the base and length its own type names. Guarded by the machine lock.
///
/// `package` (not `internal`) so that the libFuzzer target `fuzz-portbus` (Fuzz/, same package) builds the bus exactly
/// as the machine does.
package final class MachineDevices {
    package let bus = PortIOBus()
    package let fwCfg: FwCfg
    let smiFeatures: SMIFeatures
    let hostBridge: Q35HostBridge
    let hotplug: CPUHotplugController
    let reportPort = ReportPort()
    let apm = APMControl()
    /// The ICH9 LPC bridge at 00:1f.0 and its PM I/O block (placed on the bus when firmware enables it).
    let lpc: ICH9LPC
    let cmos: CMOS
    /// A `--firmware FILE --stock` machine: QEMU's q35 as stock firmware expects it. APM SMIs are gated by SMI_EN.APMC_EN
    /// and minivmm's own ports (report channel 0x600, SMM entry probe 0x604) are absent, so PMBASE 0x600 is free
    /// for the PM block as on QEMU. The built-in firmwares keep minivmm's ports and ungated APM SMIs.
    let stockChipset: Bool

    package init(config: MachineConfig, present: Set<Int>) throws {
        fwCfg = FwCfg(ramSize: config.ramBytes, bootCPUs: UInt16(config.bootCPUs), maxCPUs: UInt16(config.maxCPUs))
        smiFeatures = try SMIFeatures()
        try smiFeatures.install(on: fwCfg)
        try Self.addQEMUItems(fwCfg, config: config)
        try fwCfg.addFile(name: "opt/org.minivmm/strategy", data: littleEndianBytes32(config.strategy.firmwareID))
        if let attack = config.attack {
            try fwCfg.addFile(name: "opt/org.minivmm/attack", data: littleEndianBytes32(attack.firmwareID))
        }
        hostBridge = try Q35HostBridge(extTSEGMiB: config.effectiveTSEGMiB)
        hotplug = CPUHotplugController(possibleCPUs: config.maxCPUs, present: present)
        try bus.register(DebugConsole(), base: DebugConsole.port, length: DebugConsole.length)
        try bus.register(DebugExit(), base: DebugExit.port, length: DebugExit.length)
        try bus.register(apm, base: APMControl.port, length: APMControl.length)
        try bus.register(fwCfg, base: UInt16(MINIVMM_PORT_FWCFG_SEL), length: 12)
        try bus.register(hostBridge, base: UInt16(MINIVMM_PORT_PCI_ADDR), length: 8)
        try bus.register(
            HotplugPort(hotplug), base: UInt16(MINIVMM_PORT_CPUHP_BASE), length: UInt16(MINIVMM_CPUHP_LEN))
        stockChipset = config.firmwareKind == .stock
        if !stockChipset {
            try bus.register(reportPort, base: ReportPort.port, length: ReportPort.length)
            try bus.register(SMMEntryProbe(), base: UInt16(MINIVMM_PORT_SMM_ENTRY), length: 1)
        } else {
            try bus.register(SerialPort(), base: SerialPort.port, length: SerialPort.length)
        }
        let pm = ICH9PMIO()
        lpc = ICH9LPC(bus: bus, pm: pm)
        hostBridge.attach(lpc, devfn: ICH9LPC.devfn)
        if stockChipset { apm.gate = pm }
        cmos = CMOS(ramBytes: config.ramBytes, bootCPUs: config.bootCPUs)
        try bus.register(cmos, base: CMOS.port, length: CMOS.length)
        try bus.register(Port92(), base: Port92.port, length: Port92.length)
        try bus.register(I8259(master: true), base: I8259.masterPort, length: I8259.length)
        try bus.register(I8259(master: false), base: I8259.slavePort, length: I8259.length)
        try bus.register(ELCR(), base: ELCR.port, length: ELCR.length)
    }

    /// `E820_RAM`.
    static let e820RAM: UInt32 = 1

    /// QEMU's `etc/e820` (`pc_memory_init` → `e820_add_entry(0, below_4g_mem_size, E820_RAM)`): packed 20-byte
    /// entries `{u64 address, u64 length, u32 type}`, little-endian. minivmm's RAM lies below 4 GiB, so there is one.
    static func e820Table(ramBytes: UInt64) -> [UInt8] {
        littleEndianBytes(UInt64(0)) + littleEndianBytes(ramBytes) + littleEndianBytes(e820RAM)
    }

    /// The other items QEMU's q35 machine puts in fw_cfg that SeaBIOS reads (`fw_cfg_common_init`,
    /// `fw_cfg_arch_create`, `fw_cfg_reboot`): UUID 0x02 (zero), NOGRAPHIC 0x04 (u16 0), NUMA 0x0D (u64 node count
    /// 0, then one u64 per possible APIC ID, all 0), BOOT_MENU 0x0E (u16 0), the legacy ACPI table list 0x8000
    /// (empty), IRQ0_OVERRIDE 0x8002 (u32 1), `etc/e820` and `etc/boot-fail-wait` (u32 -1: no reboot on boot failure).
    static func addQEMUItems(_ fwCfg: FwCfg, config: MachineConfig) throws {
        fwCfg.setItem(0x02, data: [UInt8](repeating: 0, count: 16))
        fwCfg.setItem(0x04, data: littleEndianBytes(UInt16(0)))
        fwCfg.setItem(0x0D, data: [UInt8](repeating: 0, count: (1 + config.maxCPUs) * 8))
        fwCfg.setItem(0x0E, data: littleEndianBytes(UInt16(0)))
        fwCfg.setArchItem(0x8000, data: [])
        fwCfg.setArchItem(0x8002, data: littleEndianBytes(UInt32(1)))
        try fwCfg.addFile(name: "etc/e820", data: e820Table(ramBytes: config.ramBytes))
        try fwCfg.addFile(name: "etc/boot-fail-wait", data: littleEndianBytes(UInt32.max))
    }
}

private func littleEndianBytes32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

/// Adapts the hotplug controller's own effect type to the port bus.
final class HotplugPort: PortIODevice {
    let controller: CPUHotplugController
    let name = "cpu-hotplug"
    init(_ c: CPUHotplugController) { controller = c }

    func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        controller.read(offset: Int(offset), size: size, inSMM: context.inSMM).value
    }

    func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        let ostBefore = controller.ostStatusWrites
        var effects: [DeviceEffect] =
            switch controller.write(offset: Int(offset), size: size, value: value, inSMM: context.inSMM) {
            case .eject(let cpu): [.ejectCPU(cpu)]
            case .ignored(let why): [.ignored(why)]
            case nil: []
            }
        if controller.ostStatusWrites != ostBefore, let cpu = Int(exactly: controller.selector),
            let s = controller.status(cpu: cpu)
        {
            effects.append(.ostStatus(cpu: cpu, event: s.ostEvent, status: s.ostStatus))
        }
        return effects
    }
}
