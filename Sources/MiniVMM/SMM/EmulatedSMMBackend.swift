// SPDX-License-Identifier: MIT
import CKVM
import GuestFirmware
import KVMBridge

/// The emulated SMM backend: KVM here has no SMM, so the VMM performs SMI entry and RSM itself with the
/// pure model of `SMMTransitions.swift` (KVM's `enter_smm` / `emulator_leave_smm`), and runs SMM code on the
/// CPU's vCPU in the SMRAM view — a second VM over the same host memory that plays KVM's address space 1:
/// there every SMRAM window stays mapped, while the normal view drops a window once firmware closes it. With more
/// CPUs than one KVM VM may hold, each view is several VMs over that memory, CPU `i`'s vCPUs in shard `i / perVM`
/// of each (`VCPUShards`), and every memslot change goes to every VM of its view.
///
/// RSM: the VMM performs it itself before the CPU would execute it, seeing it either through hardware
/// breakpoints on every RSM the SMM code holds or by single-stepping (EmulatedSMMWatch.swift, which also keeps
/// the guest-visible IDTR at KVM's 0/0 for SIDT). Exceptions: in SMM the vCPU runs with a real-mode IVT
/// (`Layout.smmTrapIVT`) whose vectors point into the unmapped VGA hole, so an exception stops the vCPU with
/// RIP = vector; KVM loads IDT limit 0 on SMI entry, so any exception in SMM is a triple fault there too.
/// (An IDT limit of 0 cannot be used here: this host's KVM hangs in KVM_RUN on a real-mode exception with it.)
/// An earlier design let RSM raise #UD into that IVT; its 6-byte frame on the handler's SS:SP raced between
/// CPUs sharing a stack pointer, so the #UD path below is only a fallback.
///
/// State outside the map (x87/SSE/AVX, XCR0, DR0–DR7, MSRs, the TSC) belongs to the CPU, not to SMM: SMI entry copies it from
/// the normal-view vCPU to the SMRAM-view vCPU and RSM copies it back (`SMMSharedState.swift`), so a handler sees and
/// changes the interrupted code's state as on KVM.
///
/// The CPU model (INIT, SIPI, SMI latching and priorities) follows KVM's `kvm_apic_accept_events` and
/// `inject_pending_event`, with the userspace local APIC of APIC/.
final class EmulatedSMMBackend: SMMBackend {
    unowned let machine: Machine
    /// The SMRAM view: KVM's address space 1, played by a second VM per shard of vCPUs (`Machine.shards`).
    let smmViews: [VirtualMachine]
    /// SMRAM-view vCPUs created in each of `smmViews` (lock).
    private var vcpusPerSMMView: [Int]
    /// One per possible CPU, allocated up front (the array never changes after `init`).
    let perCPU: [PerCPU]
    /// What SMI entry and RSM carry between the two vCPUs of a CPU, decided when CPU 0's vCPU is attached (before
    /// any CPU thread runs; read-only afterwards).
    private var sharedPlan: SharedStatePlan?

    /// What the backend keeps per CPU; only the CPU's own thread touches it after creation.
    final class PerCPU {
        /// The CPU's SMRAM-view vCPU, created when the CPU's thread starts (`prepareOnCPUThread`), so that no SMI
        /// entry, least of all a boot relocation's (one CPU after the other), pays for `KVM_CREATE_VCPU`.
        var smmVCPU: VCPU?
        var session: SMMSession?
        /// The SMRAM-view vCPU's KVM_SET_GUEST_DEBUG setting.
        var debugMode: DebugMode = .singleStep
        /// An RSM escaped the breakpoints once: single-step every later SMI of this CPU.
        var stepOnly = false
        /// The shared state the SMRAM-view vCPU holds (exact: set at SMI entry, read back at RSM, and the vCPU
        /// runs only in between), so entry sets only the parts that differ.
        var smmSide: SharedCPUState?
        /// The normal-view vCPU's shared state read at SMI entry (it does not run until RSM), so RSM sets only the
        /// parts the handler or the map changed.
        var atEntry: SharedCPUState?
        /// A `PUSHF` met while single-stepping SMM code: its image loses the stepping's TF (``SteppedFlagsImage``).
        var flagsImage = SteppedFlagsImage()
        /// Whether the host CPU stops at KVM's guest-debug hardware breakpoints on instructions KVM does not
        /// emulate (``EmulatedSMMBackend/probeBreakpoints(_:)``), measured on the SMRAM-view vCPU by the CPU's own
        /// thread before its first SMI; nil until then (single-stepping). When it does not, an SMM session of the
        /// CPU uses breakpoints only on RSMs (armWatch). The probe runs on the thread that runs the vCPU afterwards: a first `KVM_RUN` from
        /// another thread would make KVM change the vCPU's pid, with a `synchronize_rcu`.
        var breakpointsHonoured: Bool?
        /// The instruction let run from the last single-step boundary may leave RFLAGS without the TF the VMM
        /// loaded (KVM's emulator completed it, ``SMMCodeWatch/kvmMayEmulate(_:code64:)``, or it loaded the flags,
        /// ``SMMCodeWatch/reloadsFlags(_:code64:)``): load it again at the next one.
        var reloadTrapFlag = false
    }

