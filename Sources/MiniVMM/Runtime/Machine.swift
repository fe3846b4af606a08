// SPDX-License-Identifier: MIT
import Foundation
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
    /// A controller stopped the machine (QMP `quit`).
    case stopped
    /// The guest requested a system reset (port 0x92 fast reset), which minivmm does not model.
    case guestReset = "guest-reset"
    /// SIGINT or SIGTERM stopped the run; the report is still written.
    case interrupted
}

/// How the run ends (lock held).
struct RunEnd {
    var finished = false
    var outcome: RunOutcome = .completed
    var detail = ""
    var guestExitStatus: Int64?
    /// The first VMM-side or firmware-reported failure; a debug exit with status 1 then still fails the run.
    var guestFailure: String?
}

/// Counters for the report (lock held).
struct MachineCounters {
    var unknownMSRs = 0
    var unknownMMIO = 0
    var romWrites = 0
    /// `--pflash`: MMIO reads (command mode) and writes that reached the flashes, and writes refused as not from SMM.
    var pflashReads = 0
    var pflashWrites = 0
    var pflashWritesRefused = 0
    var smis = 0
    var rsms = 0
}

/// The guest's debug console (lock held).
struct GuestConsole {
    var text = ""
    var line = ""
}

/// The machine: its KVM VMs, its CPUs, its devices, its SMRAM windows, its SMM backend and the observations the
/// report is built from. Who owns what:
/// - `devices` (port bus, fw_cfg, Q35 host bridge, hotplug block, report channel, APM) — MachineDevices.swift;
/// - `smram` (windows, non-SMM access counters) and the `canary` — SMRAM/;
/// - `backend` (SMI delivery, SMM execution and observation, hotplug on a vCPU) — SMM/;
/// - the hotplug scenario runs on its own thread through the control API (Control/);
/// - CPU scheduling — VCPULoop.swift; exits — ExitDispatch.swift; IPIs — APIC/IPIDelivery.swift.
/// Everything marked "lock" is guarded by `lock`.
final class Machine: @unchecked Sendable {
    let config: MachineConfig
    let spec: StrategySpec
    let kvm: KVM
    /// The normal view: one KVM VM per shard of vCPUs (`shards`), all mapping the same guest memory. The kvm backend
    /// has exactly one; the emulated backend needs more when the CPUs outnumber what one VM may hold.
    let vms: [VirtualMachine]
    /// How the vCPUs are spread over `vms` (and over the emulated backend's SMRAM-view VMs).
    let shards: VCPUShards
    /// The first normal-view VM: the only one on the kvm backend (its irqchip, its address space 1).
    var vm: VirtualMachine { vms[0] }
    /// KVM VMs of both views (the kvm backend's one; the emulated backend's normal and SMRAM views, each sharded).
    var kvmVMCount: Int { vms.count + ((backend as? EmulatedSMMBackend)?.smmViews.count ?? 0) }
    /// vCPUs created in each normal-view VM (machine construction, then hot-adds under the lock).
    private var vcpusPerVM: [Int]
    /// The TSC offset of CPU 0's vCPU, read when it is created, where KVM has the attribute: every vCPU of the other
    /// normal-view VMs gets it, so all CPUs read one TSC as they would in one VM.
    private var firstTSCOffset: UInt64?
    let memory: GuestMemory
    let lock = MachineLock()
    let log: Logger
    private(set) var cpus: [CPUContext] = []
    let baseCPUID: [CPUIDEntry]
    let saveStateFormat: SaveStateFormat
    /// Set once in `init`, right after the VM exists.
    private(set) var backend: SMMBackend!

