// SPDX-License-Identifier: MIT
import CKVM
import GuestFirmware
import KVMBridge

/// The kvm SMM backend: KVM performs SMI entry, RSM, INIT and SIPI itself (arch/x86/kvm/smm.c `enter_smm` /
/// `emulator_leave_smm`, lapic.c `kvm_apic_accept_events`); SMRAM lives in memslot address space 1. The VMM
/// raises SMIs with `KVM_SMI`, reads SMBASE with host-initiated `KVM_GET_MSRS(MSR_IA32_SMBASE)`, and observes
/// every SMI itself, without trusting the firmware:
///
/// - Each vCPU carries one hardware instruction breakpoint (`KVM_SET_GUEST_DEBUG`, DR0) at its SMBASE+0x8000,
///   where SMI entry starts (SDM 34.5.1: CS base = SMBASE, EIP = 0x8000). With `KVM_GUESTDBG_USE_HW_BP`, KVM
///   keeps the VMM's DR7 across `enter_smm` (`kvm_update_dr7` prefers `guest_debug_dr7`), so the first
///   instruction of every SMI handler exits as `KVM_EXIT_DEBUG` with `kvm_run->flags & KVM_RUN_X86_SMM`.
/// - At that exit the VMM reads MSR 0x9E, checks CS base = SMBASE and RIP = 0x8000, and reads the state-save map
///   KVM wrote at SMBASE+0xFE00 (revision, saved CS and RIP) from guest memory.
/// - It then single-steps the handler (`KVM_GUESTDBG_SINGLESTEP`; an emulated RSM ends in a single-step exit
///   too, `x86_emulate_instruction` → `kvm_vcpu_do_singlestep`) until an exit without `KVM_RUN_X86_SMM`: RSM
///   has run, MSR 0x9E holds the SMBASE it loaded, and the breakpoint moves to the new SMBASE+0x8000.
///
/// Any other exit whose SMM flag disagrees with what the VMM observed is reported as a failure, and at the end
/// of the run every CPU's MSR 0x9E must equal the last SMBASE the VMM observed.
extension Machine {
    /// `KVM_GET_MSRS(MSR_IA32_SMBASE)`, host-initiated (`vcpu->arch.smbase`).
    func readSMBASE(_ cpu: CPUContext) throws -> UInt32 {
        let values = try cpu.vcpu.getMSRs([UInt32(MSR_IA32_SMBASE)])
        cpu.extraIoctls += 1
        guard let v = values[UInt32(MSR_IA32_SMBASE)] else {
            throw MachineError.kvm("KVM_GET_MSRS(MSR_IA32_SMBASE) processed 0 entries on CPU \(cpu.index)")
        }
        return UInt32(truncatingIfNeeded: v)
    }

    /// Puts the CPU's SMI-entry breakpoint at SMBASE+0x8000 and stops single-stepping.
    func armSMIEntryWatch(_ cpu: CPUContext) throws {
        try cpu.vcpu.setGuestDebug(breakpoints: [UInt64(cpu.smbase) &+ UInt64(SMM_HANDLER_OFFSET)])
        cpu.extraIoctls += 1
        cpu.kvmStepping = false
    }

    /// Starts single-stepping (breakpoint off).
    private func startStepping(_ cpu: CPUContext) throws {
        try cpu.vcpu.setGuestDebug(singleStep: true)
        cpu.extraIoctls += 1
        cpu.kvmStepping = true
    }

    /// `KVM_SMI` on the CPU's own thread (a vCPU ioctl waits for the vCPU's KVM_RUN otherwise). KVM holds the
    /// SMI while the CPU is in SMM or waits for SIPI, as real hardware does.
    func injectKVMSMI(_ cpu: CPUContext) throws {
        try cpu.vcpu.smi()
        cpu.extraIoctls += 1
    }

