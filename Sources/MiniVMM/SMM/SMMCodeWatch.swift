// SPDX-License-Identifier: MIT
import CKVM

#if canImport(Glibc)
    import Glibc
#endif

/// The few x86 instructions the emulated backend must see before the CPU executes them in SMM: RSM (the VMM
/// performs it: this host's KVM has no SMM, its `em_rsm` raises #UD), SIDT (the guest-visible IDTR is KVM's
/// SMI-entry value, base 0 limit 0, while the vCPU really runs with the VMM's trap IVT) and LIDT (the guest
/// takes over its IDTR). Decoding follows SDM Vol. 2 §2.1 (prefixes, ModR/M, SIB) and KVM's emulator
/// (`arch/x86/kvm/emulate.c`: `decode_modrm`, `__linearize`, `emulate_store_desc_ptr`).
enum SMMWatchedInstruction: Equatable {
    case rsm
    /// `SIDT m` (0F 01 /1, mod ≠ 3); `modrm` indexes the ModR/M byte in the fetched bytes.
    case sidt(modrm: Int)
    /// `LIDT m` (0F 01 /3, mod ≠ 3).
    case lidt
    case other
}

/// Legacy and REX prefixes of one instruction.
struct X86Prefixes: Equatable {
    var operandSize = false
    var addressSize = false
    /// Segment override: 0 ES, 1 CS, 2 SS, 3 DS, 4 FS, 5 GS.
    var segment: Int?
    var rex: UInt8 = 0
    /// Bytes of prefixes before the opcode.
    var count = 0
}

enum SMMCodeWatch {
    /// Legacy prefixes (SDM Vol. 2 §2.1.1).
    static func isLegacyPrefix(_ b: UInt8) -> Bool {
        switch b {
        case 0x66, 0x67, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0, 0xF2, 0xF3: true
        default: false
        }
    }

    /// The longest x86 instruction.
    static let maxInstructionLength = 15

    /// Decodes the prefixes at the start of `bytes`; REX counts only in 64-bit code and only as the last prefix
    /// (a REX followed by a legacy prefix is ignored, as the CPU does).
    static func prefixes(_ bytes: [UInt8], code64: Bool) -> X86Prefixes {
        var p = X86Prefixes()
        var i = 0
        while i < bytes.count, i < maxInstructionLength - 1 {
            let b = bytes[i]
            if isLegacyPrefix(b) {
                p.rex = 0
                switch b {
                case 0x66: p.operandSize = true
                case 0x67: p.addressSize = true
                case 0x26: p.segment = 0
                case 0x2E: p.segment = 1
                case 0x36: p.segment = 2
                case 0x3E: p.segment = 3
                case 0x64: p.segment = 4
                case 0x65: p.segment = 5
                default: break
                }
            } else if code64 && b & 0xF0 == 0x40 {
                p.rex = b
            } else {
                break
            }
            i += 1
        }
        p.count = i
        return p
    }

    /// What the instruction starting at `bytes` is, for the kinds the VMM watches.
    static func classify(_ bytes: [UInt8], code64: Bool) -> SMMWatchedInstruction {
        let p = prefixes(bytes, code64: code64)
        let i = p.count
        guard i + 1 < bytes.count, bytes[i] == 0x0F else { return .other }
        if bytes[i + 1] == 0xAA { return .rsm }
        guard bytes[i + 1] == 0x01, i + 2 < bytes.count else { return .other }
        let modrm = bytes[i + 2]
        guard modrm >> 6 != 3 else { return .other }
        switch (modrm >> 3) & 7 {
        case 1: return .sidt(modrm: i + 2)
        case 3: return .lidt
        default: return .other
        }
    }

    /// Whether KVM may complete the instruction at the start of `bytes` through its instruction emulator
    /// (`x86_emulate_instruction`) when the CPU intercepts it: MOV to/from CR (0F 20, 0F 22), MOV to/from DR
    /// (0F 21, 0F 23), CLTS (0F 06), INVD (0F 08), SMSW/LMSW (0F 01 /4, /6), INVLPG (0F 01 /7 with a memory
    /// operand) and string I/O (INS/OUTS, 6C–6F). SVM intercepts them (CR4 and DR accesses always, CR0 while the
    /// guest's CR0 differs from the hardware one, INVD, string I/O) and, on a CPU without decode assists — the
    /// nested lane's QEMU TCG — `cr_interception`, `dr_interception` and `io_interception` hand them to the
    /// emulator. Its writeback ends in `__kvm_set_rflags(vcpu, ctxt->eflags)`, with the RFLAGS read through
    /// `kvm_get_rflags`, which hides TF under `KVM_GUESTDBG_SINGLESTEP`; `__kvm_set_rflags` adds TF back only at
    /// `singlestep_rip`. So the step after such an instruction is still reported (`kvm_vcpu_do_singlestep`), but
    /// the trap flag the VMM loaded is gone and the next instructions run unseen.
    static func kvmMayEmulate(_ bytes: [UInt8], code64: Bool) -> Bool {
        let p = prefixes(bytes, code64: code64)
        let i = p.count
        guard i < bytes.count else { return false }
        if (0x6C...0x6F).contains(bytes[i]) { return true }
        guard i + 1 < bytes.count, bytes[i] == 0x0F else { return false }
        switch bytes[i + 1] {
        case 0x20...0x23, 0x06, 0x08: return true
        case 0x01:
            guard i + 2 < bytes.count else { return false }
            let modrm = bytes[i + 2]
            switch (modrm >> 3) & 7 {
            case 4, 6: return true
            case 7: return modrm >> 6 != 3
            default: return false
            }
        default: return false
        }
    }

