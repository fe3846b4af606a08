// SPDX-License-Identifier: MIT
import Foundation
import GuestFirmware
import KVMBridge
import Logging

/// How a run ended, before invariants are judged.
public enum RunOutcome: String, Codable, Sendable {
    /// The firmware finished the scenario and left through isa-debug-exit.
    case completed
    /// The firmware reported a failure (REPORT_FAIL) or exited with a nonzero code.
    case guestFailure = "guest-failure"
    /// A CPU triple-faulted (KVM_EXIT_SHUTDOWN, an exception in SMM, or a failed RSM).
    case tripleFault = "triple-fault"
    /// KVM could not continue a CPU (emulation failure, failed entry, unexpected exit).
    case cpuStopped = "cpu-stopped"
    /// `--timeout` expired.
    case timeout
    /// KVM or the VMM failed.
    case vmmError = "vmm-error"
}

/// The machine: its KVM VM (for the emulated SMM backend also a second VM, the SMRAM view that plays the part
/// of KVM's address space 1), its CPUs, devices, the hotplug scenario, and the observations the report is built
/// from.
final class Machine: @unchecked Sendable {
    let config: MachineConfig
    let kvm: KVM
    let vm: VirtualMachine
    /// Emulated backend: the SMRAM view. The kvm backend has KVM's own address space 1 instead (`nil`).
    let smmView: VirtualMachine?
    /// `.emulated` or `.kvm`.
    let backend: SMMBackendKind
    let memory: GuestMemory
    let lock = MachineLock()
    let log: Logger
    var cpus: [CPUContext] = []
    let baseCPUID: [CPUIDEntry]
    let saveStateFormat: SaveStateFormat

    // devices (lock)
    let bus = PortIOBus()
    let fwCfg: FwCfg
    let smiFeatures: SMIFeatures
    let hostBridge: Q35HostBridge
    let hotplug: CPUHotplugController
    let reportPort = ReportPort()
    let apm = APMControl()

    // SMRAM (lock)
    let tsegBase: UInt64
    let tsegBytes: UInt64
    var tsegClosed = false
    var tsegLocked = false
    var smramAccesses = SMRAMAccessCounters()
    var normalViewSlots: [Slot: MemoryRegion] = [:]

    // scenario (lock)
    var phase: Phase = .boot
    var toRemove: Set<Int> = []
    var removed: Set<Int> = []
    var hotAddPending: Set<Int> = []
    var hotAddDone: Set<Int> = []
    var refusedHotAdds: [String] = []
    var firmwareReports: [String] = []
    var relocatedClaims = 0
    var guestFailure: String?
    var consoleText = ""
    var consoleLine = ""
    var marks: [String: Double] = [:]
    var unknownMSRs = 0
    var unknownMMIO = 0
    var romWrites = 0
    var smiCount = 0
    var rsmCount = 0

    // ending (lock)
    var finished = false
    var outcome: RunOutcome = .completed
    var outcomeDetail = ""
    var guestExitStatus: Int32?
    let allDone = Condition()
    var threadsRunning = 0
    let startTime = monotonicSeconds()
    var vcpuCreationSeconds = 0.0

