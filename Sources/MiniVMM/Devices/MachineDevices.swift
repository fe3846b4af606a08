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

    package init(config: MachineConfig, present: Set<Int>) throws {
        fwCfg = FwCfg(ramSize: config.ramBytes, bootCPUs: UInt16(config.bootCPUs), maxCPUs: UInt16(config.maxCPUs))
        smiFeatures = try SMIFeatures()
        try smiFeatures.install(on: fwCfg)
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
        try bus.register(reportPort, base: ReportPort.port, length: ReportPort.length)
        try bus.register(SMMEntryProbe(), base: UInt16(MINIVMM_PORT_SMM_ENTRY), length: 1)
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
