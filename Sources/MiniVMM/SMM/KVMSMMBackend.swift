// SPDX-License-Identifier: MIT
import CKVM
import Dispatch
import GuestFirmware
import KVMBridge

/// The kvm SMM backend: KVM performs SMI entry, RSM, INIT and SIPI itself (arch/x86/kvm/smm.c `enter_smm` /
/// `emulator_leave_smm`, lapic.c `kvm_apic_accept_events`); SMRAM lives in memslot address space 1. The VMM
/// raises APM SMIs with `KVM_SMI`, reads SMBASE with host-initiated `KVM_GET_MSRS(MSR_IA32_SMBASE)`, and accounts
/// for every SMI from KVM's own state, whatever the firmware (issue 9, gap 4):
///
/// - At every exit it checks `kvm_run->flags & KVM_RUN_X86_SMM`; outside SMM it also reads MSR 0x9E and
///   `MSR_SMI_COUNT` (one `KVM_GET_MSRS`), and `KVMSMIAccounting` turns two consecutive looks into the SMIs between
///   them: an SMI raised by an SMI IPI, or a handler without a single exit, is never seen in SMM, yet KVM counted it
///   and its RSM left its SMBASE in MSR 0x9E.
/// - An entry is observed exactly (the state-save map KVM just wrote at SMBASE+0xFE00: revision, SMBASE field,
///   saved CS and RIP) when the first exit in SMM is at the entry point: the firmware's entry probe (an OUT to
///   `MINIVMM_PORT_SMM_ENTRY`, the fast path the built-in firmware provides), or, with `--smm-entry-breakpoint`, a
///   hardware instruction breakpoint at SMBASE+0x8000 (`KVM_GUESTDBG_USE_HW_BP`; KVM keeps `guest_debug_dr7` in
///   the VMCB/VMCS in SMM too, since `enter_smm`'s `kvm_set_dr(vcpu, 7, DR7_FIXED_1)` goes through
///   `kvm_update_dr7`, so it fires where the host CPU honours DR7). An SMI seen later (SMM flag at a later exit, or
///   only through the count) has its saved CS:RIP reported as unobserved: the handler may have edited the map.
/// - From the first exit in SMM it single-steps (`KVM_GUESTDBG_SINGLESTEP`, which KVM arms at the current RIP and
///   also honours after an emulated RSM: `x86_emulate_instruction` → `kvm_vcpu_do_singlestep`) to the first exit
///   without `KVM_RUN_X86_SMM`: RSM has run and MSR 0x9E holds the SMBASE it loaded. Stepping runs the guest with
///   RFLAGS.TF; the image a stepped `PUSHF` pushes loses it again (``SteppedFlagsImage``), so SMM code reads the
///   RFLAGS KVM's SMM gives it. `--no-smm-stepping` turns stepping off (firmware whose SMM code is too long to step,
///   such as OVMF's): the session closes at the next exit outside SMM, and SMIs that enter and leave between two
///   exits are counted and reported unobservable.
///
/// What exit granularity cannot see is reported, never guessed (`KVMSMIAccounting`): SMIs between two exits whose
/// SMBASE is ambiguous, and an SMI found after the fact whose phase changed meanwhile, fail the run with the reason.
final class KVMSMMBackend: SMMBackend {
    unowned let machine: Machine
    /// Per CPU: what the VMM knows of KVM's SMM state. Only the CPU's own thread touches its slot after creation
    /// (and the end of the run, once the threads stopped).
    private let tracks: [Track]

    final class Track {
        var accounting = KVMSMIAccounting(last: KVMSMMLook(inSMM: false, smbase: 0, smiCount: nil))
        /// The machine phase and its generation at the last look.
        var phase = Phase.boot
        var phaseGeneration = 0
        var smramGeneration = 0
        /// The phase at each `KVM_SMI` not yet accounted for (lock): KVM delivers it at the next guest entry.
        var issuedSMIPhases: [Phase] = []
        /// The guest-debug state last set: single-stepping (in SMM), and the armed entry breakpoint.
        var singleStep = false
        var breakpoint: UInt64?
        /// `CPUContext.runSerial` at the last look (lock).
        var lookedRunSerial = 0
        /// A `PUSHF` met while single-stepping SMM code: its image loses the stepping's TF (``SteppedFlagsImage``).
        var flagsImage = SteppedFlagsImage()
    }

    /// Broadcast after each look (lock), for `beforePhaseChange`.
    private let looked = Condition()

