// SPDX-License-Identifier: MIT
import CKVM
import KVMBridge

/// How the emulated backend sees SMM code's RSM, SIDT and LIDT before the CPU executes them (issue 9, gaps 1, 5).
///
/// Single-stepping every SMM instruction costs one exit per instruction (17–30× the same code outside SMM on
/// this host). Instead, at SMI entry the VMM scans the code SMM can be expected to run — the entry segment
/// [SMBASE+0x8000, SMBASE+0xFE00) and every closed SMRAM window — for every address where an RSM,
/// SIDT or LIDT could start (the 0F AA / 0F 01 /1 / 0F 01 /3 opcodes and every start reached backwards over
/// prefixes). When there are at most four, the SMRAM-view vCPU runs freely with KVM hardware breakpoints on
/// them (`KVM_GUESTDBG_USE_HW_BP`: KVM's emulator checks them before every instruction, in
/// `kvm_vcpu_check_code_breakpoint`), otherwise it is single-stepped as before. Either way the VMM looks at
/// each reported boundary:
/// - RSM: performed by the VMM before the CPU executes it.
/// - SIDT while the IDTR is still the VMM's trap IVT: the guest must read KVM's SMI-entry IDTR, base 0
///   limit 0. In real mode the VMM stores the 6 zero bytes itself (address and faults as KVM's
///   `__linearize` computes them); in protected or long mode it steps the SIDT with the vCPU's IDTR really 0/0
///   (a fault then triple-faults, as KVM's limit 0 does in SMM; this host's KVM hangs only on real-mode
///   exceptions with limit 0).
/// - LIDT: stepped over; from then on the IDT is the guest's, so an RSM the scan missed would raise #UD into
///   the guest's own handler. The VMM puts a breakpoint on that handler (vector 6 of the new IDT) and checks
///   the faulting instruction there; when it cannot (no free slot, a gate it does not model), the rest of the
///   handler is single-stepped.
/// A breakpoint does not move RIP and KVM's emulator ignores RFLAGS.RF for guest-debug breakpoints, so
/// continuing past one takes a one-instruction step with breakpoints off (two `KVM_SET_GUEST_DEBUG`s).
///
/// Hosts differ in two ways the watch measures or allows for:
/// - Whether the CPU stops at the breakpoints at all (``probeBreakpoints(_:)``, once per CPU). The nested
///   lane's SVM under QEMU TCG does not: only instructions KVM intercepts and emulates stop there (KVM's
///   `kvm_vcpu_check_code_breakpoint` in `x86_emulate_instruction`), so a SIDT ran unseen and read the trap IVT.
///   The RSM stops there: SVM intercepts it outside KVM's SMM (`INTERCEPT_RSM`) and KVM emulates it. On such a host
///   a session uses breakpoints only when every candidate is an RSM, else it is single-stepped.
/// - Whether the single-step TF survives. The VMM loads TF itself (KVM adds it only at `singlestep_rip`), and
///   KVM's instruction emulator drops it (`x86_emulate_instruction` writes back `ctxt->eflags`, read through
///   `kvm_get_rflags`, which hides TF under `KVM_GUESTDBG_SINGLESTEP`): the step after the emulated instruction
///   is still reported, the next ones were not. In the lane (no decode assists) that is every MOV to or from a
///   CR or DR. POPF/IRET load the guest's flags image (TF cleared by ``SteppedFlagsImage``) and INT n enters its
///   handler with TF clear. After each of these (``SMMCodeWatch/kvmMayEmulate(_:code64:)``,
///   ``SMMCodeWatch/reloadsFlags(_:code64:)``) and after an MMIO or I/O exit, the next boundary loads TF again
///   (kvm_sync_regs: no ioctl). Not covered: an NMI or interrupt delivered in SMM clears TF until its handler's
///   IRET restores the flags it pushed.
///
/// Exactness limit: code outside the scanned ranges is not seen. A session whose scanned code holds no RSM at all is
/// single-stepped (its RSM must lie elsewhere: SeaBIOS's in the F-segment). An RSM outside them that is reached while
/// breakpoints are in use (the scanned code held another RSM) is caught after the fact: as #UD through the trap IVT in real mode (the CPU has then pushed a
/// 6-byte frame below SS:SP), as a triple fault in protected/long mode with the VMM's IDT (nothing written),
/// or at the guest's #UD handler (its exception frame written). The VMM then performs the RSM and single-steps
/// every later SMI of that CPU, so it happens at most once per CPU.
extension EmulatedSMMBackend {
    /// Breakpoint slots (DR0–DR3).
    static let breakpointSlots = 4