    init(config: MachineConfig, kvm: KVM, logger: Logger) throws {
        self.config = config
        self.kvm = kvm
        self.log = logger
        try config.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        do {
            try ResourceLimits.ensureOpenFiles(2 * config.maxCPUs + 128)
            try VCPU.installKickSignal()
        } catch { throw MachineError.hostResources(error.description) }
        memory = try GuestMemory(ramSize: config.ramBytes, firmware: config.firmware)
        tsegBytes = UInt64(config.effectiveTSEGMiB) << 20
        tsegBase = config.ramBytes - tsegBytes

        var cpuid = try kvm.supportedCPUID()
        if !config.longMode {
            if let i = cpuid.firstIndex(where: { $0.function == 0x8000_0001 }) {
                cpuid[i].edx &= ~CPUIDEntry.longModeBit
            }
        }
        baseCPUID = cpuid
        saveStateFormat = SaveStateFormat.forGuest(longModeCPUID: cpuid.hasLongMode)

        backend = config.backend == .kvm ? .kvm : .emulated
        vm = try kvm.createVM()
        if backend == .kvm {
            // KVM's own local APICs (INIT, SIPI and SMI IPIs with KVM's semantics), 32-bit x2APIC IDs for more
            // than 255 CPUs (KVM_X2APIC_API_USE_32BIT_IDS), before any vCPU exists.
            try vm.createIRQChip()
            try vm.enableX2APICAPI()
            smmView = nil
        } else {
            smmView = try kvm.createVM()
        }
        for v in [vm, smmView].compactMap({ $0 }) {
            try? v.setTSSAddress(Layout.tssAddress)
            try? v.setIdentityMapAddress(Layout.identityMapAddress)
            try v.enableUserSpaceMSR([.invalid, .unknown, .filter])
        }

        // Devices, registered explicitly and in order (kvmtool's lesson, without constructor magic).
        fwCfg = FwCfg(ramSize: config.ramBytes, bootCPUs: UInt16(config.bootCPUs), maxCPUs: UInt16(config.maxCPUs))
        smiFeatures = try SMIFeatures()
        try smiFeatures.install(on: fwCfg)
        var strategy = config.strategy.firmwareID
        try fwCfg.addFile(
            name: "opt/org.minivmm/strategy", data: withUnsafeBytes(of: &strategy) { Array($0) }, writable: false)
        hostBridge = try Q35HostBridge(extTSEGMiB: config.effectiveTSEGMiB)
        hotplug = CPUHotplugController(possibleCPUs: config.maxCPUs, present: Set(0..<config.maxCPUs))
        try bus.register(DebugConsole(), base: UInt16(MINIVMM_PORT_DEBUGCON), length: 1)
        try bus.register(DebugExit(), base: UInt16(MINIVMM_PORT_DEBUG_EXIT), length: 4)
        try bus.register(apm, base: UInt16(MINIVMM_PORT_APM_CNT), length: 2)
        try bus.register(fwCfg, base: UInt16(MINIVMM_PORT_FWCFG_SEL), length: 12)
        try bus.register(hostBridge, base: UInt16(MINIVMM_PORT_PCI_ADDR), length: 8)
        try bus.register(
            HotplugPort(hotplug), base: UInt16(MINIVMM_PORT_CPUHP_BASE), length: UInt16(MINIVMM_CPUHP_LEN))
        try bus.register(reportPort, base: UInt16(MINIVMM_PORT_REPORT), length: 4)
        try bus.register(SMMEntryProbe(), base: UInt16(MINIVMM_PORT_SMM_ENTRY), length: 1)
        fwCfg.memory = DMAView(memory: memory) { [unowned self] gpa, n in self.isClosedSMRAM(gpa, count: n) }

        try mapMemory()
        try createCPUs()
    }

    // MARK: memory views

    private func ramRegion(_ slot: Slot, _ start: UInt64, _ end: UInt64) -> MemoryRegion? {
        guard end > start else { return nil }
        return MemoryRegion(
            slot: slot.rawValue, guestPhysicalAddress: start, size: end - start,
            hostAddress: memory.hostAddress(ofRAM: start))
    }