    /// A vCPU that KVM found not runnable (EAGAIN, ``KVMBridge/VCPU/lastRunNotRunnable``): a CPU never started
    /// (`KVM_MP_STATE_UNINITIALIZED`) with an SMI held. KVM's `kvm_vcpu_block` does not sleep then (the SMI makes
    /// the vCPU "runnable") and KVM_RUN returns at once, so retrying at once busy-waits (reference/kvm-smm.md §8).
    /// The INIT and SIPI that end the wait go from KVM's local APIC to KVM's, never past the VMM, and only a
    /// KVM_RUN lets KVM accept them (`kvm_apic_accept_events`); so the thread blocks on its wake condition, which
    /// every VMM event for the CPU signals (an SMI, hotplug, the end of the run), for at most `delay`, then asks
    /// KVM again; `delay` doubles from 1 ms to 16 ms while KVM keeps answering EAGAIN. An INIT and SIPI that
    /// arrived in between are accepted together by that KVM_RUN, and the held SMI is taken at the SIPI entry
    /// point before the first instruction, as KVM does.
    final class NotRunnableWait {
        var delay = NotRunnableWait.first
        var waited = false
        static let first = 0.001
        static let longest = 0.016
    }
    private let notRunnable: [NotRunnableWait]

    let kind = SMMBackendKind.kvm
    let injectsInterrupts = false
    /// Every possible CPU gets its vCPU at boot; an absent one has its local APIC hardware-disabled until its
    /// hot-add RESET. (A vCPU created at hot-add under KVM's in-kernel local APIC never left wait-for-SIPI in the
    /// nested lane: stratB64 timed out with the hot-added CPUs at f000:fff0 while the same run created up front
    /// passed. Not understood yet; QEMU creates hot-plugged vCPUs at device_add.)
    let createsAbsentVCPUsAtBoot = true

    init(machine: Machine) throws {
        self.machine = machine
        tracks = (0..<machine.config.maxCPUs).map { _ in Track() }
        notRunnable = (0..<machine.config.maxCPUs).map { _ in NotRunnableWait() }
        // KVM's own local APICs (INIT, SIPI and SMI IPIs with KVM's semantics), 32-bit x2APIC IDs for more
        // than 255 CPUs (KVM_X2APIC_API_USE_32BIT_IDS), before any vCPU exists.
        try machine.vm.createIRQChip()
        try machine.vm.enableX2APICAPI()
    }

    /// Address space 1 (`slot | 1 << 16`): RAM mirrored under SMRAM as QEMU does; SMRAM windows stay there.
    /// KVM's SMM needs no second vCPU: SMRAM is address space 1 of the same vCPU.
    var extraVCPUs: Int { 0 }

    func mapIntoSMMView(_ region: MemoryRegion) throws {
        var smram = region
        smram.addressSpace = 1
        try machine.vm.setMemoryRegion(smram)
    }

    func unmapFromSMMView(slot: UInt16) throws { try machine.vm.deleteMemoryRegion(slot: slot, addressSpace: 1) }

    func attach(_ cpu: CPUContext) throws {
        // Registers and special registers only: with KVM_SYNC_X86_EVENTS, every exit runs
        // kvm_vcpu_ioctl_x86_get_vcpu_events, whose process_smi turns a held KVM_REQ_SMI into smi_pending, and the
        // INIT of INIT-SIPI-SIPI then clears smi_pending (kvm_vcpu_reset): an SMI held by a CPU waiting for SIPI
        // was lost. QEMU reads the events only when it synchronizes the whole state.
        cpu.vcpu.enableSyncRegisters([.regs, .sregs])
        // KVM holds SMBASE: read it (MSR 0x9E, host-initiated) with KVM's SMI count, raised to the floor.
        try resync(cpu, inSMM: false)
        cpu.smbase = tracks[cpu.index].accounting.last.smbase
        if !cpu.present {
            // KVM has no absent vCPU, and its local APICs would take the boot's all-but-self INIT and SIPI
            // (kvm_apic_match_dest skips only disabled APICs): the APIC stays hardware-disabled until the hot-add
            // RESET loads the power-on APIC base with EN set.
            guard try cpu.vcpu.setMSRs([(UInt32(MSR_IA32_APIC_BASE), Layout.apicBase)]) == 1 else {
                throw MachineError.kvm("KVM_SET_MSRS(MSR_IA32_APICBASE) was refused on CPU \(cpu.index)")
            }
            cpu.extraIoctls += 1
        }
        try updateGuestDebug(cpu, inSMM: false)
    }

    /// KVM's mp_state is the CPU's state; the thread only runs it.
    func stateAtHotAdd(_ action: HotAddAction) -> CPURunState { .running }

    func inSMM(_ cpu: CPUContext, exitedVCPU vcpu: VCPU) -> Bool { vcpu.inKVMSMM }