    /// What the backend keeps while a CPU is in SMM.
    struct SMMSession {
        var format: SaveStateFormat
        var insideNMI: Bool
        var watch = SessionWatch()
    }

    let kind = SMMBackendKind.emulated
    let injectsInterrupts = true
    /// A CPU absent at boot gets its vCPU when it is hot-added, as QEMU's `device_add` creates one.
    let createsAbsentVCPUsAtBoot = false

    init(machine: Machine) throws {
        self.machine = machine
        perCPU = (0..<machine.config.maxCPUs).map { _ in PerCPU() }
        var views: [VirtualMachine] = []
        for _ in 0..<machine.shards.vmCount {
            let v = try machine.kvm.createVM()
            try? v.setTSSAddress(Layout.tssAddress)
            try? v.setIdentityMapAddress(Layout.identityMapAddress)
            try v.enableUserSpaceMSR([.invalid, .unknown, .filter])
            try v.setMemoryRegion(
                MemoryRegion(
                    slot: Slot.smmTrap.rawValue, guestPhysicalAddress: Layout.smmTrapIVT, size: 4096,
                    hostAddress: machine.memory.trapHost, readOnly: true))
            views.append(v)
        }
        smmViews = views
        vcpusPerSMMView = Array(repeating: 0, count: views.count)
    }

    /// The SMRAM-view vCPUs made so far (one per CPU whose thread prepared it or that took an SMI). Lock held: each
    /// slot is written by its CPU's thread under the machine lock.
    var extraVCPUs: Int { perCPU.reduce(0) { $0 + ($1.smmVCPU == nil ? 0 : 1) } }

    func mapIntoSMMView(_ region: MemoryRegion) throws {
        for v in smmViews { try v.setMemoryRegion(region) }
    }

    func unmapFromSMMView(slot: UInt16) throws {
        for v in smmViews { try v.deleteMemoryRegion(slot: slot) }
    }

    func attach(_ cpu: CPUContext) throws {
        // IA32_APIC_BASE at power-on (SDM Vol. 3A 11.4.4, KVM `kvm_lapic_reset` with `!init_event`): 0xFEE00000 |
        // EN, | BSP on the bootstrap processor. The local APIC is the VMM's here, so the VMM owns this reset value
        // as QEMU's userspace APIC does (`apic_reset_common`): what KVM puts in a new vCPU without an in-kernel APIC
        // has varied between kernel versions (this host's gives the right value; `kvm_lapic_set_base` just stores).
        let apicBase = ArchState.powerOn(isBSP: cpu.isBSP).sregs.apic_base
        guard try cpu.vcpu.setMSRs([(UInt32(MSR_IA32_APIC_BASE), apicBase)]) == 1 else {
            throw MachineError.kvm("KVM_SET_MSRS(MSR_IA32_APICBASE) was refused on CPU \(cpu.index)")
        }
        cpu.extraIoctls += 1
        if sharedPlan == nil {
            let (plan, ioctls) = try SharedStatePlan.probe(kvm: machine.kvm, vcpu: cpu.vcpu)
            sharedPlan = plan
            cpu.extraIoctls += ioctls
            if machine.config.trace {
                let msrs = plan.msrs.map { "0x" + String($0, radix: 16) }.joined(separator: " ")
                machine.traceLine(
                    "SMM carries XSAVE \(plan.xsaveSize.map(String.init) ?? "none"), XCRs \(plan.carriesXCRs), TSC offset \(plan.carriesTSCOffset), MSRs \(msrs)"
                )
            }
        }
        let shard = machine.shards.location(of: cpu.index).vm
        if !machine.constructed && machine.shards.cpus(ofVM: shard).first == cpu.index {
            // Each SMRAM-view VM's first vCPU now, before any other, and its masterclock (smmVCPU): the other CPUs'
            // SMRAM-view vCPUs, made concurrently on their threads, then cost O(1) each. (A CPU hot-added later makes
            // its own on its thread.) Its breakpoint probe runs later, on the CPU's thread (prepareOnCPUThread).
            _ = try smmVCPU(for: cpu, onCPUThread: false)
        }
    }