    /// The vCPU's `KVM_SET_GUEST_DEBUG` setting as the VMM last made it.
    enum DebugMode: Equatable {
        case singleStep
        case breakpoints([UInt64])
    }

    /// Why the vCPU is taking a one-instruction step past a boundary the VMM handled.
    enum StepOver: Equatable {
        /// Past an instruction at a breakpoint (LIDT, a candidate that is not RSM/SIDT here, the guest's #UD
        /// handler entry when the fault was not RSM).
        case plain
        /// Past a SIDT executed with the IDTR set to the guest-visible 0/0: restore the trap IVT after it.
        case sidt
    }

    /// Watch state of one SMM session.
    struct SessionWatch {
        /// RSM/SIDT/LIDT candidates of the scan; nil: more than fit the breakpoint slots.
        var candidates: [UInt64]?
        /// Breakpoints in use; nil: single-stepping.
        var breakpoints: [UInt64]?
        var stepOver: StepOver?
        /// Entry of the guest's #UD handler (a breakpoint) once the guest loaded its own IDT.
        var udHandler: UInt64?
    }

    // MARK: SMI entry

    /// Scans the code SMM may run for RSM/SIDT/LIDT start candidates: nil when more than the breakpoint slots, or
    /// when the entry segment is not all RAM (SMM code in ROM or a hole cannot be scanned: single-step it). The
    /// ranges: the entry segment up to the state-save map (the map holds the interrupted code's registers, data
    /// that is never executed), and each closed SMRAM window (an open one is the OS's RAM, whose data would only
    /// fill the slots with false candidates).
    func scanCandidates(smbase: UInt32) -> [UInt64]? {
        let m = machine
        let entry = UInt64(smbase) &+ Layout.smiHandlerOffset
        let mapStart = UInt64(smbase) &+ UInt64(SaveStateMap.offsetFromSMBASE)
        guard m.memory.isRAM(entry, count: Int(mapStart - entry)) else { return nil }
        var ranges: [(UInt64, UInt64)] = [(entry, mapStart)]
        let windows = m.lock.withLock { m.smram.windows }
        for w in windows where w.closed { ranges.append((w.base, w.end)) }
        var out: [UInt64] = []
        for (lo, hi) in ranges where hi > lo {
            let top = min(hi, m.memory.ramSize)
            guard top > lo else { continue }
            let fits = m.memory.withRAM(lo, count: Int(top - lo)) {
                SMMCodeWatch.collectCandidates($0, base: lo, limit: Self.breakpointSlots, into: &out)
            }
            if fits == false { return nil }
        }
        return out.sorted()
    }

    /// Whether the scanned candidate at physical `address` starts an RSM (after any prefixes, REX included).
    func isRSMCandidate(_ address: UInt64) -> Bool {
        guard let b = machine.memory.fetch(address, count: SMMCodeWatch.maxInstructionLength) else { return false }
        return SMMCodeWatch.classify(b, code64: true) == .rsm
    }