    /// A `KVM_EXIT_DEBUG`: the SMI-entry breakpoint, a step inside an SMI handler, or the step that left SMM.
    func kvmDebugExit(_ cpu: CPUContext) throws {
        let v = cpu.vcpu
        let wasInSMM = lock.withLock { cpu.inSMM }
        if v.inKVMSMM {
            if !wasInSMM { try observeSMIEntry(cpu, atBreakpoint: !cpu.kvmStepping) }
            if !cpu.kvmStepping { try startStepping(cpu) }
        } else {
            if wasInSMM { try observeRSM(cpu) }
            if cpu.kvmStepping {
                try armSMIEntryWatch(cpu)
            } else {
                // The breakpoint matched outside SMM (ordinary code at that address): step over it.
                try startStepping(cpu)
            }
        }
    }

    /// Any other exit: KVM's SMM flag must agree with what the VMM observed.
    func checkKVMSMMFlag(_ cpu: CPUContext, _ e: VCPUExit) {
        let flag = cpu.vcpu.inKVMSMM
        lock.withLock {
            if flag != cpu.inSMM {
                noteFailure(
                    "CPU \(cpu.index): KVM reports \(flag ? "" : "no ")SMM at \(e.summary), but minivmm observed \(cpu.inSMM ? "no RSM" : "no SMI entry")"
                )
            }
        }
    }

    private func observeSMIEntry(_ cpu: CPUContext, atBreakpoint: Bool) throws {
        let smbase = try readSMBASE(cpu)
        let regs = cpu.vcpu.syncedRegs
        let sregs = cpu.vcpu.syncedSregs
        let mapAddress = UInt64(smbase) &+ UInt64(SaveStateMap.offsetFromSMBASE)
        var problem: String?
        if sregs.cs.base != UInt64(smbase) || (atBreakpoint && regs.rip != UInt64(SMM_HANDLER_OFFSET)) {
            problem =
                "SMI entry at CS base 0x\(String(sregs.cs.base, radix: 16)) RIP 0x\(String(regs.rip, radix: 16)) with SMBASE 0x\(String(smbase, radix: 16))"
        }
        var savedCS: UInt16 = 0
        var savedRIP: UInt64 = 0
        if let bytes = memory.read(mapAddress, count: SaveStateMap.size) {
            let map = SaveStateMap.decode(bytes, format: saveStateFormat)
            savedCS = map.segments[SegmentRegister.cs.rawValue].selector
            savedRIP = map.rip
            if map.revision != saveStateFormat.revision {
                problem =
                    "KVM wrote save-state revision 0x\(String(map.revision, radix: 16)); the guest CPUID implies \(saveStateFormat.rawValue) (0x\(String(saveStateFormat.revision, radix: 16)))"
            } else if map.smbase != smbase {
                problem = "the map's SMBASE field 0x\(String(map.smbase, radix: 16)) is not MSR 0x9E"
            }
        } else {
            problem = "the state-save map at 0x\(String(mapAddress, radix: 16)) is outside RAM"
        }
        if config.trace {
            traceLine(
                "cpu\(cpu.index) SMI entry (KVM): SMBASE 0x\(String(smbase, radix: 16)), saved \(String(savedCS, radix: 16)):\(String(savedRIP, radix: 16))"
            )
        }
        lock.withLock {
            if let problem { noteFailure("CPU \(cpu.index): \(problem)") }
            cpu.inSMM = true
            cpu.smbase = smbase
            smiCount += 1
            cpu.observation.smiEntries.append(
                SMIEntryRecord(
                    phase: phase, smbase: smbase, entry: smbase &+ UInt32(SMM_HANDLER_OFFSET),
                    inSMRAM: entryIsInSMRAM(smbase: smbase), savedCS: savedCS, savedRIP: savedRIP))
        }
    }

    private func observeRSM(_ cpu: CPUContext) throws {
        let smbase = try readSMBASE(cpu)
        if config.trace { traceLine("cpu\(cpu.index) RSM (KVM): SMBASE 0x\(String(smbase, radix: 16))") }
        lock.withLock {
            cpu.inSMM = false
            rsmCount += 1
            cpu.observation.rsmCount += 1
            if smbase != cpu.smbase {
                cpu.observation.smbaseHistory.append(SMBASEEvent(cause: .rsm, phase: phase, smbase: smbase))
            }
            cpu.smbase = smbase
        }
    }