    private func plan() throws -> SharedStatePlan {
        guard let p = sharedPlan else { throw MachineError.kvm("no vCPU was attached before the first SMI") }
        return p
    }

    func stateAtHotAdd(_ action: HotAddAction) -> CPURunState { .waitForSIPI }

    func inSMM(_ cpu: CPUContext, exitedVCPU vcpu: VCPU) -> Bool { cpu.inSMM }

    func observe(_ exit: VCPUExit, cpu: CPUContext) throws -> Bool { false }

    /// The SMRAM-view vCPU is never re-run after an exit it did not complete (RSM replaces it by the normal one).
    func exitCompletesOnNextRun(_ cpu: CPUContext) -> Bool { !cpu.inSMM }

    func vcpuToRun(_ cpu: CPUContext) -> VCPU { cpu.inSMM ? (perCPU[cpu.index].smmVCPU ?? cpu.vcpu) : cpu.vcpu }

    /// The hotplug controller's SCI, delivered to CPU 0 as a fixed vector (minivmm has no IOAPIC/ACPI GPE).
    func raiseSCI() {
        let c = machine.cpus[0]
        c.apic.acceptFixed(vector: UInt8(MINIVMM_SCI_VECTOR))
        machine.wakeOrKick(c)
    }

    // MARK: CPU model

    /// The CPU model's next step (lock held): ``CPUEventModel/decide(_:interruptsEnabled:nmiBlocked:)``.
    func decide(_ cpu: CPUContext) -> ModelDecision {
        CPUEventModel.decide(
            cpu, interruptsEnabled: cpu.vcpu.syncedRegs.rflags & X86.rflagsIF != 0,
            nmiBlocked: cpu.vcpu.syncedEvents.nmi.masked != 0)
    }

    func perform(_ step: ModelStep, on cpu: CPUContext) throws {
        switch step {
        case .deliverSMI: try enterSMI(cpu)
        case .initSignal: try applyINIT(cpu)
        case .sipi(let v): applySIPI(cpu, vector: v)
        }
    }

    /// Creates the CPU's SMRAM-view vCPU on its own thread, before the CPU first runs: the threads of all CPUs do
    /// this concurrently, off the serial relocation path.
    func prepareOnCPUThread(_ cpu: CPUContext) throws {
        guard cpu.exists else { return }
        let v = try smmVCPU(for: cpu, onCPUThread: true)
        let p = perCPU[cpu.index]
        if p.breakpointsHonoured == nil {
            // Made by `attach` on another thread: probe here, then read again what it holds.
            try probe(cpu, v)
            let (now, reads) = try plan().read(v)
            machine.lock.withLock {
                p.smmSide = now
                cpu.extraIoctls += reads
            }
        }
    }