    func exitCompletesOnNextRun(_ cpu: CPUContext) -> Bool { true }

    func vcpuToRun(_ cpu: CPUContext) -> VCPU { cpu.vcpu }

    /// The SCI as an MSI into KVM's local APIC (physical destination 0, fixed, edge).
    func raiseSCI() {
        do {
            try machine.vm.signalMSI(address: Layout.apicBase, data: UInt32(MINIVMM_SCI_VECTOR))
        } catch {
            machine.noteFailure("delivering the SCI failed: \(error.description)")
        }
    }

    /// KVM itself latches INIT, SIPI and SMIs and halts the vCPU in the kernel: the VMM only issues `KVM_SMI` for
    /// APM SMIs (lock held). The phase is noted for the SMI KVM will deliver at the next guest entry.
    /// (`KVM_SMI` goes to every CPU that has one pending whatever its state, as QEMU's `ich9_apm_ctrl_changed`
    /// → `cpu_interrupt(CPU_INTERRUPT_SMI)` → `KVM_SMI` does.) A vCPU KVM found not runnable waits (see
    /// ``NotRunnableWait``) before it runs again.
    func decide(_ cpu: CPUContext) -> ModelDecision {
        if cpu.pendingSMI {
            cpu.pendingSMI = false
            tracks[cpu.index].issuedSMIPhases.append(machine.phase)
            return .step(.model(.deliverSMI))
        }
        let w = notRunnable[cpu.index]
        guard cpu.vcpu.lastRunNotRunnable else {
            w.delay = NotRunnableWait.first
            w.waited = false
            return .step(.run)
        }
        if w.waited {
            w.waited = false
            return .step(.run)
        }
        w.waited = true
        let d = w.delay
        w.delay = min(w.delay * 2, NotRunnableWait.longest)
        return .waitAtMost(seconds: d)
    }

    /// `KVM_SMI` on the CPU's own thread (a vCPU ioctl waits for the vCPU's KVM_RUN otherwise). KVM holds the
    /// SMI while the CPU is in SMM or waits for SIPI, as real hardware does. INIT and SIPI never reach here.
    ///
    /// Then single-stepping is armed at the current RIP: KVM enters SMM at the next guest entry, and `enter_smm`'s
    /// `kvm_set_rflags(vcpu, X86_EFLAGS_FIXED)` runs while the linear RIP is still the one stepping was armed at, so
    /// `__kvm_set_rflags` sets TF in SMM too and the handler's first instruction exits: the SMI is seen in SMM (its
    /// SMBASE, and its RSM by stepping) even from a firmware without the entry probe, so an INIT that follows it
    /// cannot hide it from the count. If KVM holds the SMI, one instruction outside SMM exits and stepping stops.
    func perform(_ step: ModelStep, on cpu: CPUContext) throws {
        guard step == .deliverSMI else { return }
        try cpu.vcpu.smi()
        cpu.extraIoctls += 1
        let t = tracks[cpu.index]
        guard !t.singleStep, machine.config.smmStepping else { return }
        try cpu.vcpu.setGuestDebug(singleStep: true, breakpoints: t.breakpoint.map { [$0] } ?? [])
        cpu.extraIoctls += 1
        t.singleStep = true
    }

    /// `KVM_GET_MSRS` of MSR 0x9E (SMBASE) and `MSR_SMI_COUNT`, host-initiated (`vcpu->arch.smbase`,
    /// `vcpu->arch.smi_count`). Only the CPU's own thread, or while the CPU's thread is stopped.
    func readSMMMSRs(_ cpu: CPUContext) throws -> (smbase: UInt32, smiCount: UInt64?) {
        let values = try cpu.vcpu.getMSRs([UInt32(MSR_IA32_SMBASE), UInt32(MSR_SMI_COUNT)])
        cpu.extraIoctls += 1
        guard let v = values[UInt32(MSR_IA32_SMBASE)] else {
            throw MachineError.kvm("KVM_GET_MSRS(MSR_IA32_SMBASE) processed 0 entries on CPU \(cpu.index)")
        }
        return (UInt32(truncatingIfNeeded: v), values[UInt32(MSR_SMI_COUNT)])
    }

    /// A look at KVM's SMM state of `cpu` (its own thread, or the threads stopped).
    private func look(_ cpu: CPUContext, inSMM: Bool) throws -> KVMSMMLook {
        let m = try readSMMMSRs(cpu)
        return KVMSMMLook(inSMM: inSMM, smbase: m.smbase, smiCount: m.smiCount)
    }

