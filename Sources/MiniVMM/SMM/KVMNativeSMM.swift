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
extension Machine {
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

    /// `KVM_SMI` on the CPU's own thread (a vCPU ioctl waits for the vCPU's KVM_RUN otherwise). KVM holds the
    /// SMI while the CPU is in SMM or waits for SIPI, as real hardware does.
    func injectKVMSMI(_ cpu: CPUContext) throws {
        try cpu.vcpu.smi()
        cpu.extraIoctls += 1
    }

    /// Every exit: KVM's SMM flag against what the VMM has seen. Entering SMM is an SMI entry to record, leaving
    /// it an RSM. Returns whether the exit was only a single-step (nothing else to handle).
    func observeSMMTransition(_ cpu: CPUContext, _ e: VCPUExit) throws -> Bool {
        let inSMM = cpu.vcpu.inKVMSMM
        let wasInSMM = lock.withLock { cpu.inSMM }
        if inSMM && !wasInSMM {
            try observeSMIEntry(cpu, e)
        } else if !inSMM && wasInSMM {
            try observeRSM(cpu)
        }
        if case .debug = e { return true }
        return false
    }

    private func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }

    private func observeSMIEntry(_ cpu: CPUContext, _ e: VCPUExit) throws {
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
        } else if sregs.cs.base != UInt64(smbase) || regs.rip < UInt64(SMM_HANDLER_OFFSET)
            || regs.rip > UInt64(SMM_HANDLER_OFFSET) + 4
        {
            problems.append(
                "SMI entry seen at CS base \(hex(sregs.cs.base)) RIP \(hex(regs.rip)) with SMBASE \(hex(smbase))")
        }
        if let count = m.smiCount, let last = cpu.kvmSMICount, count != last + 1 && count != 1 {
            problems.append("KVM counts \(count) SMIs, minivmm saw \(last) before this one: an SMI went unobserved")
        }
        var savedCS: UInt16 = 0
        var savedRIP: UInt64 = 0
        if let bytes = memory.read(mapAddress, count: SaveStateMap.size) {
            let map = SaveStateMap.decode(bytes, format: saveStateFormat)
            savedCS = map.segments[SegmentRegister.cs.rawValue].selector
            savedRIP = map.rip
            if map.revision != saveStateFormat.revision {
                problems.append(
                    "KVM wrote save-state revision \(hex(map.revision)); the guest CPUID implies \(saveStateFormat.rawValue) (\(hex(saveStateFormat.revision)))"
                )
            } else if map.smbase != smbase {
                problems.append("the map's SMBASE field \(hex(map.smbase)) is not MSR 0x9E")
            }
        } else {
            problems.append("the state-save map at \(hex(mapAddress)) is outside RAM")
        }
        if config.trace {
            traceLine("cpu\(cpu.index) SMI entry (KVM): SMBASE \(hex(smbase)), saved \(hex(savedCS)):\(hex(savedRIP))")
        }
        cpu.kvmSMICount = m.smiCount
        // Step to RSM.
        try cpu.vcpu.setGuestDebug(singleStep: true)
        cpu.extraIoctls += 1
        lock.withLock {
            for p in problems { noteFailure("CPU \(cpu.index): \(p)") }
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
        let smbase = try readSMMMSRs(cpu).smbase
        try cpu.vcpu.setGuestDebug()
        cpu.extraIoctls += 1
        if config.trace { traceLine("cpu\(cpu.index) RSM (KVM): SMBASE \(hex(smbase))") }
        lock.withLock {
            cpu.inSMM = false
            rsmCount += 1
            cpu.observation.rsmCount += 1
            if smbase != cpu.smbase {
                cpu.observation.smbaseHistory.append(
                    SMBASEEvent(cause: .rsm, phase: cpu.sessionPhase(default: phase), smbase: smbase))
            }
            cpu.smbase = smbase
        }
    }

    // MARK: hotplug (the CPU's own thread)

    /// Eject: the vCPU is parked with whatever KVM holds; record the SMBASE KVM has for it.
    func kvmPark(_ cpu: CPUContext) throws {
        let s = try readSMMMSRs(cpu).smbase
        lock.withLock {
            if s != cpu.smbase {
                noteFailure("CPU \(cpu.index): MSR 0x9E is \(hex(s)) at eject, minivmm last saw \(hex(cpu.smbase))")
            }
            cpu.observation.smbaseAtEject = s
        }
    }

    /// Hot-add without RESET: the parked vCPU goes to wait-for-SIPI (`KVM_SET_MP_STATE(INIT_RECEIVED)`), its
    /// registers and SMBASE untouched; the guest's INIT-SIPI-SIPI does the rest inside KVM.
    func kvmHotAdd(_ cpu: CPUContext) throws {
        try cpu.vcpu.setMPState(.initReceived)
        cpu.extraIoctls += 1
        let s = try readSMMMSRs(cpu).smbase
        lock.withLock {
            cpu.smbase = s
            cpu.observation.smbaseAtHotAdd = s
            cpu.observation.smbaseHistory.append(SMBASEEvent(cause: .hotAdd, phase: phase, smbase: s))
        }
    }

    /// RESET for a hot-add with --hotplug-reset (the CPU's thread, its last exit complete), as QEMU's
    /// `x86_cpu_reset` + `kvm_arch_put_registers` do: power-on registers, `MSR_IA32_SMBASE` = 0x30000 written
    /// with `KVM_SET_MSRS`, wait-for-SIPI. The SMBASE recorded is read back from KVM. (The in-kernel local APIC is
    /// not reset; the guest's INIT resets it.)
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
        let m = try readSMMMSRs(cpu)
        cpu.kvmSMICount = m.smiCount
        lock.withLock {
            cpu.smbase = m.smbase
            cpu.observation.smbaseHistory.append(SMBASEEvent(cause: .reset, phase: phase, smbase: m.smbase))
            if cpu.observation.hotAdded { cpu.observation.smbaseAtHotAdd = m.smbase }
        }
    }

    // MARK: end of run (the CPU threads have stopped)

    /// The report's CPU state from KVM's mp_state.
    func kvmRunState(_ cpu: CPUContext) -> CPURunState {
        guard cpu.state != .unplugged && cpu.state != .stopped else { return cpu.state }
        guard let mp = try? cpu.vcpu.getMPState() else { return cpu.state }
        switch VCPU.MPState(rawValue: mp) {
        case .halted: return .halted
        case .initReceived, .uninitialized, .sipiReceived: return .waitForSIPI
        default: return .running
        }
    }

    /// Every CPU's MSR 0x9E must be the SMBASE the VMM last observed, and KVM's SMI count the one it last saw
    /// (or 0 after an INIT). Returns the problems found.
    func kvmFinalSMMCheck() -> [String] {
        var problems: [String] = []
        for c in cpus {
            guard let m = try? readSMMMSRs(c) else {
                problems.append("CPU \(c.index): MSR 0x9E unreadable")
                continue
            }
            if m.smbase != c.smbase {
                problems.append("CPU \(c.index): MSR 0x9E is \(hex(m.smbase)) but minivmm observed \(hex(c.smbase))")
            }
            if let n = m.smiCount, let seen = c.kvmSMICount, n != seen && n != 0 {
                problems.append("CPU \(c.index): KVM counts \(n) SMIs since its last INIT, minivmm observed \(seen)")
            }
        }
        return problems
    }
}