    /// Measures on the CPU's thread whether the host honours hardware breakpoints for this SMRAM-view vCPU.
    private func probe(_ cpu: CPUContext, _ v: VCPU) throws {
        let (honoured, ioctls) = try Self.probeBreakpoints(v)
        try v.setGuestDebug(singleStep: true)
        let p = perCPU[cpu.index]
        p.breakpointsHonoured = honoured
        p.debugMode = .singleStep
        machine.lock.withLock { cpu.extraIoctls += ioctls + 1 }
        if machine.config.trace && cpu.index == 0 {
            machine.traceLine(
                "SMM code watch: the host \(honoured ? "honours" : "does not honour") hardware breakpoints (\(honoured ? "breakpoints where they fit" : "breakpoints only where every candidate is an RSM"))"
            )
        }
    }

    /// The SMRAM-view vCPU for `cpu` (one per guest CPU, run only by that CPU's thread): made by
    /// `prepareOnCPUThread`, or here at the first SMI of a CPU whose thread started before it had a vCPU.
    private func smmVCPU(for cpu: CPUContext, onCPUThread: Bool) throws -> VCPU {
        let p = perCPU[cpu.index]
        if let v = p.smmVCPU { return v }
        let (shard, id) = machine.shards.location(of: cpu.index)
        let v = try smmViews[shard].createVCPU(id: id)
        try v.setCPUID(machine.cpuid(for: cpu.index))
        v.enableSyncRegisters(.all)
        // Single-stepping until a session chooses breakpoints (armWatch), so the VMM sees every SMM instruction
        // boundary and performs RSM before the CPU would execute it (no #UD, no frame pushed). The probe leaves it so.
        if onCPUThread {
            try probe(cpu, v)
        } else {
            try v.setGuestDebug(singleStep: true)
            p.debugMode = .singleStep
        }
        // What the new vCPU holds, so SMI entry rewrites only what differs (MSR writes can be costly: an MTRR write
        // zaps the guest's mappings).
        let (initial, reads) = try plan().read(v)
        // Under the machine lock: the report reads these (and a CPU thread may still be here when a run that ended
        // at once is reported).
        let first = machine.lock.withLock {
            p.smmSide = initial
            p.smmVCPU = v
            cpu.extraIoctls += (onCPUThread ? 2 : 3) + reads  // the probe counts its KVM_SET_GUEST_DEBUGs
            vcpusPerSMMView[shard] += 1
            return vcpusPerSMMView[shard] == 1
        }
        // The VM's masterclock on while it has one vCPU (see refreshMasterClock).
        if first { try? smmViews[shard].refreshMasterClock() }
        return v
    }