    /// Maps RAM (minus the VGA hole and the isa-bios alias), TSEG as its own slot, the ROM and its alias into
    /// both views (kvm backend: address spaces 0 and 1, `slot | 1 << 16`, RAM mirrored under SMRAM as QEMU
    /// does), and — emulated backend — the trap IVT into the SMRAM view only.
    private func mapMemory() throws {
        var regions: [MemoryRegion] = []
        regions += [ramRegion(.lowRAM, 0, Layout.vgaHoleStart)].compactMap { $0 }
        regions += [ramRegion(.upperRAM, Layout.vgaHoleEnd, Layout.oneMiB - memory.romAliasSize)].compactMap { $0 }
        regions += [ramRegion(.highRAM, Layout.oneMiB, tsegBase)].compactMap { $0 }
        regions += [ramRegion(.tseg, tsegBase, config.ramBytes)].compactMap { $0 }
        regions.append(
            MemoryRegion(
                slot: Slot.rom.rawValue, guestPhysicalAddress: memory.romBase, size: memory.romSize,
                hostAddress: memory.romHost, readOnly: true))
        regions.append(
            MemoryRegion(
                slot: Slot.romAlias.rawValue, guestPhysicalAddress: Layout.oneMiB - memory.romAliasSize,
                size: memory.romAliasSize, hostAddress: memory.romAliasHost, readOnly: true))
        for r in regions {
            try vm.setMemoryRegion(r)
            normalViewSlots[Slot(rawValue: r.slot)!] = r
            if let smmView {
                try smmView.setMemoryRegion(r)
            } else {
                var smram = r
                smram.addressSpace = 1
                try vm.setMemoryRegion(smram)
            }
        }
        try smmView?.setMemoryRegion(
            MemoryRegion(
                slot: Slot.smmTrap.rawValue, guestPhysicalAddress: Layout.smmTrapIVT, size: 4096,
                hostAddress: memory.trapHost, readOnly: true))
    }

    /// Whether a non-SMM access to [gpa, gpa+count) hits closed SMRAM (lock held or immutable state).
    func isClosedSMRAM(_ gpa: UInt64, count: Int) -> Bool {
        tsegClosed && gpa + UInt64(count) > tsegBase && gpa < config.ramBytes
    }

    /// Whether SMM code at [smbase+0x8000, smbase+0x10000) runs from closed SMRAM.
    func entryIsInSMRAM(smbase: UInt32) -> Bool {
        let lo = UInt64(smbase) + 0x8000
        let hi = UInt64(smbase) + 0x10000
        return tsegClosed && lo >= tsegBase && hi <= config.ramBytes
    }

    /// Applies a new Q35 SMRAM state: once TSEG is enabled the normal view loses its memslot, so non-SMM
    /// accesses exit as MMIO and hit the black hole (QEMU's `tseg_blackhole`). Called with the lock held.
    func applySMRAM(_ c: SMRAMControl) {
        tsegLocked = c.locked
        let closeTSEG = c.tsegEnabled
        if c.tsegEnabled && c.tsegBytes != tsegBytes {
            noteFailure(
                "firmware selected a \(c.tsegBytes >> 20) MiB TSEG; minivmm offers \(tsegBytes >> 20) MiB (ext)")
        }
        guard closeTSEG != tsegClosed else { return }
        do {
            if closeTSEG {
                try vm.deleteMemoryRegion(slot: Slot.tseg.rawValue)
            } else if let r = normalViewSlots[.tseg] {
                try vm.setMemoryRegion(r)
            }
            tsegClosed = closeTSEG
        } catch {
            noteFailure("updating the TSEG memslot failed: \(error.description)")
        }
    }

    // MARK: CPUs

    /// CPUID for CPU `index`: APIC ID in leaf 1 EBX[31:24] and leaf 0xB EDX (the firmware's SMI handlers read
    /// their identity from CPUID 0xB, as OVMF's FirstSmiHandler does).
    func cpuid(for index: Int) -> [CPUIDEntry] {
        var c = baseCPUID
        for i in c.indices {
            switch c[i].function {
            case 0:
                c[i].eax = max(c[i].eax, 0xB)
            case 1:
                c[i].ebx = (c[i].ebx & 0x00FF_FFFF) | (UInt32(index & 0xFF) << 24)
            case 0xB:
                c[i].edx = UInt32(index)
            default: break
            }
        }
        if !c.contains(where: { $0.function == 0xB }) {
            c.append(CPUIDEntry(function: 0xB, index: 0, flags: 1, eax: 0, ebx: 1, ecx: 0x100, edx: UInt32(index)))
            c.append(CPUIDEntry(function: 0xB, index: 1, flags: 1, eax: 0, ebx: 1, ecx: 0x201, edx: UInt32(index)))
        }
        return c
    }

