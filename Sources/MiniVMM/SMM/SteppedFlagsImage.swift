// SPDX-License-Identifier: MIT
import CKVM

/// The RFLAGS image a guest `PUSHF` pushes while the VMM single-steps it. `KVM_GUESTDBG_SINGLESTEP` runs the guest
/// with RFLAGS.TF set (x86.c `__kvm_set_rflags`: `rflags |= X86_EFLAGS_TF` while stepping) and hides it only from the
/// VMM's view (`kvm_get_rflags`); `PUSHF` is not intercepted, so guest code would read TF = 1 where the CPU it models
/// has TF = 0 (in SMM: KVM's `enter_smm` loads RFLAGS = 0x2, reference/kvm-smm.md §2). The VMM sees the `PUSHF` at
/// the step boundary before it runs and clears TF in the image it pushed at the next boundary: bit 8 of the value at
/// the new stack top, i.e. bit 0 of its second byte in every operand size (SDM Vol. 2B, PUSHF: the low 16 bits,
/// EFLAGS, or RFLAGS, little endian).
///
/// Not covered (the guest would still see TF): an exception or interrupt frame pushed while stepping, `SYSCALL`'s
/// R11, a `PUSHF` with paging on (its stack is not translated here) or outside RAM, and a guest that set TF itself
/// while the VMM steps it (its TF is cleared too: the VMM's view cannot tell the two apart).
struct SteppedFlagsImage {
    /// The `PUSHF` at the last boundary (linear address, length), not yet known to have run.
    var pending: (address: UInt64, length: UInt64)?

    /// A step boundary of code the VMM single-steps (`stepping`; false once it no longer does, e.g. after RSM):
    /// when the last boundary's `PUSHF` has just run (RIP right past it, in the same single-stepped code), TF
    /// leaves the image it pushed; a `PUSHF` at this boundary is remembered. Only with paging off, where linear
    /// addresses are physical. Returns whether it wrote guest memory.
    @discardableResult
    mutating func boundary(_ regs: kvm_regs, _ sr: kvm_sregs, stepping: Bool, memory: GuestMemory) -> Bool {
        let pc = EmulatedSMMBackend.linearRIP(regs, sr)
        let paging = sr.cr0 & X86.CR0.pg != 0
        var wrote = false
        if let p = pending {
            if pc == p.address { return false }  // not run yet (an exit before it, e.g. a kick)
            pending = nil
            let flagsByte = Self.stackTop(regs, sr) &+ 1
            if stepping && !paging && pc == p.address &+ p.length,
                let b = memory.read(flagsByte, count: 1)?.first, let cleared = Self.withoutTF(b)
            {
                wrote = memory.write([cleared], at: flagsByte)
            }
        }
        guard stepping && !paging else { return wrote }
        if let code = memory.read(pc, count: SMMCodeWatch.maxInstructionLength) ?? memory.read(pc, count: 1),
            let n = Self.pushfLength(code, code64: EmulatedSMMBackend.is64BitCode(sr))
        {
            pending = (pc, n)
        }
        return wrote
    }

    /// `PUSHF` (9C) after any prefixes: its length, or nil when `code` starts with another instruction.
    static func pushfLength(_ code: [UInt8], code64: Bool) -> UInt64? {
        let p = SMMCodeWatch.prefixes(code, code64: code64)
        guard p.count < code.count, code[p.count] == 0x9C else { return nil }
        return UInt64(p.count + 1)
    }

    /// The linear address of the stack top: RSP in 64-bit code; otherwise SS base plus ESP (SS.B = 1) or SP
    /// (SS.B = 0, as at SMM entry), in 32 bits.
    static func stackTop(_ regs: kvm_regs, _ sr: kvm_sregs) -> UInt64 {
        if sr.efer & X86.EFER.lma != 0 && sr.cs.l != 0 { return regs.rsp }
        let sp = sr.ss.db != 0 ? regs.rsp & 0xFFFF_FFFF : regs.rsp & 0xFFFF
        return (sr.ss.base &+ sp) & 0xFFFF_FFFF
    }

    /// The pushed image's second byte (bits 15:8) without TF, or nil when TF is clear already.
    static func withoutTF(_ byte1: UInt8) -> UInt8? {
        byte1 & 1 != 0 ? byte1 & ~1 : nil
    }
}