    /// Whether the instruction at the start of `bytes` loads RFLAGS.TF from memory or clears it on its way to a
    /// handler, so that the stepping's TF is gone after it: POPF (9D) and IRET (CF) load the image the guest
    /// pushed, whose TF the VMM cleared (``SteppedFlagsImage``); INT n, INT3, INTO and INT1 (CD, CC, CE, F1) clear TF
    /// when they enter the handler (SDM Vol. 3A §6.12.1.3, §20.1.4 for real mode).
    static func reloadsFlags(_ bytes: [UInt8], code64: Bool) -> Bool {
        let i = prefixes(bytes, code64: code64).count
        guard i < bytes.count else { return false }
        switch bytes[i] {
        case 0x9D, 0xCF, 0xCC, 0xCD, 0xCE, 0xF1: return true
        default: return false
        }
    }

    /// Whether the two or three bytes at `p` (the 0F escape) open an instruction the VMM watches.
    @inline(__always)
    static func isWatchedOpcode(_ b: UnsafeRawBufferPointer, _ p: Int) -> Bool {
        guard p + 1 < b.count, b[p] == 0x0F else { return false }
        if b[p + 1] == 0xAA { return true }
        guard b[p + 1] == 0x01, p + 2 < b.count else { return false }
        let modrm = b[p + 2]
        let reg = (modrm >> 3) & 7
        return modrm >> 6 != 3 && (reg == 1 || reg == 3)
    }

    /// Collects into `out` (linear = `base` + offset) every address where an instruction that is RSM, SIDT or
    /// LIDT could start in `b`: each such opcode, and each start reached by walking back over legacy or REX
    /// prefixes (an instruction is at most 15 bytes). Returns false, as soon as it is known, when there are more
    /// than `limit` in total: then the breakpoints cannot cover them all.
    static func collectCandidates(_ b: UnsafeRawBufferPointer, base: UInt64, limit: Int, into out: inout [UInt64])
        -> Bool
    {
        guard let start = b.baseAddress, b.count > 1 else { return true }
        var offset = 0
        while offset < b.count {
            // SAFETY: memchr reads at most b.count - offset bytes from inside `b`.
            guard let hit = memchr(start + offset, 0x0F, b.count - offset) else { break }
            let p = start.distance(to: UnsafeRawPointer(hit))
            offset = p + 1
            guard isWatchedOpcode(b, p) else { continue }
            var s = p
            while true {
                let a = base &+ UInt64(s)
                if !out.contains(a) {
                    if out.count == limit { return false }
                    out.append(a)
                }
                guard s > 0, p - (s - 1) < maxInstructionLength - 2 else { break }
                let prev = b[s - 1]
                guard isLegacyPrefix(prev) || prev & 0xF0 == 0x40 else { break }
                s -= 1
            }
        }
        return true
    }

    /// The segment register a ModR/M memory operand uses: the override, else SS for (E)BP/(E)SP-based
    /// addressing, else DS (SDM Vol. 1 §3.7.4).
    static func segment(_ s: kvm_sregs, index: Int) -> kvm_segment {
        switch index {
        case 0: s.es
        case 1: s.cs
        case 2: s.ss
        case 4: s.fs
        case 5: s.gs
        default: s.ds
        }
    }

