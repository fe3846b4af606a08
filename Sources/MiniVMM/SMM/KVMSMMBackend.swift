// SPDX-License-Identifier: MIT
import CKVM
import GuestFirmware
import KVMBridge

/// The kvm SMM backend: KVM performs SMI entry, RSM, INIT and SIPI itself (arch/x86/kvm/smm.c `enter_smm` /
/// `emulator_leave_smm`, lapic.c `kvm_apic_accept_events`); SMRAM lives in memslot address space 1. The VMM
/// raises APM SMIs with `KVM_SMI`, reads SMBASE with host-initiated `KVM_GET_MSRS(MSR_IA32_SMBASE)`, and records
/// every SMI from KVM's own state:
///
/// - An SMI raised by an SMI IPI never leaves the kernel, so the firmware's handlers start with an OUT to the
///   SMM entry probe (`MINIVMM_PORT_SMM_ENTRY`). That exit is only an opportunity to look: the VMM checks
///   `kvm_run->flags & KVM_RUN_X86_SMM`, reads MSR 0x9E and `MSR_SMI_COUNT`, checks CS base = SMBASE and
///   RIP at the entry point, and reads the state-save map KVM wrote at SMBASE+0xFE00 (revision, SMBASE field,
///   saved CS and RIP) from guest memory.
/// - From there it single-steps (`KVM_GUESTDBG_SINGLESTEP`, which KVM arms at the current RIP and also honours
///   after an emulated RSM: `x86_emulate_instruction` → `kvm_vcpu_do_singlestep`) to the first exit without
///   `KVM_RUN_X86_SMM`: RSM has run, MSR 0x9E holds the SMBASE it loaded, and stepping stops.
/// - A handler that skips the probe cannot hide: KVM counts SMIs (`MSR_SMI_COUNT`, reset by INIT and RESET),
///   and each observed entry must be the next one KVM counted; at the end every CPU's count and MSR 0x9E must
///   match what the VMM observed.
///
/// (Neither cheaper watch works on every KVM: a hardware breakpoint at SMBASE+0x8000 never fires in the nested
/// lane, where QEMU TCG's SVM ignores the DR7 KVM puts in the VMCB; and single-stepping cannot carry across SMI
/// entry, which clears TF, since KVM re-arms TF only at the RIP where stepping was requested.)
final class KVMSMMBackend: SMMBackend {
    unowned let machine: Machine
    /// KVM's `MSR_SMI_COUNT` at the last observation, per CPU (`nil` where KVM does not report it). Only the CPU's
    /// own thread touches its slot after creation.
    private let smiCounts: [SMICount]