    /// Raises KVM's SMI count to `KVMSMIAccounting.countBase` + `since` (host-initiated `MSR_SMI_COUNT` write), so
    /// that the next INIT, which zeroes it, shows. Returns the count KVM now holds (unchanged if refused).
    private func raiseSMICount(_ cpu: CPUContext, from count: UInt64?) throws -> UInt64? {
        guard let c = count, c < KVMSMIAccounting.countBase else { return count }
        let floor = KVMSMIAccounting.countBase + c
        cpu.extraIoctls += 1
        return try cpu.vcpu.setMSRs([(UInt32(MSR_SMI_COUNT), floor)]) == 1 ? floor : c
    }

    /// Starts the accounting afresh from KVM's state, after the VMM itself changed it (creation, RESET, a host
    /// write of MSR 0x9E): nothing between the last look and now is an SMI.
    private func resync(_ cpu: CPUContext, inSMM: Bool) throws {
        var l = try look(cpu, inSMM: inSMM)
        l.smiCount = try raiseSMICount(cpu, from: l.smiCount)
        let t = tracks[cpu.index]
        t.accounting = KVMSMIAccounting(last: l)
        (t.phase, t.phaseGeneration, t.smramGeneration) = (
            machine.phase, machine.phaseGeneration, machine.smramGeneration
        )
    }

    /// The guest-debug state for `cpu`: single-step while in SMM (to catch RSM), else the entry breakpoint at
    /// SMBASE+0x8000 when asked for. One `KVM_SET_GUEST_DEBUG` when it changes.
    private func updateGuestDebug(_ cpu: CPUContext, inSMM: Bool) throws {
        let t = tracks[cpu.index]
        let bp: UInt64? =
            machine.config.smmEntryBreakpoint && !inSMM
            ? UInt64(t.accounting.last.smbase) &+ UInt64(Layout.smiHandlerOffset) : nil
        let step = inSMM && machine.config.smmStepping
        guard step != t.singleStep || bp != t.breakpoint else { return }
        try cpu.vcpu.setGuestDebug(singleStep: step, breakpoints: bp.map { [$0] } ?? [])
        cpu.extraIoctls += 1
        t.singleStep = step
        t.breakpoint = bp
    }

    /// What the first exit of a new SMM session saw of its entry: the saved CS:RIP when the exit is at the entry
    /// point (probe or breakpoint), and any disagreement between the map KVM wrote and MSR 0x9E.
    struct EntryView {
        var savedCS: UInt16?
        var savedRIP: UInt64?
        var problems: [String] = []
    }

    /// Whether `e` is at the entry point of an SMI that entered with `smbase` (nothing executed since but the
    /// probe's `mov dx`, which writes no memory): the probe's OUT (SVM reports it at or past the OUT), or the
    /// entry breakpoint.
    static func isAtEntry(_ e: VCPUExit, smbase: UInt32, csBase: UInt64, rip: UInt64) -> Bool {
        guard csBase == UInt64(smbase) else { return false }
        let entry = UInt64(Layout.smiHandlerOffset)
        switch e {
        case .ioOut(let port, _, _, _):
            return port == UInt16(MINIVMM_PORT_SMM_ENTRY) && rip >= entry && rip <= entry + 4
        case .debug(_, let pc, let dr6, _):
            return dr6 & 0xF != 0 && pc == UInt64(smbase) &+ entry
        default:
            return false
        }
    }

    /// The length of `code`'s first instruction when it is one that writes neither memory nor the stack, decoded as
    /// SMM entry runs it (16-bit code, CS.D = 0): `mov r16, imm16` (B8+r), with an operand-size prefix `mov r32,
    /// imm32`, `nop`, `cli`, `cld`. A single-step exit just past such an instruction still sees the state-save map as
    /// KVM wrote it (the entry probe begins with `mov dx, imm16`; the single-step armed with `KVM_SMI` exits there).
    static func harmlessFirstInstructionLength(_ code: [UInt8]) -> UInt64? {
        guard let first = code.first else { return nil }
        switch first {
        case 0xB8...0xBF: return code.count >= 3 ? 3 : nil
        case 0x66: return code.count >= 6 && (0xB8...0xBF).contains(code[1]) ? 6 : nil
        case 0x90, 0xFA, 0xFC: return 1
        default: return nil
        }
    }