    /// SMI entry for `cpu` (its thread; the last exit is complete): save the state map at SMBASE+0xFE00, load
    /// the SDM entry state into the SMRAM-view vCPU. Registers come from kvm_sync_regs; the live DR6/DR7 that the
    /// map saves (`kvm_get_dr` in KVM's `enter_smm`) and the rest of the shared state come from the normal-view
    /// vCPU's ioctls (kvm_sync_regs carries no debug registers, and a guest MOV to DR7 never exits), which costs
    /// one GET per shared part and one SET per part that differs from what the SMRAM-view vCPU holds.
    private func enterSMI(_ cpu: CPUContext) throws {
        let m = machine
        let p = perCPU[cpu.index]
        let v: VCPU = cpu.vcpu
        let regs = v.syncedRegs
        let sregs = v.syncedSregs
        let events = v.syncedEvents
        let shared = try plan()
        let (live, reads) = try shared.read(v)
        cpu.extraIoctls += reads
        let state = ArchState(
            regs: regs, sregs: sregs, dr6: live.debug.dr6, dr7: live.debug.dr7,
            interruptShadow: events.interrupt.shadow, nmiMasked: events.nmi.masked != 0)
        let smbase = m.lock.withLock { cpu.smbase }
        let entry = enterSMM(from: state, smbase: smbase, format: m.saveStateFormat)
        // KVM kills the VM when the state map cannot be written (kvm_vm_dead in enter_smm).
        guard m.memory.write(entry.map, at: UInt64(smbase) + UInt64(SaveStateMap.offsetFromSMBASE)) else {
            m.tripleFault(cpu, "SMI entry: SMBASE 0x\(String(smbase, radix: 16)) puts the state map outside RAM")
            return
        }
        let s = try smmVCPU(for: cpu, onCPUThread: true)
        // The handler's x87/SSE/AVX, XCR0, DR0–DR3 and MSRs are the interrupted code's; DR6 is kept and DR7 is the
        // entry value 0x400.
        var inSMM = live
        inSMM.debug.dr6 = entry.state.dr6
        inSMM.debug.dr7 = entry.state.dr7
        cpu.extraIoctls += try shared.write(inSMM, over: p.smmSide, to: s)
        p.smmSide = inSMM
        p.atEntry = live
        var es = entry.state
        // Breakpoints or single-stepping (TF added to the entry RFLAGS: KVM adds it only at the RIP where stepping
        // was requested; this host's kvm_pvm kept stepping without it, the nested lane's KVM did not).
        let watch = try armWatch(cpu, smm: s, smbase: smbase, regs: &es.regs)
        es.sregs.idt = kvm_dtable(base: Layout.smmTrapIVT, limit: Layout.smmTrapIVTLimit)
        s.syncedRegs = es.regs
        s.syncedSregs = es.sregs
        // A fresh event state: KVM takes an SMI only at an instruction boundary with nothing being injected, so
        // nothing left from this vCPU's previous SMM session (an exception queued when it last stopped at a trap
        // vector, found re-injected at the next handler's first instruction in the nested lane) may carry over.
        // No interrupt shadow, NMIs blocked; an NMI pending on the CPU stays pending in SMM (the normal-view vCPU
        // does not run until RSM, which sets its pending NMI from the SMRAM-view one's).
        var ev = kvm_vcpu_events()
        ev.flags = UInt32(KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_NMI_PENDING)
        ev.nmi.masked = 1
        ev.nmi.pending = events.nmi.pending
        s.syncedEvents = ev
        p.session = SMMSession(format: m.saveStateFormat, insideNMI: entry.insideNMI, watch: watch)
        p.flagsImage = SteppedFlagsImage()
        p.reloadTrapFlag = false
        if m.config.trace {
            m.traceLine(
                "cpu\(cpu.index) SMI entry: SMBASE 0x\(String(smbase, radix: 16)), saved \(String(sregs.cs.selector, radix: 16)):\(String(regs.rip, radix: 16)), \(m.saveStateFormat.rawValue) map"
            )
        }
        m.lock.withLock {
            if cpu.state == .halted { cpu.state = .running }  // saved RIP is after the HLT; auto-HALT stays 0
            m.recordSMIEntry(cpu, smbase: smbase, savedCS: sregs.cs.selector, savedRIP: regs.rip)
        }
        // Single-stepping reports boundaries after an instruction: a handler whose first instruction is RSM or
        // SIDT is handled here.
        try settle(cpu, smm: s, atBreakpoint: false)
    }

    func handle(_ action: ExitAction, cpu: CPUContext, vcpu: VCPU) throws -> Bool {
        switch action {
        case .smmStep:
            try smmDebugExit(cpu, smm: vcpu)
            return true
        case .smmTrap(let vector):
            try smmTrap(cpu, vector: vector, smm: vcpu)
            return true
        case .tripleFault:
            // A handler that left real mode faults on RSM through the trap IVT: still an RSM.
            guard cpu.inSMM, isRSMAtCurrentIP(cpu, vcpu) else { return false }
            noteMissedRSM(cpu, "triple-faulted")
            try performRSM(cpu, smm: vcpu)
            return true
        default:
            return false
        }
    }

    private func isRSMAtCurrentIP(_ cpu: CPUContext, _ v: VCPU) -> Bool {
        let sr = v.syncedSregs
        let pc = Self.linearRIP(v.syncedRegs, sr)
        guard let bytes = readLinear(pc, count: SMMCodeWatch.maxInstructionLength, smm: v, cpu: cpu) else {
            return false
        }
        return SMMCodeWatch.classify(bytes, code64: Self.is64BitCode(sr)) == .rsm
    }