    // MARK: hotplug (lock held unless noted)

    /// Eject: the vCPU is parked with whatever KVM holds; record the SMBASE KVM has for it. The CPU's thread was
    /// kicked out of KVM_RUN, so the vCPU ioctl only waits for that to finish.
    func kvmSMBASEAtEject(_ cpu: CPUContext) -> UInt32 {
        do {
            let s = try readSMBASE(cpu)
            if s != cpu.smbase {
                noteFailure(
                    "CPU \(cpu.index): MSR 0x9E is 0x\(String(s, radix: 16)) at eject, minivmm last saw 0x\(String(cpu.smbase, radix: 16))"
                )
            }
            return s
        } catch {
            noteFailure("CPU \(cpu.index): reading SMBASE at eject failed: \(error)")
            return cpu.smbase
        }
    }

    /// Hot-add without RESET: the parked vCPU goes to wait-for-SIPI (`KVM_SET_MP_STATE(INIT_RECEIVED)`), its
    /// registers and SMBASE untouched; the guest's INIT-SIPI-SIPI does the rest inside KVM.
    func kvmHotAddWithoutReset(_ cpu: CPUContext) -> UInt32 {
        do {
            try cpu.vcpu.setMPState(.initReceived)
            cpu.extraIoctls += 1
            return try readSMBASE(cpu)
        } catch {
            noteFailure("CPU \(cpu.index): hot-add failed: \(error)")
            return cpu.smbase
        }
    }

    /// RESET for a hot-add with --hotplug-reset (the CPU's thread, its last exit complete), as QEMU's
    /// `x86_cpu_reset` + `kvm_arch_put_registers` do: power-on registers, `MSR_IA32_SMBASE` = 0x30000 written
    /// with `KVM_SET_MSRS`, wait-for-SIPI. The SMBASE recorded is read back from KVM.
    func applyKVMReset(_ cpu: CPUContext) throws {
        let v = cpu.vcpu
        let st = ArchState.powerOn(isBSP: cpu.index == 0)
        v.syncedRegs = st.regs
        v.syncedSregs = st.sregs
        guard try v.setMSRs([(UInt32(MSR_IA32_SMBASE), UInt64(SMM_DEFAULT_SMBASE))]) == 1 else {
            throw MachineError.kvm("KVM_SET_MSRS(MSR_IA32_SMBASE) was refused on CPU \(cpu.index)")
        }
        try v.setMPState(cpu.index == 0 ? .runnable : .initReceived)
        cpu.extraIoctls += 2
        let smbase = try readSMBASE(cpu)
        lock.withLock {
            cpu.smbase = smbase
            cpu.observation.smbaseHistory.append(SMBASEEvent(cause: .reset, phase: phase, smbase: smbase))
            if cpu.observation.hotAdded { cpu.observation.smbaseAtHotAdd = smbase }
        }
        try armSMIEntryWatch(cpu)
    }

    /// The report's CPU state from KVM's mp_state (after the CPU threads stopped).
    func kvmRunState(_ cpu: CPUContext) -> CPURunState {
        guard cpu.state != .unplugged && cpu.state != .stopped else { return cpu.state }
        guard let mp = try? cpu.vcpu.getMPState() else { return cpu.state }
        switch VCPU.MPState(rawValue: mp) {
        case .halted: return .halted
        case .initReceived, .uninitialized, .sipiReceived: return .waitForSIPI
        default: return .running
        }
    }

    /// End of run: every CPU's MSR 0x9E must be the SMBASE the VMM last observed (an unobserved RSM would
    /// show here). Returns the problems found.
    func kvmFinalSMBASECheck() -> [String] {
        var problems: [String] = []
        for c in cpus {
            guard let s = try? readSMBASE(c) else {
                problems.append("CPU \(c.index): MSR 0x9E unreadable")
                continue
            }
            if s != c.smbase {
                problems.append(
                    "CPU \(c.index): MSR 0x9E is 0x\(String(s, radix: 16)) but minivmm observed 0x\(String(c.smbase, radix: 16))"
                )
            }
        }
        return problems
    }
}