    private func createCPUs() throws {
        let t0 = monotonicSeconds()
        cpus.reserveCapacity(config.maxCPUs)
        for i in 0..<config.maxCPUs {
            let v = try vm.createVCPU(id: UInt32(i))
            try v.setCPUID(cpuid(for: i))
            v.enableSyncRegisters(.all)
            let c = CPUContext(index: i, vcpu: v, isBSP: i == 0)
            if backend == .kvm {
                // KVM holds SMBASE: read it (MSR 0x9E, host-initiated) with KVM's SMI count.
                let m = try readSMMMSRs(c)
                c.smbase = m.smbase
                c.kvmSMICount = m.smiCount
            } else {
                let d = try v.getDebugRegs()
                c.debugRegs = (d.dr6, d.dr7)
            }
            cpus.append(c)
            cpus[i].observation.smbaseHistory.append(SMBASEEvent(cause: .reset, phase: .boot, smbase: c.smbase))
            if !config.quiet && config.maxCPUs >= 256 && (i + 1) % 256 == 0 {
                progress("created \(i + 1)/\(config.maxCPUs) vCPUs")
            }
        }
        vcpuCreationSeconds = monotonicSeconds() - t0
    }

    /// The SMRAM-view vCPU for `cpu`, created on first SMI (one per guest CPU, always run by that CPU's thread).
    func smmVCPU(for cpu: CPUContext) throws -> VCPU {
        if let v = cpu.smmVCPU { return v }
        guard let smmView else { throw MachineError.kvm("the kvm SMM backend has no SMRAM-view vCPUs") }
        let v = try smmView.createVCPU(id: UInt32(cpu.index))
        try v.setCPUID(cpuid(for: cpu.index))
        // This vCPU only ever runs SMM code: single-step it for good, so the VMM sees every SMM instruction
        // boundary and performs RSM before the CPU would execute it (no #UD, no frame pushed).
        try v.setGuestDebug(singleStep: true)
        v.enableSyncRegisters(.all)
        cpu.smmVCPU = v
        cpu.extraIoctls += 3
        return v
    }

    func progress(_ s: String) {
        guard !config.quiet else { return }
        let t = String(format: "%7.3f", monotonicSeconds() - startTime)
        FileHandle.standardError.write("[minivmm \(t)s] \(s)\n".data(using: .utf8)!)
    }

    // MARK: ending

    /// Records a VMM-side failure without stopping (lock held).
    func noteFailure(_ s: String) {
        log.warning("\(s)")
        if guestFailure == nil { guestFailure = s }
    }

    /// Ends the run (lock held): every vCPU thread stops at its next step.
    func finish(_ o: RunOutcome, _ detail: String) {
        guard !finished else { return }
        finished = true
        outcome = o
        outcomeDetail = detail
        for c in cpus {
            c.wake.signal()
            c.inKVMRun?.kick()
        }
        allDone.broadcast()
    }
}

/// Adapts the hotplug controller's own effect type to the port bus.
final class HotplugPort: PortIODevice {
    let controller: CPUHotplugController
    let name = "cpu-hotplug"
    init(_ c: CPUHotplugController) { controller = c }

    func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        controller.read(offset: Int(offset), size: size, inSMM: context.inSMM).value
    }

    func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        switch controller.write(offset: Int(offset), size: size, value: value, inSMM: context.inSMM) {
        case .eject(let cpu): [.ejectCPU(cpu)]
        case .ignored(let why): [.ignored(why)]
        case nil: []
        }
    }
}