    final class SMICount { var value: UInt64? }

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
        smiCounts = (0..<machine.config.maxCPUs).map { _ in SMICount() }
        notRunnable = (0..<machine.config.maxCPUs).map { _ in NotRunnableWait() }
        // KVM's own local APICs (INIT, SIPI and SMI IPIs with KVM's semantics), 32-bit x2APIC IDs for more
        // than 255 CPUs (KVM_X2APIC_API_USE_32BIT_IDS), before any vCPU exists.
        try machine.vm.createIRQChip()
        try machine.vm.enableX2APICAPI()
    }

    /// Address space 1 (`slot | 1 << 16`): RAM mirrored under SMRAM as QEMU does; SMRAM windows stay there.
    func mapIntoSMMView(_ region: MemoryRegion) throws {
        var smram = region
        smram.addressSpace = 1
        try machine.vm.setMemoryRegion(smram)
    }

    func attach(_ cpu: CPUContext) throws {
        // Registers and special registers only: with KVM_SYNC_X86_EVENTS, every exit runs
        // kvm_vcpu_ioctl_x86_get_vcpu_events, whose process_smi turns a held KVM_REQ_SMI into smi_pending, and the
        // INIT of INIT-SIPI-SIPI then clears smi_pending (kvm_vcpu_reset): an SMI held by a CPU waiting for SIPI
        // was lost. QEMU reads the events only when it synchronizes the whole state.
        cpu.vcpu.enableSyncRegisters([.regs, .sregs])
        // KVM holds SMBASE: read it (MSR 0x9E, host-initiated) with KVM's SMI count.
        let m = try readSMMMSRs(cpu)
        cpu.smbase = m.smbase
        smiCounts[cpu.index].value = m.smiCount
        if !cpu.present {
            // KVM has no absent vCPU, and its local APICs would take the boot's all-but-self INIT and SIPI
            // (kvm_apic_match_dest skips only disabled APICs): the APIC stays hardware-disabled until the hot-add
            // RESET loads the power-on APIC base with EN set.
            guard try cpu.vcpu.setMSRs([(UInt32(MSR_IA32_APIC_BASE), Layout.apicBase)]) == 1 else {
                throw MachineError.kvm("KVM_SET_MSRS(MSR_IA32_APICBASE) was refused on CPU \(cpu.index)")
            }
            cpu.extraIoctls += 1
        }
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
    /// APM SMIs (lock held).
    /// (`KVM_SMI` goes to every CPU that has one pending whatever its state, as QEMU's `ich9_apm_ctrl_changed`
    /// → `cpu_interrupt(CPU_INTERRUPT_SMI)` → `KVM_SMI` does.) A vCPU KVM found not runnable waits (see
    /// ``NotRunnableWait``) before it runs again.
    func decide(_ cpu: CPUContext) -> ModelDecision {
        if cpu.pendingSMI {
            cpu.pendingSMI = false
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
    func perform(_ step: ModelStep, on cpu: CPUContext) throws {
        guard step == .deliverSMI else { return }
        try cpu.vcpu.smi()
        cpu.extraIoctls += 1
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

    /// Every exit: KVM's SMM flag against what the VMM has seen. Entering SMM is an SMI entry to record, leaving
    /// it an RSM. Returns whether the exit was only a single-step (nothing else to handle).
    func observe(_ e: VCPUExit, cpu: CPUContext) throws -> Bool {
        let inSMM = cpu.vcpu.inKVMSMM
        let wasInSMM = machine.lock.withLock { cpu.inSMM }
        if inSMM && !wasInSMM {
            try observeSMIEntry(cpu, e)
        } else if !inSMM && wasInSMM {
            try observeRSM(cpu)
        }
        if case .debug = e { return true }
        return false
    }

    func handle(_ action: ExitAction, cpu: CPUContext, vcpu: VCPU) throws -> Bool { false }

    private func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }

    private func observeSMIEntry(_ cpu: CPUContext, _ e: VCPUExit) throws {
        let mc = machine
        let m = try readSMMMSRs(cpu)
        let smbase = m.smbase
        let regs = cpu.vcpu.syncedRegs
        let sregs = cpu.vcpu.syncedSregs
        let mapAddress = UInt64(smbase) &+ UInt64(SaveStateMap.offsetFromSMBASE)
        var problems: [String] = []
        // The probe is the handler's first instruction: RIP is at it (SVM reports I/O exits before advancing
        // RIP) or just past it.
        let atProbe: Bool
        if case .ioOut(let port, _, _, _) = e, port == UInt16(MINIVMM_PORT_SMM_ENTRY) {
            atProbe = true
        } else {
            atProbe = false
        }
        if !atProbe {
            problems.append("entered SMM without the entry probe (first exit in SMM: \(e.summary))")
        } else if sregs.cs.base != UInt64(smbase) || regs.rip < Layout.smiHandlerOffset
            || regs.rip > Layout.smiHandlerOffset + 4
        {
            problems.append(
                "SMI entry seen at CS base \(hex(sregs.cs.base)) RIP \(hex(regs.rip)) with SMBASE \(hex(smbase))")
        }
        let counter = smiCounts[cpu.index]
        if let count = m.smiCount, let last = counter.value, count != last + 1 && count != 1 {
            problems.append("KVM counts \(count) SMIs, minivmm saw \(last) before this one: an SMI went unobserved")
        }
        var savedCS: UInt16 = 0
        var savedRIP: UInt64 = 0
        if let bytes = mc.memory.read(mapAddress, count: SaveStateMap.size) {
            let map = SaveStateMap.decode(bytes, format: mc.saveStateFormat)
            savedCS = map.segments[SegmentRegister.cs.rawValue].selector
            savedRIP = map.rip
            if map.revision != mc.saveStateFormat.revision {
                problems.append(
                    "KVM wrote save-state revision \(hex(map.revision)); the guest CPUID implies \(mc.saveStateFormat.rawValue) (\(hex(mc.saveStateFormat.revision)))"
                )
            } else if map.smbase != smbase {
                problems.append("the map's SMBASE field \(hex(map.smbase)) is not MSR 0x9E")
            }
        } else {
            problems.append("the state-save map at \(hex(mapAddress)) is outside RAM")
        }
        if mc.config.trace {
            mc.traceLine(
                "cpu\(cpu.index) SMI entry (KVM): SMBASE \(hex(smbase)), saved \(hex(savedCS)):\(hex(savedRIP))")
        }
        counter.value = m.smiCount
        // Step to RSM.
        try cpu.vcpu.setGuestDebug(singleStep: true)
        cpu.extraIoctls += 1
        mc.lock.withLock {
            for p in problems { mc.noteFailure("CPU \(cpu.index): \(p)") }
            mc.recordSMIEntry(cpu, smbase: smbase, savedCS: savedCS, savedRIP: savedRIP)
        }
    }

    private func observeRSM(_ cpu: CPUContext) throws {
        let smbase = try readSMMMSRs(cpu).smbase
        try cpu.vcpu.setGuestDebug()
        cpu.extraIoctls += 1
        if machine.config.trace { machine.traceLine("cpu\(cpu.index) RSM (KVM): SMBASE \(hex(smbase))") }
        machine.lock.withLock { machine.recordRSM(cpu, smbase: smbase) }
    }

    // MARK: hotplug (the CPU's own thread)

    func perform(_ work: HotplugWork, on cpu: CPUContext) throws {
        let m = machine
        switch work {
        case .park:
            // The vCPU is parked with whatever KVM holds; record the SMBASE KVM has for it.
            let s = try readSMMMSRs(cpu).smbase
            m.lock.withLock { m.recordEject(cpu, smbase: s) }
        case .hotAdd(.keepState, let register, _):
            // Hot-add without RESET: the parked vCPU goes to wait-for-SIPI (`KVM_SET_MP_STATE(INIT_RECEIVED)`), its
            // registers and SMBASE untouched; the guest's INIT-SIPI-SIPI does the rest inside KVM.
            try cpu.vcpu.setMPState(.initReceived)
            cpu.extraIoctls += 1
            let s = try readSMMMSRs(cpu).smbase
            m.lock.withLock { m.recordHotAdd(cpu, smbase: s, smbaseRegister: register) }
        case .hotAdd(let action, let register, let fresh):
            // A vCPU created by this hot-add is in KVM's power-on state already (SMBASE 0x30000, wait-for-SIPI).
            if !fresh { try reset(cpu) }
            if action == .resetLoadingSMBASERegister, let r = register {
                // Strategy B: the VMM loads the CPU's SMBASE from its register; KVM accepts MSR 0x9E from the
                // host only (`kvm_set_msr_common`, `msr_info->host_initiated`).
                try setSMBASE(cpu, r)
            }
            let s = try readSMMMSRs(cpu).smbase
            m.lock.withLock { m.recordHotAdd(cpu, smbase: s, smbaseRegister: register) }
        }
    }

    private func setSMBASE(_ cpu: CPUContext, _ smbase: UInt32) throws {
        guard try cpu.vcpu.setMSRs([(UInt32(MSR_IA32_SMBASE), UInt64(smbase))]) == 1 else {
            throw MachineError.kvm("KVM_SET_MSRS(MSR_IA32_SMBASE) was refused on CPU \(cpu.index)")
        }
        cpu.extraIoctls += 1
    }

    /// RESET of a hot-added CPU (the CPU's thread, its last exit complete), as QEMU's `x86_cpu_reset` +
    /// `kvm_arch_put_registers` do: power-on registers, `MSR_IA32_SMBASE` = 0x30000 written with `KVM_SET_MSRS`,
    /// wait-for-SIPI. The SMBASE recorded is read back from KVM. (The in-kernel local APIC is not reset; the
    /// guest's INIT resets it.)
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
        // disabled, and the guest's INIT-SIPI-SIPI may arrive before this vCPU runs again.
        guard try v.setMSRs([(UInt32(MSR_IA32_APIC_BASE), st.sregs.apic_base)]) == 1 else {
            throw MachineError.kvm("KVM_SET_MSRS(MSR_IA32_APICBASE) was refused on CPU \(cpu.index)")
        }
        cpu.extraIoctls += 1
        try v.setMPState(cpu.isBSP ? .runnable : .initReceived)
        cpu.extraIoctls += 1
        let m = try readSMMMSRs(cpu)
        smiCounts[cpu.index].value = m.smiCount
        if !cpu.present {
            // KVM has no absent vCPU, and its local APICs would take the boot's all-but-self INIT and SIPI
            // (kvm_apic_match_dest skips only disabled APICs): the APIC stays hardware-disabled until the hot-add
            // RESET loads the power-on APIC base with EN set.
            guard try cpu.vcpu.setMSRs([(UInt32(MSR_IA32_APIC_BASE), Layout.apicBase)]) == 1 else {
                throw MachineError.kvm("KVM_SET_MSRS(MSR_IA32_APICBASE) was refused on CPU \(cpu.index)")
            }
            cpu.extraIoctls += 1
        }
        machine.lock.withLock { machine.recordReset(cpu, smbase: m.smbase) }
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

    /// Every CPU's MSR 0x9E must be the SMBASE the VMM last observed, and KVM's SMI count the one it last saw
    /// (or 0 after an INIT). Also sets each CPU's run state from KVM's mp_state.
    func endOfRun(_ cpus: [CPUContext]) -> [String] {
        var problems: [String] = []
        for c in cpus where c.exists {
            c.state = runState(c)
            guard let m = try? readSMMMSRs(c) else {
                problems.append("CPU \(c.index): MSR 0x9E unreadable")
                continue
            }
            if m.smbase != c.smbase {
                problems.append("CPU \(c.index): MSR 0x9E is \(hex(m.smbase)) but minivmm observed \(hex(c.smbase))")
            }
            if let n = m.smiCount, let seen = smiCounts[c.index].value, n != seen && n != 0 {
                problems.append("CPU \(c.index): KVM counts \(n) SMIs since its last INIT, minivmm observed \(seen)")
            }
        }
        return problems
    }
}