    /// Chooses breakpoints or single-stepping for a new session and sets the vCPU up for it; `regs` are the
    /// entry registers still to be loaded (TF is added for single-stepping).
    func armWatch(_ cpu: CPUContext, smm s: VCPU, smbase: UInt32, regs: inout kvm_regs) throws -> SessionWatch {
        let p = perCPU[cpu.index]
        var w = SessionWatch()
        w.candidates = p.stepOnly || p.breakpointsHonoured == nil ? nil : scanCandidates(smbase: smbase)
        if let c = w.candidates {
            let rsms = c.count { isRSMCandidate($0) }
            // No RSM in the code scanned: the handler leaves from code outside it (SeaBIOS's RSM is in the
            // F-segment, OVMF's relocation RSM in a TSEG still open), which no breakpoint can cover: step it all.
            // And where the CPU ignores breakpoints, a SIDT or LIDT would run past its own: only an RSM, which KVM
            // intercepts and emulates, stops at one there.
            if rsms == 0 || (p.breakpointsHonoured == false && rsms < c.count) { w.candidates = nil }
        }
        w.breakpoints = w.candidates
        if w.breakpoints == nil {
            // The trap flag itself: KVM sets TF for KVM_GUESTDBG_SINGLESTEP only at the RIP where single-stepping
            // was requested (`__kvm_set_rflags` checks `singlestep_rip`), so loading new registers would end the
            // stepping. With TF in RFLAGS the CPU traps after every instruction and KVM, intercepting #DB for
            // guest debugging, exits with KVM_EXIT_DEBUG; `kvm_get_rflags` hides TF again.
            regs.rflags |= X86.trapFlag
        }
        try setDebugMode(cpu, smm: s, w.breakpoints.map { .breakpoints($0) } ?? .singleStep)
        return w
    }

    /// Whether the host CPU stops at a `KVM_GUESTDBG_USE_HW_BP` breakpoint on an instruction KVM lets the CPU run.
    /// KVM loads the breakpoints into the CPU's DR0–DR3/DR7 (`kvm_update_dr7`, `vcpu_enter_guest`) and checks them
    /// itself only before instructions its emulator runs (`kvm_vcpu_check_code_breakpoint`): this host's kvm_pvm
    /// emulates every instruction, so they all stop; the nested lane's SVM under QEMU TCG does not stop the CPU at
    /// them (an intercepted RSM stops at its breakpoint, a SIDT next to it does not). The probe, on a new vCPU that
    /// has not run: in real mode at the trap IVT's entry 0x90, whose first byte (its offset, 0x90) is a NOP, with a
    /// breakpoint there and TF set. A breakpoint the CPU honours exits before the NOP (RIP unchanged); otherwise the
    /// NOP runs and the single step exits after it. Returns the answer and the ioctls made beyond `KVM_RUN`.
    static func probeBreakpoints(_ v: VCPU) throws -> (honoured: Bool, ioctls: Int) {
        let ip: UInt64 = 4 * 0x90  // IVT[0x90] = smmTrapSegment:0x0090 (GuestMemory): bytes 90 00 ...
        try v.setGuestDebug(singleStep: true, breakpoints: [Layout.smmTrapIVT + ip])
        var r = v.syncedRegs
        r.rip = ip
        r.rflags = 0x2 | X86.trapFlag
        v.syncedRegs = r
        var sr = v.syncedSregs
        sr.cs.base = Layout.smmTrapIVT
        sr.cs.selector = 0xF000
        sr.cs.limit = 0xFFFF
        sr.cr0 &= ~(X86.CR0.pe | X86.CR0.pg)
        v.syncedSregs = sr
        for _ in 0..<3 {
            switch try v.runOnce() {
            case .interrupted: continue
            case .debug: return (v.syncedRegs.rip == ip, 1)
            default: return (false, 1)
            }
        }
        return (false, 1)
    }

    /// `KVM_SET_GUEST_DEBUG` when the mode changes (none per SMI while it stays the same).
    func setDebugMode(_ cpu: CPUContext, smm s: VCPU, _ mode: DebugMode) throws {
        let p = perCPU[cpu.index]
        guard p.debugMode != mode else { return }
        switch mode {
        case .singleStep: try s.setGuestDebug(singleStep: true)
        case .breakpoints(let b): try s.setGuestDebug(breakpoints: b)
        }
        p.debugMode = mode
        cpu.extraIoctls += 1
    }

    // MARK: boundaries