    /// The SMRAM-view vCPU reached a trap vector.
    private func smmTrap(_ cpu: CPUContext, vector: UInt8, smm s: VCPU) throws {
        let m = machine
        guard vector == 6 else {
            m.tripleFault(cpu, "exception vector \(vector) in SMM (SMI entry loads IDT limit 0: triple fault)")
            return
        }
        // The #UD frame (IP, CS, FLAGS) sits at SS:SP; recover the faulting CS base: the SMI entry CS
        // (selector = SMBASE>>4 truncated, base = SMBASE) unless the handler loaded another real-mode CS.
        let regs = s.syncedRegs
        let sregs = s.syncedSregs
        let sp = sregs.ss.db != 0 ? regs.rsp & 0xFFFF_FFFF : regs.rsp & 0xFFFF
        let frame = sregs.ss.base &+ sp
        guard let ip = m.memory.readU16(frame), let cs = m.memory.readU16(frame &+ 2) else {
            m.tripleFault(cpu, "#UD in SMM with the stack outside RAM")
            return
        }
        let smbase = m.lock.withLock { cpu.smbase }
        let csBase = UInt64(cs) == (UInt64(smbase) >> 4) & 0xFFFF ? UInt64(smbase) : UInt64(cs) << 4
        guard let bytes = m.memory.fetch(csBase + UInt64(ip), count: 6), ExitClassifier.isRSM(bytes) else {
            m.tripleFault(
                cpu, "#UD in SMM at \(String(cs, radix: 16)):\(String(ip, radix: 16)) (not RSM): triple fault")
            return
        }
        noteMissedRSM(cpu, "raised #UD through the trap IVT (6-byte frame pushed below SS:SP)")
        try performRSM(cpu, smm: s)
    }

    /// RSM: reload the state from the map (as it is now), load SMBASE from its field, leave SMM.
    func performRSM(_ cpu: CPUContext, smm s: VCPU) throws {
        let m = machine
        let p = perCPU[cpu.index]
        guard let session = p.session else {
            m.tripleFault(cpu, "RSM trap without an SMM session")
            return
        }
        let smbase = m.lock.withLock { cpu.smbase }
        guard
            let map = m.memory.read(
                UInt64(smbase) + UInt64(SaveStateMap.offsetFromSMBASE), count: SaveStateMap.size)
        else {
            m.tripleFault(cpu, "RSM: state map outside RAM")
            return
        }
        // What the handler left in the shared state stays after RSM, except DR6/DR7, which RSM reloads from the map.
        let shared = try plan()
        let (inSMM, reads) = try shared.read(s)
        cpu.extraIoctls += reads
        p.smmSide = inSMM
        var sregs = s.syncedSregs
        if Self.idtIsVirtual(sregs) { sregs.idt = kvm_dtable(base: 0, limit: 0) }  // the guest-visible IDTR
        var regs = s.syncedRegs
        if p.debugMode == .singleStep { regs.rflags &= ~X86.trapFlag }
        // The NMI mask as SMM code left it (an IRET in SMM unblocks NMIs), and an NMI still pending there.
        let smmEvents = s.syncedEvents
        let current = ArchState(
            regs: regs, sregs: sregs, dr6: inSMM.debug.dr6, dr7: inSMM.debug.dr7, interruptShadow: 0,
            nmiMasked: smmEvents.nmi.masked != 0)
        switch leaveSMM(map: map, format: session.format, current: current, insideNMI: session.insideNMI) {
        case .failure(let f):
            m.tripleFault(cpu, "RSM failed: \(f) (KVM makes this a triple fault)")
        case .success(let exit):
            var back = inSMM
            back.debug.dr6 = exit.state.dr6
            back.debug.dr7 = exit.state.dr7
            cpu.extraIoctls += try shared.write(back, over: p.atEntry, to: cpu.vcpu)
            p.atEntry = nil
            loadRegisters(exit.state, into: cpu, nmiPending: smmEvents.nmi.pending)
            p.session = nil
            if m.config.trace {
                m.traceLine(
                    "cpu\(cpu.index) RSM: SMBASE 0x\(String(exit.smbase, radix: 16)), back to \(String(exit.state.sregs.cs.selector, radix: 16)):\(String(exit.state.regs.rip, radix: 16))"
                )
            }
            m.lock.withLock { m.recordRSM(cpu, smbase: exit.smbase) }
        }
    }