    /// The offset (effective address, before the segment base) of the memory operand whose ModR/M byte is at
    /// `bytes[m]`, the default segment (2 = SS, 3 = DS) and the index just past the operand (the instruction's
    /// length when nothing follows it, as for SIDT); nil when the bytes end early. 16-bit addressing
    /// follows SDM Vol. 2 Table 2-1, 32-bit Table 2-2/2-3; the result wraps at the address size, as
    /// KVM's `decode_modrm` (`ctxt->modrm_ea` masked by `ad_bytes`) does.
    static func effectiveAddress(_ bytes: [UInt8], modrm m: Int, address32: Bool, regs: kvm_regs) -> (
        ea: UInt64, segment: Int, end: Int
    )? {
        guard m < bytes.count else { return nil }
        let modrm = bytes[m]
        let mod = modrm >> 6
        let rm = modrm & 7
        func u8(_ i: Int) -> UInt64? { i < bytes.count ? UInt64(bytes[i]) : nil }
        func s8(_ i: Int) -> UInt64? { i < bytes.count ? UInt64(bitPattern: Int64(Int8(bitPattern: bytes[i]))) : nil }
        func u16(_ i: Int) -> UInt64? {
            guard let lo = u8(i), let hi = u8(i + 1) else { return nil }
            return lo | hi << 8
        }
        func s32(_ i: Int) -> UInt64? {
            guard let lo = u16(i), let hi = u16(i + 2) else { return nil }
            return UInt64(bitPattern: Int64(Int32(bitPattern: UInt32(lo | hi << 16))))
        }
        if !address32 {
            let bx = regs.rbx & 0xFFFF
            let bp = regs.rbp & 0xFFFF
            let si = regs.rsi & 0xFFFF
            let di = regs.rdi & 0xFFFF
            var ea: UInt64
            var seg = 3
            var end = m + 1
            switch rm {
            case 0: ea = bx &+ si
            case 1: ea = bx &+ di
            case 2: (ea, seg) = (bp &+ si, 2)
            case 3: (ea, seg) = (bp &+ di, 2)
            case 4: ea = si
            case 5: ea = di
            case 6: (ea, seg) = mod == 0 ? (0, 3) : (bp, 2)
            default: ea = bx
            }
            switch mod {
            case 0 where rm == 6:
                guard let d = u16(m + 1) else { return nil }
                (ea, end) = (d, m + 3)
            case 1:
                guard let d = s8(m + 1) else { return nil }
                (ea, end) = (ea &+ d, m + 2)
            case 2:
                guard let d = u16(m + 1) else { return nil }
                (ea, end) = (ea &+ d, m + 3)
            default: break
            }
            return (ea & 0xFFFF, seg, end)
        }
        func reg32(_ r: UInt8) -> UInt64 {
            let v: UInt64
            switch r {
            case 0: v = regs.rax
            case 1: v = regs.rcx
            case 2: v = regs.rdx
            case 3: v = regs.rbx
            case 4: v = regs.rsp
            case 5: v = regs.rbp
            case 6: v = regs.rsi
            default: v = regs.rdi
            }
            return v & 0xFFFF_FFFF
        }
        var ea: UInt64 = 0
        var seg = 3
        var next = m + 1
        if rm == 4 {
            guard let sib = u8(m + 1).map(UInt8.init) else { return nil }
            next += 1
            let scale = sib >> 6
            let index = (sib >> 3) & 7
            let base = sib & 7
            if index != 4 { ea = reg32(index) << UInt64(scale) }
            if base == 5 && mod == 0 {
                guard let d = s32(next) else { return nil }
                ea = ea &+ d
                next += 4
            } else {
                ea = ea &+ reg32(base)
                if base == 4 || base == 5 { seg = 2 }
            }
        } else if rm == 5 && mod == 0 {
            guard let d = s32(next) else { return nil }
            ea = d
            next += 4
        } else {
            ea = reg32(rm)
            if rm == 5 { seg = 2 }
        }
        switch mod {
        case 1:
            guard let d = s8(next) else { return nil }
            (ea, next) = (ea &+ d, next + 1)
        case 2:
            guard let d = s32(next) else { return nil }
            (ea, next) = (ea &+ d, next + 4)
        default: break
        }
        return (ea & 0xFFFF_FFFF, seg, next)
    }

    /// Where a real-mode (CR0.PE = 0) `SIDT m` whose ModR/M byte is `bytes[m]` stores its 6 bytes: the linear
    /// (= physical) address, or nil when KVM's `__linearize` would fault (write to a read-only segment, outside
    /// the limit of an expand-up or expand-down segment): then the store must fault as the CPU's own would.
    static func realModeSIDTTarget(_ bytes: [UInt8], modrm m: Int, sregs: kvm_sregs, regs: kvm_regs) -> (
        linear: UInt64, length: Int
    )? {
        let p = prefixes(bytes, code64: false)
        let address32 = (sregs.cs.db != 0) != p.addressSize
        guard let (ea, defaultSeg, end) = effectiveAddress(bytes, modrm: m, address32: address32, regs: regs) else {
            return nil
        }
        let seg = segment(sregs, index: p.segment ?? defaultSeg)
        let size: UInt64 = 6
        // __linearize (non-64-bit modes): writes need a writable segment (type bit 1; code segments are
        // writable in real mode), then the limit check on [ea, ea + size).
        guard seg.type & 2 != 0 else { return nil }
        let limit = UInt64(seg.limit)
        if seg.type & 8 == 0 && seg.type & 4 != 0 {
            // Expand-down: valid offsets are (limit, 0xFFFF or 0xFFFFFFFF].
            let top: UInt64 = seg.db != 0 ? 0xFFFF_FFFF : 0xFFFF
            guard ea > limit, ea <= top, top - ea >= size - 1 else { return nil }
        } else {
            guard ea <= limit, limit - ea >= size - 1 else { return nil }
        }
        return ((seg.base &+ ea) & 0xFFFF_FFFF, end)
    }
}