    /// An I/O, MMIO or MSR exit of a single-stepped SMRAM-view vCPU: KVM completes it on the next KVM_RUN and
    /// this host's KVM then runs the next instruction before it reports a step (it advanced RIP at the exit;
    /// KVM's `complete_fast_pio_out` reports the step at once). Completing it now with `immediate_exit` lets the
    /// VMM look at the next instruction (an RSM or SIDT right after an OUT) before it runs.
    func afterExit(_ exit: VCPUExit, cpu: CPUContext, vcpu s: VCPU) throws {
        switch exit {
        case .ioIn, .ioOut, .mmioRead, .mmioWrite, .rdmsr, .wrmsr: break
        default: return
        }
        let p = perCPU[cpu.index]
        guard cpu.inSMM, s === p.smmVCPU, p.session != nil, p.debugMode == .singleStep else { return }
        // KVM completes an MMIO access, and string I/O, through its emulator, which drops TF
        // (SMMCodeWatch.kvmMayEmulate); IN/OUT and MSR exits keep it, loading it again is harmless.
        p.reloadTrapFlag = true
        s.requestImmediateExit()
        let e = try s.runOnce()
        cpu.exitCount += 1
        if case .interrupted = e {
            try settle(cpu, smm: s, atBreakpoint: false)
        } else {
            try machine.handle(e, cpu: cpu, vcpu: s)
            try afterExit(e, cpu: cpu, vcpu: s)
        }
    }

    /// A KVM_EXIT_DEBUG of the SMRAM-view vCPU: a single-step boundary or a breakpoint.
    func smmDebugExit(_ cpu: CPUContext, smm s: VCPU) throws {
        let p = perCPU[cpu.index]
        guard var session = p.session else { return }
        if let step = session.watch.stepOver {
            session.watch.stepOver = nil
            if step == .sidt {
                var sr = s.syncedSregs
                sr.idt = kvm_dtable(base: Layout.smmTrapIVT, limit: Layout.smmTrapIVTLimit)
                s.syncedSregs = sr
            }
            p.session = session
            try resumeWatching(cpu, smm: s)
            // The step ended after an instruction, not at a breakpoint: one at RIP will report itself.
            try settle(cpu, smm: s, atBreakpoint: false)
            return
        }
        try settle(cpu, smm: s, atBreakpoint: session.watch.breakpoints != nil)
    }

    /// After a one-instruction step: back to breakpoints, re-planned when the guest has taken over its IDT.
    private func resumeWatching(_ cpu: CPUContext, smm s: VCPU) throws {
        let p = perCPU[cpu.index]
        guard var session = p.session else { return }
        guard var bps = session.watch.breakpoints else { return }  // single-stepping: nothing to restore
        if !Self.idtIsVirtual(s.syncedSregs) {
            let ud = guestUDHandler(cpu, smm: s)
            if ud != session.watch.udHandler {
                session.watch.udHandler = ud
                if let ud, var c = session.watch.candidates {
                    if !c.contains(ud) { c.append(ud) }
                    bps = c.count <= Self.breakpointSlots ? c.sorted() : []
                } else {
                    bps = []
                }
            }
        }
        if bps.isEmpty {
            session.watch.breakpoints = nil
            var r = s.syncedRegs
            r.rflags |= X86.trapFlag
            s.syncedRegs = r
            p.session = session
            try setDebugMode(cpu, smm: s, .singleStep)
            return
        }
        session.watch.breakpoints = bps
        p.session = session
        var r = s.syncedRegs
        if r.rflags & X86.trapFlag != 0 {
            r.rflags &= ~X86.trapFlag
            s.syncedRegs = r
        }
        try setDebugMode(cpu, smm: s, .breakpoints(bps))
    }

    /// Starts a one-instruction step from the current RIP.
    private func beginStepOver(_ cpu: CPUContext, smm s: VCPU, _ kind: StepOver) throws {
        let p = perCPU[cpu.index]
        guard var session = p.session else { return }
        session.watch.stepOver = kind
        p.session = session
        var r = s.syncedRegs
        r.rflags |= X86.trapFlag
        s.syncedRegs = r
        try setDebugMode(cpu, smm: s, .singleStep)
    }

    /// Whether the vCPU still runs with the VMM's trap IVT (the guest-visible IDTR is then KVM's 0/0).
    static func idtIsVirtual(_ sr: kvm_sregs) -> Bool {
        sr.idt.base == Layout.smmTrapIVT && sr.idt.limit == Layout.smmTrapIVTLimit
    }

