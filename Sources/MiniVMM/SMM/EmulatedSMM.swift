// SPDX-License-Identifier: MIT
import CKVM
import KVMBridge

/// The emulated SMM backend: KVM here has no SMM, so the VMM performs SMI entry and RSM itself with the
/// pure model of `SMMTransitions.swift` (KVM's `enter_smm` / `emulator_leave_smm`), and runs SMM code on the
/// CPU's vCPU in the SMRAM view — a second VM over the same host memory that plays KVM's address space 1:
/// there TSEG stays mapped, while the normal view drops it once firmware closes SMRAM.
///
/// RSM: the SMRAM-view vCPU only ever runs SMM code, so it is single-stepped permanently (set once when it is
/// created, no per-SMI ioctl); at every instruction boundary the VMM looks at the next instruction and performs
/// RSM itself before the CPU would execute it. Exceptions: in SMM the vCPU runs with a real-mode IVT
/// (`Layout.smmTrapIVT`) whose vectors point into the unmapped VGA hole, so an exception stops the vCPU with
/// RIP = vector; KVM loads IDT limit 0 on SMI entry, so any exception in SMM is a triple fault there too.
/// (An IDT limit of 0 cannot be used here: this host's KVM hangs in KVM_RUN on a real-mode exception with it.)
/// An earlier design let RSM raise #UD into that IVT; its 6-byte frame on the handler's SS:SP raced between
/// CPUs sharing a stack pointer, so the #UD path below is only a fallback.
extension Machine {
    /// SMI entry for `cpu` (its thread; the last exit is complete): save the state map at SMBASE+0xFE00, load
    /// the SDM entry state into the SMRAM-view vCPU. No ioctl: registers come from kvm_sync_regs, DR6/DR7 from
    /// the VMM's tracked copy.
    func emulatedSMIEntry(_ cpu: CPUContext) throws {
        let v = cpu.vcpu
        let regs = v.syncedRegs
        let sregs = v.syncedSregs
        let events = v.syncedEvents
        let dr = cpu.debugRegs
        let state = ArchState(
            regs: regs, sregs: sregs, dr6: dr.dr6, dr7: dr.dr7, interruptShadow: events.interrupt.shadow,
            nmiMasked: events.nmi.masked != 0)
        let smbase = lock.withLock { cpu.smbase }
        let entry = enterSMM(from: state, smbase: smbase, format: saveStateFormat)
        // KVM kills the VM when the state map cannot be written (kvm_vm_dead in enter_smm).
        guard memory.write(entry.map, at: UInt64(smbase) + UInt64(SaveStateMap.offsetFromSMBASE)) else {
            tripleFault(cpu, "SMI entry: SMBASE 0x\(String(smbase, radix: 16)) puts the state map outside RAM")
            return
        }
        let s = try smmVCPU(for: cpu)
        var es = entry.state
        // The trap flag itself: KVM sets TF for KVM_GUESTDBG_SINGLESTEP only at the RIP where single-stepping was
        // requested (`__kvm_set_rflags` checks `singlestep_rip`), so loading new registers would end the stepping.
        // With TF in RFLAGS the CPU traps after every instruction and KVM, intercepting #DB for guest debugging,
        // exits with KVM_EXIT_DEBUG; `kvm_get_rflags` hides TF again. (This host's kvm_pvm kept stepping either
        // way; the nested lane's KVM did not.)
        es.regs.rflags |= X86.trapFlag
        es.sregs.idt = kvm_dtable(base: Layout.smmTrapIVT, limit: Layout.smmTrapIVTLimit)
        s.syncedRegs = es.regs
        s.syncedSregs = es.sregs
        var ev = s.syncedEvents
        ev.flags = UInt32(KVM_VCPUEVENT_VALID_SHADOW)
        ev.interrupt.shadow = 0
        ev.nmi.masked = 1
        s.syncedEvents = ev
        cpu.smm = SMMSession(format: saveStateFormat, insideNMI: entry.insideNMI, dr6: dr.dr6, dr7: dr.dr7)
        if config.trace {
            traceLine(
                "cpu\(cpu.index) SMI entry: SMBASE 0x\(String(smbase, radix: 16)), saved \(String(sregs.cs.selector, radix: 16)):\(String(regs.rip, radix: 16)), \(saveStateFormat.rawValue) map"
            )
        }
        lock.withLock {
            cpu.inSMM = true
            smiCount += 1
            if cpu.state == .halted { cpu.state = .running }  // saved RIP is after the HLT; auto-HALT stays 0
            cpu.observation.smiEntries.append(
                SMIEntryRecord(
                    phase: phase, smbase: smbase, entry: smbase &+ 0x8000, inSMRAM: entryIsInSMRAM(smbase: smbase),
                    savedCS: sregs.cs.selector, savedRIP: regs.rip))
        }
        // Single-stepping reports boundaries after an instruction: a handler whose first instruction is RSM
        // is caught here.
        if let first = memory.fetch(UInt64(smbase) &+ 0x8000, count: 6), ExitClassifier.isRSM(first) {
            try emulatedRSM(cpu, smm: s)
        }
    }