    // lock
    let devices: MachineDevices
    let smram: SMRAMMap
    let canary: SMRAMCanary
    /// 0xA0000–0xFFFFF: the A-segment and the PAM regions (LegacyMemory.swift).
    let legacy: LegacyMemoryMap
    /// The normal-view memslots, to map a window again when it opens.
    var normalViewSlots: [Slot: MemoryRegion] = [:]
    /// `--pflash`: the CFI flash pair (unit 0 over the ROM mapping, unit 1 the variable store), and the writer of
    /// the variable store's file with `--pflash-persist` (PFlashMemory.swift).
    let pflash: PFlashBank?
    let pflashWriter: PFlashFileWriter?
    var phase: Phase = .boot {
        didSet { phaseGeneration &+= 1 }
    }
    /// How many times `phase` was set: the kvm backend places an SMI it accounted for after the fact in a phase only
    /// when this did not change between its two looks.
    private(set) var phaseGeneration = 0
    /// How many SMRAM decodes changed a window (lock): the kvm backend's check, as for the phase, that an SMI it
    /// found after the fact entered under the decode it records (`SMIEntryRecord.inSMRAM`).
    private(set) var smramGeneration = 0
    var end = RunEnd()
    var counters = MachineCounters()
    var console = GuestConsole()
    /// Hot-adds refused (by the SMI negotiation rule or the firmware), at most 64; the rest are counted.
    var refusedHotAdds: [String] = []
    var droppedRefusals = 0
    /// CPUs plugged whose hot-add the firmware has not yet reported done or refused, and CPUs whose unplug was
    /// requested but not yet ejected (for controllers that must not finish in the middle).
    var hotAddsInFlight: Set<Int> = []
    var unplugsInFlight: Set<Int> = []
    /// Every CPU a controller hot-added, in order (each once): the report's hot-add list when a QMP client, not
    /// the scripted scenario, drives the run.
    var controlledHotAdds: [Int] = []
    /// Whether the scripted scenario drives hotplug (else a QMP client does, and the report lists what it plugged).
    var scripted = true
    var firmwareReports: [String] = []
    var smramProbeSawAllOnes: Bool?
    var marks: [String: Double] = [:]
    let events = MachineEventQueue()
    let allDone = Condition()
    var threadsRunning = 0
    let startTime = monotonicSeconds()
    var vcpuCreationSeconds = 0.0
    /// How long an idle CPU thread sleeps before it looks again without being woken: every change it waits for wakes
    /// it, so this is only a safety net, stretched with the CPU count so that the idle threads together wake about 256
    /// times a second (each wake-up takes the machine lock and a host context switch: with 4096 CPUs parked in HLT a
    /// 1 s poll made 4096 wake-ups a second, which slowed the serial boot relocation 3.6× per CPU on 2 host cores).
    var idleWaitSeconds: Double { max(1, Double(config.maxCPUs) / 256) }
    /// How many CPU threads run their per-CPU set-up (`SMMBackend.prepareOnCPUThread`: KVM_CREATE_VCPU, a first
    /// KVM_RUN) at the same time: about the host's CPUs. The threads all start together; thousands of them runnable
    /// at once on a few host CPUs were preempted while they held the machine lock, and a 4096-CPU AP bring-up took
    /// 5-9× the 1024-CPU one.
    let prepareGate = DispatchSemaphore(value: max(2, ProcessInfo.processInfo.activeProcessorCount))
    /// Set at the end of `init`: from then on vCPUs are created only by hot-adds, under the lock.
    private(set) var constructed = false

    var tsegBase: UInt64 { smram.tseg.base }
    var tsegBytes: UInt64 { smram.tseg.size }