    /// Whether the vCPU executes 64-bit code (EFER.LMA and CS.L).
    static func is64BitCode(_ sr: kvm_sregs) -> Bool { sr.efer & X86.EFER.lma != 0 && sr.cs.l != 0 }

    /// `kvm_get_linear_rip`: RIP in 64-bit code, else (u32)(CS base + RIP).
    static func linearRIP(_ regs: kvm_regs, _ sr: kvm_sregs) -> UInt64 {
        is64BitCode(sr) ? regs.rip : (sr.cs.base &+ regs.rip) & 0xFFFF_FFFF
    }

    /// Guest-physical address of `linear` for the SMRAM-view vCPU (identity while paging is off).
    func physical(_ linear: UInt64, smm s: VCPU, cpu: CPUContext) -> UInt64? {
        if s.syncedSregs.cr0 & X86.CR0.pg == 0 { return linear }
        cpu.extraIoctls += 1
        return (try? s.translate(linear))??.physical
    }

    /// Reads `count` bytes at a linear address (one page at most, so one translation).
    func readLinear(_ linear: UInt64, count: Int, smm s: VCPU, cpu: CPUContext) -> [UInt8]? {
        let inPage = 0x1000 - Int(linear & 0xFFF)
        let n = min(count, inPage)
        guard let pa = physical(linear, smm: s, cpu: cpu), var b = machine.memory.fetch(pa, count: n) else {
            return nil
        }
        if n < count, let pa2 = physical(linear &+ UInt64(n), smm: s, cpu: cpu),
            let rest = machine.memory.fetch(pa2, count: count - n)
        {
            b += rest
        }
        return b
    }

    /// Handles the instruction at RIP until the vCPU may run: performs RSM, emulates SIDT while the IDTR is
    /// virtual, steps over what sits at a breakpoint. `atBreakpoint`: the vCPU uses breakpoints, so the
    /// instruction at RIP has not run and will not be reported again unless it is passed here.
    func settle(_ cpu: CPUContext, smm s: VCPU, atBreakpoint: Bool) throws {
        let p = perCPU[cpu.index]
        if p.reloadTrapFlag {
            p.reloadTrapFlag = false
            if p.session != nil && p.debugMode == .singleStep {
                // No ioctl: kvm_sync_regs carries it into the next KVM_RUN.
                var r = s.syncedRegs
                r.rflags |= X86.trapFlag
                s.syncedRegs = r
            }
        }
        // Each pass handles one instruction; emulated SIDTs are the only reason to go on. A bound keeps a
        // real-mode segment filled with SIDTs (IP wraps) from holding the thread: past it the next SIDT runs
        // unseen.
        for _ in 0..<4096 {
            guard let session = p.session else { return }
            let regs = s.syncedRegs
            let sr = s.syncedSregs
            let pc = Self.linearRIP(regs, sr)
            // Single-stepping sets TF in the vCPU's RFLAGS: keep it out of what a PUSHF pushes.
            p.flagsImage.boundary(regs, sr, stepping: p.debugMode == .singleStep, memory: machine.memory)
            if session.watch.breakpoints != nil, pc == session.watch.udHandler {
                if try udHandlerReachedFromRSM(cpu, smm: s) { return }
                try beginStepOver(cpu, smm: s, .plain)
                return
            }
            guard let bytes = readLinear(pc, count: SMMCodeWatch.maxInstructionLength, smm: s, cpu: cpu) else {
                p.reloadTrapFlag = true  // code the VMM cannot read: KVM may emulate it
                if atBreakpoint { try beginStepOver(cpu, smm: s, .plain) }
                return
            }
            // Whatever runs from here, when single-stepped: after an instruction KVM's emulator completes, or one
            // that loads RFLAGS from the guest's image or enters a handler, TF must be loaded again (an RSM performed
            // or a SIDT emulated here does not run: the next pass decides anew).
            p.reloadTrapFlag =
                SMMCodeWatch.kvmMayEmulate(bytes, code64: Self.is64BitCode(sr))
                || SMMCodeWatch.reloadsFlags(bytes, code64: Self.is64BitCode(sr))
            switch SMMCodeWatch.classify(bytes, code64: Self.is64BitCode(sr)) {
            case .rsm:
                try performRSM(cpu, smm: s)
                return
            case .sidt(let modrm) where Self.idtIsVirtual(sr):
                if sr.cr0 & X86.CR0.pe == 0,
                    let t = SMMCodeWatch.realModeSIDTTarget(bytes, modrm: modrm, sregs: sr, regs: regs),
                    machine.memory.write([UInt8](repeating: 0, count: 6), at: t.linear)
                {
                    // KVM's emulate_store_desc_ptr: limit 0 then base 0 (4 bytes outside 64-bit mode).
                    var r = regs
                    r.rip = (r.rip &+ UInt64(t.length)) & (sr.cs.db != 0 ? 0xFFFF_FFFF : 0xFFFF)
                    // The registers read hide the stepping's TF (`kvm_get_rflags`); KVM would not add it back here
                    // (`__kvm_set_rflags` does only at the RIP where stepping was requested).
                    if p.debugMode == .singleStep { r.rflags |= X86.trapFlag }
                    s.syncedRegs = r
                    continue
                }
                if sr.cr0 & X86.CR0.pe == 0
                    && SMMCodeWatch.realModeSIDTTarget(
                        bytes, modrm: modrm, sregs: sr, regs: regs) == nil
                {
                    // The store faults: with the trap IVT the fault stops the vCPU (a triple fault, as KVM's
                    // IDT limit 0 makes it); stepping it with a real limit of 0 would hang this host's KVM.
                    if atBreakpoint { try beginStepOver(cpu, smm: s, .plain) }
                    return
                }
                // Protected/long mode (or a real-mode store to non-RAM): execute it with the guest-visible IDTR.
                var nsr = sr
                nsr.idt = kvm_dtable(base: 0, limit: 0)
                s.syncedSregs = nsr
                try beginStepOver(cpu, smm: s, .sidt)
                return
            default:
                if atBreakpoint { try beginStepOver(cpu, smm: s, .plain) }
                return
            }
        }
    }