    /// The SMRAM-view vCPU reached a trap vector.
    func smmTrap(_ cpu: CPUContext, vector: UInt8, smm s: VCPU) throws {
        guard vector == 6 else {
            tripleFault(cpu, "exception vector \(vector) in SMM (SMI entry loads IDT limit 0: triple fault)")
            return
        }
        // The #UD frame (IP, CS, FLAGS) sits at SS:SP; recover the faulting CS base: the SMI entry CS
        // (selector = SMBASE>>4 truncated, base = SMBASE) unless the handler loaded another real-mode CS.
        let regs = s.syncedRegs
        let sregs = s.syncedSregs
        let sp = sregs.ss.db != 0 ? regs.rsp & 0xFFFF_FFFF : regs.rsp & 0xFFFF
        let frame = sregs.ss.base &+ sp
        guard let ip = memory.readU16(frame), let cs = memory.readU16(frame + 2) else {
            tripleFault(cpu, "#UD in SMM with the stack outside RAM")
            return
        }
        let smbase = lock.withLock { cpu.smbase }
        let csBase = UInt64(cs) == (UInt64(smbase) >> 4) & 0xFFFF ? UInt64(smbase) : UInt64(cs) << 4
        guard let bytes = memory.fetch(csBase + UInt64(ip), count: 6), ExitClassifier.isRSM(bytes) else {
            tripleFault(cpu, "#UD in SMM at \(String(cs, radix: 16)):\(String(ip, radix: 16)) (not RSM): triple fault")
            return
        }
        try emulatedRSM(cpu, smm: s)
    }

    /// RSM: reload the state from the map (as it is now), load SMBASE from its field, leave SMM.
    func emulatedRSM(_ cpu: CPUContext, smm s: VCPU) throws {
        guard let session = cpu.smm else {
            tripleFault(cpu, "RSM trap without an SMM session")
            return
        }
        let smbase = lock.withLock { cpu.smbase }
        guard let map = memory.read(UInt64(smbase) + UInt64(SaveStateMap.offsetFromSMBASE), count: SaveStateMap.size)
        else {
            tripleFault(cpu, "RSM: state map outside RAM")
            return
        }
        let current = ArchState(
            regs: s.syncedRegs, sregs: s.syncedSregs, dr6: session.dr6, dr7: 0x400, interruptShadow: 0, nmiMasked: true)
        switch leaveSMM(map: map, format: session.format, current: current, insideNMI: session.insideNMI) {
        case .failure(let f):
            tripleFault(cpu, "RSM failed: \(f) (KVM makes this a triple fault)")
        case .success(let exit):
            try load(exit.state, into: cpu)
            cpu.smm = nil
            if config.trace {
                traceLine(
                    "cpu\(cpu.index) RSM: SMBASE 0x\(String(exit.smbase, radix: 16)), back to \(String(exit.state.sregs.cs.selector, radix: 16)):\(String(exit.state.regs.rip, radix: 16))"
                )
            }
            lock.withLock {
                cpu.inSMM = false
                rsmCount += 1
                cpu.observation.rsmCount += 1
                if exit.smbase != cpu.smbase {
                    cpu.observation.smbaseHistory.append(
                        SMBASEEvent(cause: .rsm, phase: cpu.sessionPhase(default: phase), smbase: exit.smbase))
                }
                cpu.smbase = exit.smbase
            }
        }
    }

    // MARK: RESET, INIT, SIPI (the CPU's thread; its last exit is complete)

    /// Loads `st` into the CPU's normal-view vCPU through the synced registers (no ioctl); DR6/DR7 are not in
    /// kvm_sync_regs, so they take KVM_GET/SET_DEBUGREGS — only when they differ from the tracked values.
    private func load(_ st: ArchState, into cpu: CPUContext) throws {
        let v = cpu.vcpu
        v.syncedRegs = st.regs
        v.syncedSregs = st.sregs
        var ev = v.syncedEvents
        ev.flags = UInt32(KVM_VCPUEVENT_VALID_SHADOW)
        ev.interrupt.shadow = st.interruptShadow
        ev.nmi.masked = st.nmiMasked ? 1 : 0
        v.syncedEvents = ev
        if cpu.debugRegs == (st.dr6, st.dr7) { return }
        var d = try v.getDebugRegs()
        d.dr6 = st.dr6
        d.dr7 = st.dr7
        try v.setDebugRegs(d)
        cpu.debugRegs = (st.dr6, st.dr7)
        cpu.extraIoctls += 2
    }

    /// RESET (hot-add with --hotplug-reset, as QEMU's cpu_reset): power-on state, SMBASE 0x30000.
    func applyReset(_ cpu: CPUContext) throws {
        try load(ArchState.powerOn(isBSP: cpu.index == 0), into: cpu)
        lock.withLock {
            cpu.smbase = 0x30000
            cpu.apic.reset()
            cpu.state = cpu.index == 0 ? .running : .waitForSIPI
            cpu.observation.smbaseHistory.append(SMBASEEvent(cause: .reset, phase: phase, smbase: 0x30000))
            if cpu.observation.hotAdded { cpu.observation.smbaseAtHotAdd = 0x30000 }
        }
    }

    /// INIT (SDM 10.4.7.3, KVM `kvm_vcpu_reset(vcpu, true)`): registers to the INIT state, SMBASE kept; APs
    /// then wait for SIPI, the BSP restarts at the reset vector.
    func applyINIT(_ cpu: CPUContext) throws {
        let v = cpu.vcpu
        let current = ArchState(regs: v.syncedRegs, sregs: v.syncedSregs)
        try load(current.afterINIT(), into: cpu)
        lock.withLock {
            cpu.apic.initSignal()
            cpu.state = cpu.index == 0 ? .running : .waitForSIPI
            // No history event: on the kvm backend INIT happens inside KVM_RUN, unseen by the VMM, and both
            // backends record the same events. What INIT kept shows in the next SMI entry's SMBASE.
        }
    }

    /// SIPI: start at vector << 12 in real mode. A held SMI is taken next, before the first instruction.
    func applySIPI(_ cpu: CPUContext, vector: UInt8) {
        let v = cpu.vcpu
        let st = ArchState(regs: v.syncedRegs, sregs: v.syncedSregs).atSIPI(vector: vector)
        v.syncedRegs = st.regs
        v.syncedSregs = st.sregs
        lock.withLock { cpu.state = .running }
    }
}