    init(config: MachineConfig, kvm: KVM, logger: Logger) throws {
        self.config = config
        self.spec = config.strategy.spec
        self.kvm = kvm
        self.log = logger
        try config.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        let shards =
            config.backend == .kvm
            ? VCPUShards(cpus: config.maxCPUs, perVM: config.maxCPUs)
            : VCPUShards(
                cpus: config.maxCPUs,
                perVM: VCPUShards.perVMLimit(
                    maxVCPUs: kvm.maxVCPUs(), maxVCPUID: kvm.maxVCPUID(), override: config.vcpusPerVM))
        self.shards = shards
        vcpusPerVM = Array(repeating: 0, count: shards.vmCount)
        do {
            // Two fds per CPU (its vCPU in each view), two VMs per shard.
            try ResourceLimits.ensureOpenFiles(2 * config.maxCPUs + 2 * shards.vmCount + 128)
            // One thread per CPU waiting on its own condition variable, and the machine lock's waiters.
            ResourceLimits.ensureFutexHash(waiters: 2 * config.maxCPUs)
            try VCPU.installKickSignal()
        } catch { throw MachineError.hostResources(error.description) }
        try Self.checkAddressSpace(config)
        memory = try GuestMemory(ramSize: config.ramBytes, firmware: config.firmware)
        (pflash, pflashWriter) = try Self.makePFlash(config, memory: memory)
        let tsegBytes = UInt64(config.effectiveTSEGMiB) << 20
        smram = SMRAMMap(tsegBase: config.ramBytes - tsegBytes, tsegBytes: tsegBytes)
        canary = SMRAMCanary(tsegBase: config.ramBytes - tsegBytes)
        legacy = try LegacyMemoryMap()

        var cpuid = try kvm.supportedCPUID()
        if !config.longMode {
            if let i = cpuid.firstIndex(where: { $0.function == 0x8000_0001 }) {
                cpuid[i].edx &= ~CPUIDEntry.longModeBit
            }
        }
        baseCPUID = cpuid
        saveStateFormat = SaveStateFormat.forGuest(longModeCPUID: cpuid.hasLongMode)
        devices = try MachineDevices(config: config, present: Set(0..<Self.presentAtBoot(config)))

        var vms: [VirtualMachine] = []
        for _ in 0..<shards.vmCount {
            let v = try kvm.createVM()
            try? v.setTSSAddress(Layout.tssAddress)
            try? v.setIdentityMapAddress(Layout.identityMapAddress)
            try v.enableUserSpaceMSR([.invalid, .unknown, .filter])
            vms.append(v)
        }
        self.vms = vms
        backend = try makeSMMBackend(config.backend, machine: self)
        devices.fwCfg.memory = DMAView(memory: memory, smram: smram)

        try mapMemory()
        try createCPUs()
        constructed = true
    }

    /// Address space a CPU's thread and vCPU take (its 512 KiB stack and guard, `kvm_run`, its share of the heap), and
    /// what the runtime needs on top. Measured: a 1024-CPU run with 128 MiB of RAM starts at ~70 MiB and aborts under
    /// `ulimit -v` 742 MiB, passes at 781 MiB; this estimate gives 774 MiB.
    static let addressSpacePerCPU: UInt64 = 544 << 10
    static let addressSpaceReserve: UInt64 = 32 << 20

    /// Refuses, in one line and before any allocation that could abort the process, a run that cannot fit under
    /// `ulimit -v`: the Swift runtime traps on a failed allocation, and a thread that cannot start ends a run half
    /// way. Status 3, like every host problem.
    static func checkAddressSpace(_ config: MachineConfig) throws(MachineError) {
        guard let limit = ResourceLimits.addressSpaceLimit() else { return }
        let need =
            ResourceLimits.virtualSize() + config.ramBytes + UInt64(config.firmware.count)
            + UInt64(config.pflashVars?.count ?? 0) + addressSpaceReserve
            + UInt64(config.maxCPUs) * addressSpacePerCPU
        if need > limit {
            throw .hostResources(
                "the address-space limit (ulimit -v) of \(limit >> 20) MiB is below the ~\(need >> 20) MiB a \(config.maxCPUs)-CPU machine with \(config.ramBytes >> 20) MiB of RAM needs"
            )
        }
    }

    /// CPUs that exist at boot: every possible CPU for strategy A, `--boot-cpus` for the others.
    static func presentAtBoot(_ config: MachineConfig) -> Int {
        config.strategy.spec.bootPresence == .allPossible ? config.maxCPUs : config.bootCPUs
    }

    // MARK: memory views

    private func ramRegion(_ slot: Slot, _ start: UInt64, _ end: UInt64) -> MemoryRegion? {
        guard end > start else { return nil }
        return MemoryRegion(
            slot: slot.rawValue, guestPhysicalAddress: start, size: end - start,
            hostAddress: memory.hostAddress(ofRAM: start))
    }