    // MARK: the guest's own IDT

    /// The linear entry of the guest's #UD handler (vector 6 of its IDT), when the VMM can follow the gate:
    /// real-mode IVT; 32-bit interrupt/trap gate through a GDT code descriptor; 64-bit interrupt/trap gate.
    func guestUDHandler(_ cpu: CPUContext, smm s: VCPU) -> UInt64? {
        let sr = s.syncedSregs
        let base = sr.idt.base
        let limit = UInt64(sr.idt.limit)
        func le(_ b: [UInt8], _ o: Int, _ n: Int) -> UInt64 {
            (0..<n).reduce(UInt64(0)) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) }
        }
        if sr.cr0 & X86.CR0.pe == 0 {
            guard limit >= 27, let v = machine.memory.fetch((base &+ 24) & 0xFFFF_FFFF, count: 4) else { return nil }
            return (le(v, 2, 2) << 4) &+ le(v, 0, 2)
        }
        if sr.efer & X86.EFER.lma != 0 {
            guard limit >= 6 * 16 + 15, let g = readLinear(base &+ 96, count: 16, smm: s, cpu: cpu) else { return nil }
            let type = g[5] & 0x9F
            guard type == 0x8E || type == 0x8F else { return nil }
            return le(g, 0, 2) | le(g, 6, 2) << 16 | le(g, 8, 4) << 32
        }
        guard limit >= 6 * 8 + 7, let g = readLinear((base &+ 48) & 0xFFFF_FFFF, count: 8, smm: s, cpu: cpu) else {
            return nil
        }
        let type = g[5] & 0x9F
        let offset: UInt64
        switch type {
        case 0x8E, 0x8F: offset = le(g, 0, 2) | le(g, 6, 2) << 16
        case 0x86, 0x87: offset = le(g, 0, 2)
        default: return nil
        }
        guard let csBase = codeSegmentBase(selector: UInt16(le(g, 2, 2)), cpu: cpu, smm: s) else { return nil }
        return (csBase &+ offset) & 0xFFFF_FFFF
    }

    /// The base of a GDT code descriptor (the CS base a far transfer to `selector` loads); nil for the LDT, a
    /// selector past the GDT limit, or a descriptor that is not a present code segment.
    func codeSegmentBase(selector: UInt16, cpu: CPUContext, smm s: VCPU) -> UInt64? {
        let sr = s.syncedSregs
        if selector == sr.cs.selector { return sr.cs.base }
        let index = UInt64(selector & ~7)
        guard selector & 4 == 0, index != 0, index + 7 <= UInt64(sr.gdt.limit),
            let d = readLinear((sr.gdt.base &+ index) & 0xFFFF_FFFF, count: 8, smm: s, cpu: cpu),
            d[5] & 0x98 == 0x98
        else { return nil }
        return UInt64(d[2]) | UInt64(d[3]) << 8 | UInt64(d[4]) << 16 | UInt64(d[7]) << 24
    }

    /// At the guest's #UD handler entry: whether the #UD came from an RSM (then performed). The exception frame
    /// (SDM Vol. 3A §6.12.1) is on the handler's stack: IP/CS in real mode, EIP/CS in protected mode, RIP/CS in
    /// long mode.
    private func udHandlerReachedFromRSM(_ cpu: CPUContext, smm s: VCPU) throws -> Bool {
        let regs = s.syncedRegs
        let sr = s.syncedSregs
        let faultPC: UInt64
        if sr.cr0 & X86.CR0.pe == 0 {
            let sp = sr.ss.base &+ (sr.ss.db != 0 ? regs.rsp & 0xFFFF_FFFF : regs.rsp & 0xFFFF)
            guard let f = machine.memory.fetch(sp & 0xFFFF_FFFF, count: 4) else { return false }
            let ip = UInt64(f[0]) | UInt64(f[1]) << 8
            let cs = UInt64(f[2]) | UInt64(f[3]) << 8
            let smbase = machine.lock.withLock { cpu.smbase }
            let csBase = cs == (UInt64(smbase) >> 4) & 0xFFFF ? UInt64(smbase) : cs << 4
            faultPC = (csBase &+ ip) & 0xFFFF_FFFF
        } else if sr.efer & X86.EFER.lma != 0 {
            guard let f = readLinear(regs.rsp, count: 8, smm: s, cpu: cpu) else { return false }
            faultPC = f.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        } else {
            let sp = (sr.ss.base &+ (sr.ss.db != 0 ? regs.rsp & 0xFFFF_FFFF : regs.rsp & 0xFFFF)) & 0xFFFF_FFFF
            guard let f = readLinear(sp, count: 8, smm: s, cpu: cpu) else { return false }
            let eip = UInt64(f[0]) | UInt64(f[1]) << 8 | UInt64(f[2]) << 16 | UInt64(f[3]) << 24
            guard let csBase = codeSegmentBase(selector: UInt16(f[4]) | UInt16(f[5]) << 8, cpu: cpu, smm: s) else {
                return false
            }
            faultPC = (csBase &+ eip) & 0xFFFF_FFFF
        }
        guard let b = readLinear(faultPC, count: SMMCodeWatch.maxInstructionLength, smm: s, cpu: cpu),
            SMMCodeWatch.classify(b, code64: Self.is64BitCode(sr)) == .rsm
        else { return false }
        noteMissedRSM(cpu, "at 0x\(String(faultPC, radix: 16)) reached the guest's #UD handler")
        try performRSM(cpu, smm: s)
        return true
    }

    /// An RSM that no breakpoint caught (found through its #UD or triple fault): this CPU single-steps from its
    /// next SMI on.
    func noteMissedRSM(_ cpu: CPUContext, _ how: String) {
        let p = perCPU[cpu.index]
        p.stepOnly = true
        if machine.config.trace {
            machine.traceLine("cpu\(cpu.index) RSM outside the scanned SMM code \(how): single-stepping from now on")
        }
    }
}