    // MARK: RESET, INIT, SIPI, hotplug (the CPU's thread; its last exit is complete)

    /// Loads the registers of `st` into the CPU's normal-view vCPU through the synced registers (no ioctl); DR6/DR7
    /// are not among them. `nmiPending` (RSM: the SMRAM-view vCPU's) replaces the pending NMI when given.
    private func loadRegisters(_ st: ArchState, into cpu: CPUContext, nmiPending: UInt8? = nil) {
        let v: VCPU = cpu.vcpu
        v.syncedRegs = st.regs
        v.syncedSregs = st.sregs
        var ev = v.syncedEvents
        ev.flags = UInt32(KVM_VCPUEVENT_VALID_SHADOW)
        if let n = nmiPending {
            ev.flags |= UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING)
            ev.nmi.pending = n
        }
        ev.interrupt.shadow = st.interruptShadow
        ev.nmi.masked = st.nmiMasked ? 1 : 0
        v.syncedEvents = ev
    }

    /// Loads a RESET or INIT state `st` into the normal-view vCPU: the registers, then the debug registers as
    /// KVM's `kvm_vcpu_reset` leaves them on both paths (DR0–DR3 0, DR6 and DR7 from `st`), one
    /// `KVM_SET_DEBUGREGS`.
    private func loadReset(_ st: ArchState, into cpu: CPUContext) throws {
        loadRegisters(st, into: cpu)
        var d = kvm_debugregs()
        d.dr6 = st.dr6
        d.dr7 = st.dr7
        try cpu.vcpu.setDebugRegs(d)
        cpu.extraIoctls += 1
    }

    /// INIT (SDM 10.4.7.3, KVM `kvm_vcpu_reset(vcpu, true)`): registers to the INIT state, SMBASE kept; APs
    /// then wait for SIPI, the BSP restarts at the reset vector.
    private func applyINIT(_ cpu: CPUContext) throws {
        let v: VCPU = cpu.vcpu
        let current = ArchState(regs: v.syncedRegs, sregs: v.syncedSregs)
        try loadReset(current.afterINIT(), into: cpu)
        machine.lock.withLock {
            cpu.apic.initSignal()
            CPUEventModel.didINIT(cpu)
            // No history event: on the kvm backend INIT happens inside KVM_RUN, unseen by the VMM, and both
            // backends record the same events. What INIT kept shows in the next SMI entry's SMBASE.
        }
    }

    /// SIPI: start at vector << 12 in real mode. A held SMI is taken next, before the first instruction.
    private func applySIPI(_ cpu: CPUContext, vector: UInt8) {
        let v: VCPU = cpu.vcpu
        let st = ArchState(regs: v.syncedRegs, sregs: v.syncedSregs).atSIPI(vector: vector)
        v.syncedRegs = st.regs
        v.syncedSregs = st.sregs
        machine.lock.withLock { CPUEventModel.didSIPI(cpu) }
    }

    func perform(_ work: HotplugWork, on cpu: CPUContext) throws {
        let m = machine
        switch work {
        case .park:
            m.lock.withLock { m.recordEject(cpu, smbase: cpu.smbase) }
        case .hotAdd(let action, let register, let fresh):
            if action != .keepState && !fresh {
                // RESET (QEMU's cpu_reset on a hot-plugged CPU): power-on state, SMBASE 0x30000, APIC reset.
                try loadReset(ArchState.powerOn(isBSP: cpu.isBSP), into: cpu)
                perCPU[cpu.index].session = nil
                m.lock.withLock {
                    cpu.apic.reset()
                    m.recordReset(cpu, smbase: UInt32(Layout.defaultSMBASE))
                }
            }
            m.lock.withLock {
                var smbase = cpu.smbase
                if action == .resetLoadingSMBASERegister, let r = register { smbase = r }
                m.recordHotAdd(cpu, smbase: smbase, smbaseRegister: register)
            }
        }
    }

    // MARK: end of run

    func endOfRun(_ cpus: [CPUContext]) -> [String] { [] }

    /// The vCPU whose registers describe the CPU now (dumps).
    func dumpVCPU(_ cpu: CPUContext) -> VCPU { vcpuToRun(cpu) }
}