    private func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }

    /// Reads the state-save map of an SMI seen at its entry point.
    private func entryView(_ cpu: CPUContext, smbase: UInt32) -> EntryView {
        let mc = machine
        var v = EntryView()
        let mapAddress = UInt64(smbase) &+ UInt64(SaveStateMap.offsetFromSMBASE)
        guard let bytes = mc.memory.read(mapAddress, count: SaveStateMap.size) else {
            v.problems.append("the state-save map at \(hex(mapAddress)) is outside RAM")
            return v
        }
        let map = SaveStateMap.decode(bytes, format: mc.saveStateFormat)
        v.savedCS = map.segments[SegmentRegister.cs.rawValue].selector
        v.savedRIP = map.rip
        if map.revision != mc.saveStateFormat.revision {
            v.problems.append(
                "KVM wrote save-state revision \(hex(map.revision)); the guest CPUID implies \(mc.saveStateFormat.rawValue) (\(hex(mc.saveStateFormat.revision)))"
            )
        } else if map.smbase != smbase {
            v.problems.append("the map's SMBASE field \(hex(map.smbase)) is not MSR 0x9E")
        }
        return v
    }

    /// Every exit: the SMM flag, and outside a session already open a look at KVM's SMBASE and SMI count. Returns
    /// whether the exit was only an observation step (single-step, entry breakpoint) needing no further handling.
    func observe(_ e: VCPUExit, cpu: CPUContext) throws -> Bool {
        let inSMM = cpu.vcpu.inKVMSMM
        let t = tracks[cpu.index]
        var isDebug = false
        if case .debug = e { isDebug = true }
        // In SMM the VMM steps every instruction (from the first exit of a session on): keep its TF out of PUSHF.
        if inSMM || t.flagsImage.pending != nil {
            t.flagsImage.boundary(
                cpu.vcpu.syncedRegs, cpu.vcpu.syncedSregs, stepping: inSMM && machine.config.smmStepping,
                memory: machine.memory)
        }
        // Inside a session already seen nothing changes but leaving it (SMIs are blocked, MSR 0x9E is fixed).
        if inSMM && t.accounting.last.inSMM { return isDebug }
        let now = try look(cpu, inSMM: inSMM)
        var entry = EntryView()
        if inSMM {
            let sregs = cpu.vcpu.syncedSregs
            let rip = cpu.vcpu.syncedRegs.rip
            var atEntry = Self.isAtEntry(e, smbase: now.smbase, csBase: sregs.cs.base, rip: rip)
            if !atEntry, case .debug(_, _, let dr6, _) = e, dr6 & (1 << 14) != 0, sregs.cs.base == UInt64(now.smbase),
                let code = machine.memory.read(UInt64(now.smbase) &+ UInt64(Layout.smiHandlerOffset), count: 6),
                let n = Self.harmlessFirstInstructionLength(code), rip == UInt64(Layout.smiHandlerOffset) + n
            {
                // The single-step armed with KVM_SMI, one instruction past the entry point, which wrote nothing.
                atEntry = true
            }
            if atEntry { entry = entryView(cpu, smbase: now.smbase) }
        } else if isDebug, let bp = t.breakpoint, case .debug(_, let pc, _, _) = e, pc == bp {
            // The entry breakpoint hit outside SMM (code at SMBASE+0x8000 in the normal view): resume past it
            // (RFLAGS.RF suppresses the instruction breakpoint for one instruction).
            var regs = cpu.vcpu.syncedRegs
            regs.rflags |= 1 << 16
            cpu.vcpu.syncedRegs = regs
        }
        let problems = try account(cpu, now, entry: entry, lockHeld: false)
        machine.lock.withLock { for p in problems { machine.noteFailure("CPU \(cpu.index): \(p)") } }
        try updateGuestDebug(cpu, inSMM: inSMM)
        return isDebug
    }

    /// Accounts for the SMIs between the last look and `now` and records them; returns what could not be observed.
    private func account(_ cpu: CPUContext, _ now: KVMSMMLook, entry: EntryView, lockHeld: Bool) throws -> [String] {
        let t = tracks[cpu.index]
        let o = t.accounting.account(now)
        if o.initSeen, let c = now.smiCount {
            t.accounting.last.smiCount = try raiseSMICount(cpu, from: c)
        }
        let mc = machine
        let body = { () -> [String] in
            var problems = o.problems + entry.problems
            let phaseKnown = t.phaseGeneration == mc.phaseGeneration
            let smramKnown = t.smramGeneration == mc.smramGeneration
            /// The phase of an SMI found at this look: that of its KVM_SMI; else, at its entry point, the current
            /// one; else the last look's, when no phase began since.
            func phase(atEntry: Bool) -> Phase {
                if !t.issuedSMIPhases.isEmpty {
                    let p = t.issuedSMIPhases.removeFirst()
                    return atEntry ? mc.phase : p
                }
                if atEntry { return mc.phase }
                if !smramKnown {
                    problems.append(
                        "an SMI found after the fact (no exit at its entry) may have entered before or after an SMRAM decode change: whether it entered SMRAM is unobservable"
                    )
                }
                if !phaseKnown {
                    problems.append(
                        "an SMI found after the fact (no exit at its entry) may belong to phase \(t.phase.rawValue) or \(mc.phase.rawValue): its phase is unobservable"
                    )
                }
                return t.phase
            }
            if o.closesSession { mc.recordRSM(cpu, smbase: o.closedSessionRSM) }
            for (i, smi) in o.smis.enumerated() {
                let opening = o.opensSession && i == o.smis.count - 1
                let atEntry = opening && entry.savedRIP != nil
                mc.recordSMIEntry(
                    cpu, smbase: smi.smbase, savedCS: atEntry ? entry.savedCS : nil,
                    savedRIP: atEntry ? entry.savedRIP : nil, phase: phase(atEntry: atEntry))
                if let r = smi.rsmSMBASE { mc.recordRSM(cpu, smbase: r) }
                if mc.config.trace {
                    mc.traceLine(
                        "cpu\(cpu.index) SMI (KVM\(atEntry ? ", at entry" : opening ? ", seen in SMM" : ", counted")): SMBASE \(self.hex(smi.smbase))"
                            + (atEntry
                                ? ", saved \(self.hex(entry.savedCS ?? 0)):\(self.hex(entry.savedRIP ?? 0))" : ""))
                }
            }
            if o.unobservableSMIs > 0 {
                mc.counters.smis += o.unobservableSMIs
                mc.counters.rsms += o.unobservableSMIs
                t.issuedSMIPhases.removeFirst(min(o.unobservableSMIs, t.issuedSMIPhases.count))
            }
            if !now.inSMM { cpu.smbase = now.smbase }
            cpu.inSMM = now.inSMM
            (t.phase, t.phaseGeneration, t.smramGeneration) = (mc.phase, mc.phaseGeneration, mc.smramGeneration)
            t.lookedRunSerial = cpu.runSerial
            self.looked.broadcast()
            return problems
        }
        return lockHeld ? body() : mc.lock.withLock(body)
    }

    func handle(_ action: ExitAction, cpu: CPUContext, vcpu: VCPU) throws -> Bool { false }

    /// Right before a phase change or an SMRAM decode change (lock held; the latter on a CPU thread, which looked
    /// at the top of its exit): every CPU that ran guest code since its last look is kicked out of KVM_RUN and looks
    /// at KVM's state (its thread does, at that exit), so that SMIs taken so far are placed in the phase and decode
    /// that is ending and those found later in the new one. (A halted AP sits in KVM_RUN for the whole run:
    /// without this an SMI IPI it took at boot would be found only at the end, in an unknown phase.) Bounded: a CPU
    /// that does not come out within a second leaves its SMIs of that run to be reported unobservable.
    func beforeObservedStateChange() {
        // A CPU inside an SMI it was seen in is single-stepping to its RSM, where it looks: it takes no SMI before.
        let waiting = machine.cpus.filter {
            $0.exists && !$0.inSMM && $0.runSerial != tracks[$0.index].lookedRunSerial
        }
        guard !waiting.isEmpty else { return }
        let want = waiting.map { ($0, $0.runSerial) }
        for c in waiting { c.inKVMRun?.kick() }
        let deadline = DispatchTime.now().uptimeNanoseconds + 1_000_000_000
        while want.contains(where: { c, serial in tracks[c.index].lookedRunSerial &- serial < 0 }),
            DispatchTime.now().uptimeNanoseconds < deadline
        {
            for (c, serial) in want where tracks[c.index].lookedRunSerial &- serial < 0 { c.inKVMRun?.kick() }
            looked.wait(machine.lock, seconds: 0.01)
        }
    }

    // MARK: hotplug (the CPU's own thread)

    func perform(_ work: HotplugWork, on cpu: CPUContext) throws {
        let m = machine
        // SMIs since the last exit first.
        let problems = try account(cpu, look(cpu, inSMM: cpu.vcpu.inKVMSMM), entry: EntryView(), lockHeld: false)
        m.lock.withLock { for p in problems { m.noteFailure("CPU \(cpu.index): \(p)") } }
        switch work {
        case .park:
            // The vCPU is parked with whatever KVM holds; record the SMBASE KVM has for it.
            let s = tracks[cpu.index].accounting.last.smbase
            m.lock.withLock { m.recordEject(cpu, smbase: s) }
        case .hotAdd(.keepState, let register, _):
            // Hot-add without RESET: the parked vCPU goes to wait-for-SIPI (`KVM_SET_MP_STATE(INIT_RECEIVED)`), its
            // registers and SMBASE untouched; the guest's INIT-SIPI-SIPI does the rest inside KVM.
            try cpu.vcpu.setMPState(.initReceived)
            cpu.extraIoctls += 1
            let s = tracks[cpu.index].accounting.last.smbase
            m.lock.withLock { m.recordHotAdd(cpu, smbase: s, smbaseRegister: register) }
        case .hotAdd(let action, let register, let fresh):
            // A vCPU created by this hot-add is in KVM's power-on state already (SMBASE 0x30000, wait-for-SIPI).
            if !fresh { try reset(cpu) }
            if action == .resetLoadingSMBASERegister, let r = register {
                // Strategy B: the VMM loads the CPU's SMBASE from its register; KVM accepts MSR 0x9E from the
                // host only (`kvm_set_msr_common`, `msr_info->host_initiated`).
                try setSMBASE(cpu, r)
            }
            try resync(cpu, inSMM: false)
            let s = tracks[cpu.index].accounting.last.smbase
            m.lock.withLock { m.recordHotAdd(cpu, smbase: s, smbaseRegister: register) }
        }
        try updateGuestDebug(cpu, inSMM: cpu.inSMM)
    }

    private func setSMBASE(_ cpu: CPUContext, _ smbase: UInt32) throws {
        guard try cpu.vcpu.setMSRs([(UInt32(MSR_IA32_SMBASE), UInt64(smbase))]) == 1 else {
            throw MachineError.kvm("KVM_SET_MSRS(MSR_IA32_SMBASE) was refused on CPU \(cpu.index)")
        }
        cpu.extraIoctls += 1
    }

    /// The local APIC register page after RESET, as QEMU's `apic_reset_common` + `apic_init_reset` leave it and
    /// `kvm_put_apic_state` writes it with `KVM_SET_LAPIC`: ID kept (xAPIC format: the APIC base comes back without
    /// x2APIC enabled), TPR 0, LDR 0, DFR all ones, SVR 0xFF (software-disabled, spurious vector 0xFF), ISR, TMR and
    /// IRR clear, ESR 0, ICR 0, the six LVTs masked (timer, thermal, performance, LINT0, LINT1, error), timer
    /// initial count and divide 0. Every other register is zero but the version register, which KVM owns
    /// (`kvm_apic_set_version`) and which is kept from `current`.
    static func resetLAPICState(_ current: kvm_lapic_state, apicID: UInt32) -> kvm_lapic_state {
        var s = kvm_lapic_state()
        withUnsafeMutableBytes(of: &s.regs) { page in
            func set(_ offset: Int, _ v: UInt32) {
                page.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self)
            }
            withUnsafeBytes(of: current.regs) { old in
                set(0x30, old.loadUnaligned(fromByteOffset: 0x30, as: UInt32.self).littleEndian)
            }
            set(0x20, apicID << 24)
            set(0xE0, 0xFFFF_FFFF)
            set(0xF0, 0xFF)
            for lvt in stride(from: 0x320, through: 0x370, by: 0x10) { set(lvt, 1 << 16) }
        }
        return s
    }

    /// The registers RESET sets that KVM must hold afterwards (ID, TPR, SVR, the six LVTs), by MMIO offset.
    static let lapicResetChecked = [0x20, 0x80, 0xF0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370]

    /// The checked registers (`lapicResetChecked`) in which the page KVM holds after `KVM_SET_LAPIC` differs from the
    /// page written, as (offset, value held).
    static func lapicResetMismatches(held: kvm_lapic_state, written: kvm_lapic_state) -> [(offset: Int, held: UInt32)] {
        lapicResetChecked.compactMap { o in
            let h = lapicRegister(held, o)
            return h == lapicRegister(written, o) ? nil : (o, h)
        }
    }

    /// A 32-bit register of a local APIC page (`offset` is its MMIO offset).
    static func lapicRegister(_ s: kvm_lapic_state, _ offset: Int) -> UInt32 {
        guard offset >= 0 && offset <= 1020 else { return 0 }
        return withUnsafeBytes(of: s.regs) {
            UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
        }
    }

    /// RESET of a hot-added CPU (the CPU's thread, its last exit complete), as QEMU's `x86_cpu_reset` +
    /// `kvm_arch_put_registers` do: power-on registers, `MSR_IA32_SMBASE` = 0x30000 written with `KVM_SET_MSRS`,
    /// the APIC base MSR and the local APIC's registers (`apic_reset_common`; issue 9, gap 7), wait-for-SIPI. The
    /// SMBASE recorded is read back from KVM.
    private func reset(_ cpu: CPUContext) throws {
        let v: VCPU = cpu.vcpu
        let st = ArchState.powerOn(isBSP: cpu.isBSP)
        v.syncedRegs = st.regs
        v.syncedSregs = st.sregs
        // Out of SMM, nothing pending: QEMU's reset clears HF_SMM_MASK and `kvm_put_vcpu_events` writes it
        // (KVM_VCPUEVENT_VALID_SMM), so a CPU ejected inside an SMI comes back outside SMM. (Events are not among
        // the synced registers here: read them.)
        var ev = try v.getEvents()
        cpu.extraIoctls += 1
        ev.flags = UInt32(KVM_VCPUEVENT_VALID_SMM)
        ev.smi.smm = 0
        ev.smi.pending = 0
        ev.smi.smm_inside_nmi = 0
        ev.smi.latched_init = 0
        v.syncedEvents = ev
        try setSMBASE(cpu, UInt32(SMM_DEFAULT_SMBASE))
        // The power-on APIC base now, not at the next KVM_RUN: a CPU that did not exist had its local APIC
        // disabled, and the guest's INIT-SIPI-SIPI may arrive before this vCPU runs again. Then the register page
        // (KVM_SET_LAPIC applies it under the APIC base just set: xAPIC, enabled).
        guard try v.setMSRs([(UInt32(MSR_IA32_APIC_BASE), st.sregs.apic_base)]) == 1 else {
            throw MachineError.kvm("KVM_SET_MSRS(MSR_IA32_APICBASE) was refused on CPU \(cpu.index)")
        }
        cpu.extraIoctls += 1
        let page = Self.resetLAPICState(try v.getLAPIC(), apicID: UInt32(cpu.index))
        try v.setLAPIC(page)
        // Read back: KVM must hold the reset page (ID, TPR, SVR, the LVTs), not the CPU's old local APIC.
        let held = try v.getLAPIC()
        cpu.extraIoctls += 3
        for (offset, got) in Self.lapicResetMismatches(held: held, written: page) {
            machine.lock.withLock {
                machine.noteFailure(
                    "CPU \(cpu.index): after KVM_SET_LAPIC at RESET, local APIC register \(hex(offset)) is \(hex(got))")
            }
        }
        try v.setMPState(cpu.isBSP ? .runnable : .initReceived)
        cpu.extraIoctls += 1
        if !cpu.present {
            // KVM has no absent vCPU, and its local APICs would take the boot's all-but-self INIT and SIPI
            // (kvm_apic_match_dest skips only disabled APICs): the APIC stays hardware-disabled until the hot-add
            // RESET loads the power-on APIC base with EN set.
            guard try cpu.vcpu.setMSRs([(UInt32(MSR_IA32_APIC_BASE), Layout.apicBase)]) == 1 else {
                throw MachineError.kvm("KVM_SET_MSRS(MSR_IA32_APICBASE) was refused on CPU \(cpu.index)")
            }
            cpu.extraIoctls += 1
        }
        try resync(cpu, inSMM: false)
        let s = tracks[cpu.index].accounting.last.smbase
        machine.lock.withLock {
            tracks[cpu.index].issuedSMIPhases.removeAll()
            machine.recordReset(cpu, smbase: s)
        }
    }

    // MARK: end of run (the CPU threads have stopped)

    /// The report's CPU state from KVM's mp_state.
    private func runState(_ cpu: CPUContext) -> CPURunState {
        guard cpu.state != .unplugged && cpu.state != .stopped else { return cpu.state }
        guard let mp = try? cpu.vcpu.getMPState() else { return cpu.state }
        switch VCPU.MPState(rawValue: mp) {
        case .halted: return .halted
        case .initReceived, .uninitialized, .sipiReceived: return .waitForSIPI
        default: return .running
        }
    }

    /// A last look at every CPU (lock held): the SMIs since its last exit are accounted for and recorded, and
    /// every way in which KVM's state differs from what the VMM observed is returned. Also sets each CPU's run
    /// state from KVM's mp_state.
    func endOfRun(_ cpus: [CPUContext]) -> [String] {
        var problems: [String] = []
        for c in cpus where c.exists {
            c.state = runState(c)
            guard let now = try? look(c, inSMM: c.vcpu.inKVMSMM) else {
                problems.append("CPU \(c.index): MSR 0x9E unreadable")
                continue
            }
            do {
                problems += try account(c, now, entry: EntryView(), lockHeld: true).map { "CPU \(c.index): \($0)" }
            } catch {
                problems.append("CPU \(c.index): \(error)")
            }
            if !now.inSMM && now.smbase != c.smbase {
                problems.append("CPU \(c.index): MSR 0x9E is \(hex(now.smbase)) but minivmm observed \(hex(c.smbase))")
            }
        }
        return problems
    }
}