    /// Maps RAM (minus the VGA hole and the isa-bios alias) with each SMRAM window as its own slot, the ROM and its
    /// alias into the normal view and into the view SMM code sees (the backend's).
    private func mapMemory() throws {
        let tseg = smram.tseg
        var regions: [MemoryRegion?] = [
            ramRegion(.lowRAM, 0, Layout.defaultSMRAMBase),
            ramRegion(.defaultSMRAM, Layout.defaultSMRAMBase, Layout.defaultSMRAMEnd),
            ramRegion(.lowRAMAbove, Layout.defaultSMRAMEnd, Layout.vgaHoleStart),
            ramRegion(.highRAM, Layout.oneMiB, tseg.base),
            ramRegion(.tseg, tseg.base, tseg.end),
        ]
        regions.append(
            MemoryRegion(
                slot: Slot.rom.rawValue, guestPhysicalAddress: memory.romBase, size: memory.romSize,
                hostAddress: memory.romHost, readOnly: true))
        regions.append(pflashVarsRegion())
        for r in regions.compactMap({ $0 }) {
            try mapIntoNormalView(r)
            normalViewSlots[Slot(rawValue: r.slot)!] = r
            try backend.mapIntoSMMView(r)
        }
        // 0xC0000-0xFFFFF through the PAM regions (the isa-bios alias among them); the A-segment stays unmapped.
        try mapLegacyMemory()
    }

    /// `KVM_SET_USER_MEMORY_REGION` of `region` in every normal-view VM (they share guest memory and its decode).
    func mapIntoNormalView(_ region: MemoryRegion) throws(KVMError) {
        for v in vms { try v.setMemoryRegion(region) }
    }

    /// Deletes `slot` from every normal-view VM.
    func unmapFromNormalView(slot: UInt16) throws(KVMError) {
        for v in vms { try v.deleteMemoryRegion(slot: slot) }
    }

    /// Applies a new Q35 SMRAM decode (lock held): a closed window leaves the normal view, so non-SMM accesses exit
    /// as MMIO and hit the black hole (QEMU's `tseg_blackhole`, `smbase_blackhole`); it stays in the SMM view.
    func applySMRAM(_ c: SMRAMControl) {
        if c.tsegEnabled && c.tsegBytes != tsegBytes {
            noteFailure(
                "firmware selected a \(c.tsegBytes >> 20) MiB TSEG; minivmm offers \(tsegBytes >> 20) MiB (ext)")
        }
        backend.beforeObservedStateChange()
        let changes = smram.apply(c, at: monotonicSeconds() - startTime)
        applyASegment(c)
        if config.untilSMRAMLocked && c.locked && c.tsegEnabled && c.defaultSMBASEState != .open {
            finish(.completed, "the firmware locked SMRAM (--until-smram-locked)")
        }
        if !changes.isEmpty { smramGeneration &+= 1 }
        for change in changes {
            do {
                if change.mapped {
                    if let r = normalViewSlots[change.slot] { try mapIntoNormalView(r) }
                } else {
                    try unmapFromNormalView(slot: change.slot.rawValue)
                    if change.slot == .tseg { canary.plant(in: memory) }
                }
            } catch {
                // The normal view may still map the window: non-SMM reads would then see SMRAM's contents.
                if !change.mapped { smram.accesses.readsReturnedAllOnes = false }
                noteFailure("updating the \(change.slot) memslot failed: \(error.description)")
            }
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

    /// Creates the vCPUs of the CPUs present at boot (and of the absent ones where the backend wants them up
    /// front); the others get theirs when they are hot-added.
    private func createCPUs() throws {
        let t0 = monotonicSeconds()
        let present = Self.presentAtBoot(config)
        cpus.reserveCapacity(config.maxCPUs)
        for i in 0..<config.maxCPUs {
            cpus.append(CPUContext(index: i, vcpu: nil, present: i < present))
        }
        let created = backend.createsAbsentVCPUsAtBoot ? config.maxCPUs : present
        for i in 0..<created {
            // A vCPU made up front for a CPU that does not exist yet has no history: its life starts at its hot-add,
            // on both backends alike.
            try createVCPU(cpus[i], recordsReset: i < present)
            if !config.quiet && created >= 256 && (i + 1) % 256 == 0 {
                progress("created \(i + 1)/\(created) vCPUs")
            }
        }
        vcpuCreationSeconds = monotonicSeconds() - t0
        mark("vcpus-created")
    }

    /// `KVM_CREATE_VCPU` for `cpu` in its shard's VM with its CPUID (which carries its APIC ID); the backend reads
    /// what it tracks; the history starts with the power-on RESET (at boot, or when a CPU that never existed is
    /// hot-added). Machine construction, or a hot-add under the lock.
    func createVCPU(_ cpu: CPUContext, recordsReset: Bool = true) throws {
        let (shard, id) = shards.location(of: cpu.index)
        let v = try vms[shard].createVCPU(id: id)
        try v.setCPUID(cpuid(for: cpu.index))
        v.enableSyncRegisters(.all)
        try alignTSC(v, cpu: cpu, shard: shard)
        cpu.attach(v)
        try backend.attach(cpu)
        vcpusPerVM[shard] += 1
        if vcpusPerVM[shard] == 1 {
            // The masterclock on while one vCPU exists, so the others do not each request an O(vCPUs) update.
            try? vms[shard].refreshMasterClock()
        }
        if recordsReset {
            noteSMBASE(cpu, SMBASEEvent(cause: .reset, phase: phase, smbase: cpu.smbase))
        }
    }

    /// One TSC for all CPUs: KVM starts the TSC of each VM's vCPUs together, at about 0 when the VM's first vCPU is
    /// created (`kvm_synchronize_tsc`), so a vCPU of another normal-view VM gets CPU 0's TSC offset (one get, and a
    /// set only when KVM did not already match it to its VM's earlier vCPUs). Without the attribute the shards'
    /// TSCs differ by the time between their VMs' first vCPUs.
    private func alignTSC(_ v: VCPU, cpu: CPUContext, shard: Int) throws {
        if cpu.index == 0 {
            if shards.vmCount > 1 && v.hasTSCOffsetAttribute { firstTSCOffset = try v.getTSCOffset() }
            return
        }
        guard shard > 0, let offset = firstTSCOffset else { return }
        cpu.extraIoctls += 1
        if try v.getTSCOffset() != offset {
            try v.setTSCOffset(offset)
            cpu.extraIoctls += 1
        }
    }

    /// Starts the thread of a CPU whose vCPU exists (lock held or not yet shared).
    func startCPUThread(_ c: CPUContext) {
        threadsRunning += 1
        if startThread(name: "vcpu\(c.index)", { [unowned self] in self.cpuThread(c) }) == nil {
            threadsRunning -= 1
            finish(.vmmError, "cannot start a thread for CPU \(c.index)")
        }
    }

    func progress(_ s: String) {
        guard !config.quiet else { return }
        let t = String(format: "%7.3f", monotonicSeconds() - startTime)
        FileHandle.standardError.write("[minivmm \(t)s] \(s)\n".data(using: .utf8)!)
    }

    func traceLine(_ s: String) {
        FileHandle.standardError.write("trace: \(s)\n".data(using: .utf8)!)
    }

    func mark(_ name: String) {
        if marks[name] == nil { marks[name] = monotonicSeconds() - startTime }
    }

    // MARK: ending

    /// Records a VMM-side failure without stopping (lock held).
    func noteFailure(_ s: String) {
        log.warning("\(s)")
        if end.guestFailure == nil { end.guestFailure = s }
    }

    /// Ends the run (lock held): every vCPU thread stops at its next step.
    func finish(_ o: RunOutcome, _ detail: String) {
        guard !end.finished else { return }
        end.finished = true
        end.outcome = o
        end.detail = detail
        for c in cpus { wakeOrKick(c) }
        events.post(.finished)
        allDone.broadcast()
    }

    func wakeOrKick(_ c: CPUContext) {
        c.wake.signal()
        c.inKVMRun?.kick()
    }

    /// Stops `cpu` for good and ends the run with `outcome`; the report keeps its registers and last exits.
    func stopCPU(_ cpu: CPUContext, _ outcome: RunOutcome, _ why: String) {
        lock.withLock {
            cpu.state = .stopped
            finish(outcome, "CPU \(cpu.index)\(cpu.inSMM ? " (in SMM)" : ""): \(why)")
        }
    }

    func tripleFault(_ cpu: CPUContext, _ why: String) { stopCPU(cpu, .tripleFault, why) }
}
