// SPDX-License-Identifier: MIT
import CKVM
import GuestFirmware
import Testing

@testable import MiniVMM

/// The decoding behind the emulated backend's RSM/SIDT/LIDT watch, without KVM.
struct SMMCodeWatchDecodeTests {
    static func candidates(_ bytes: [UInt8], base: UInt64 = 0x1000, limit: Int = 4) -> [UInt64]? {
        var out: [UInt64] = []
        let fits = bytes.withUnsafeBytes {
            SMMCodeWatch.collectCandidates($0, base: base, limit: limit, into: &out)
        }
        return fits ? out.sorted() : nil
    }

    /// The TSEG entry stubs the firmware writes differ only in the 32-bit displacement of their jump to the shared
    /// exit, (max - i) * tile - (MINIVMM_SMM_STUB_EXIT_REL32 + 4) for CPU i. Around it sit the jump's `66 E9` and the
    /// monarch's `B8` (MOV AX, imm16): for every CPU count the firmware allows, no displacement forms an RSM, SIDT
    /// or LIDT the scan would count, so the TSEG holds one RSM site however many CPUs there are.
    @Test func stubExitDisplacementsHoldNoWatchedOpcode() {
        let tile = Int(MINIVMM_SMM_TILE)
        let back = Int(MINIVMM_SMM_STUB_EXIT_REL32) + 4
        for left in 1...Int(MINIVMM_MAX_CPUS_LIMIT) {
            let rel = UInt32(left * tile - back)
            let bytes: [UInt8] =
                [0x66, 0xE9] + (0..<4).map { UInt8(truncatingIfNeeded: rel >> (8 * UInt32($0))) } + [0xB8]
            #expect(Self.candidates(bytes) == [], "displacement 0x\(String(rel, radix: 16))")
        }
    }

    @Test func classifiesRSMSIDTLIDTWithPrefixes() {
        #expect(SMMCodeWatch.classify([0x0F, 0xAA], code64: false) == .rsm)
        #expect(SMMCodeWatch.classify([0x66, 0x2E, 0x0F, 0xAA], code64: false) == .rsm)
        #expect(SMMCodeWatch.classify([0x48, 0x0F, 0xAA], code64: true) == .rsm)
        // Outside 64-bit code 0x48 is DEC EAX, not a prefix.
        #expect(SMMCodeWatch.classify([0x48, 0x0F, 0xAA], code64: false) == .other)
        #expect(SMMCodeWatch.classify([0x0F, 0x01, 0x0E, 0x00, 0x81], code64: false) == .sidt(modrm: 2))
        #expect(SMMCodeWatch.classify([0x67, 0x0F, 0x01, 0x0D, 0, 0, 0, 0], code64: false) == .sidt(modrm: 3))
        #expect(SMMCodeWatch.classify([0x0F, 0x01, 0x1D, 0, 0, 0, 0], code64: false) == .lidt)
        // LGDT (/2) and the register forms (mod 3: MONITOR, CLAC...) are not watched.
        #expect(SMMCodeWatch.classify([0x0F, 0x01, 0x16, 0, 0], code64: false) == .other)
        #expect(SMMCodeWatch.classify([0x0F, 0x01, 0xC8], code64: false) == .other)
        #expect(SMMCodeWatch.classify([0x0F], code64: false) == .other)
        #expect(SMMCodeWatch.classify([], code64: false) == .other)
    }

    /// The instructions after which the VMM loads TF again while single-stepping (KVM's emulator drops it).
    @Test func instructionsKVMMayEmulate() {
        let emulated: [[UInt8]] = [
            [0x0F, 0x20, 0xE0],  // mov eax, cr4
            [0x0F, 0x22, 0xC0],  // mov cr0, eax
            [0x0F, 0x21, 0xF0],  // mov eax, dr6
            [0x0F, 0x23, 0xF8],  // mov dr7, eax
            [0x66, 0x0F, 0x21, 0xF8],  // o32 mov eax, dr7 (16-bit code)
            [0x41, 0x0F, 0x23, 0xC0],  // mov dr0, r8 (REX.B)
            [0x0F, 0x06],  // clts
            [0x0F, 0x08],  // invd
            [0x0F, 0x01, 0xE0],  // smsw eax
            [0x0F, 0x01, 0x36, 0, 0x80],  // lmsw [0x8000]
            [0x0F, 0x01, 0x38],  // invlpg [eax]
            [0x6C], [0x66, 0x6D], [0xF3, 0x6E], [0xF3, 0x67, 0x6F],  // ins/outs, with rep and size prefixes
        ]
        for b in emulated {
            #expect(SMMCodeWatch.kvmMayEmulate(b, code64: b.first == 0x41), "\(b)")
        }
        let plain: [[UInt8]] = [
            [0x0F, 0x01, 0x0E, 0, 0x81],  // sidt (not intercepted)
            [0x0F, 0x01, 0x1D, 0, 0, 0, 0],  // lidt
            [0x0F, 0x01, 0xF8],  // swapgs (0F 01 /7 with mod 3 is not INVLPG)
            [0x0F, 0xAA],  // rsm (the VMM performs it)
            [0x0F, 0xA2],  // cpuid (KVM skips it through svm's next_rip or EMULTYPE_SKIP, TF kept)
            [0xEE], [0xE6, 0x80],  // out: kvm_fast_pio, TF kept
            [0x0F, 0x09],  // wbinvd: kvm_emulate_wbinvd skips it
            [0x89, 0xC0], [0x0F], [0x66], [],
            [0x48, 0x0F, 0x20, 0xE0],  // outside 64-bit code 0x48 is DEC EAX, an instruction of its own
        ]
        for b in plain {
            #expect(!SMMCodeWatch.kvmMayEmulate(b, code64: false), "\(b)")
        }
        #expect(SMMCodeWatch.kvmMayEmulate([0x48, 0x0F, 0x20, 0xE0], code64: true))  // mov rax, cr4
    }

    /// POPF/IRET load the flags image the VMM cleared TF in; INT n/INT3/INTO/INT1 clear TF entering the handler.
    @Test func instructionsThatReloadFlags() {
        for b: [UInt8] in [[0x9D], [0x66, 0x9D], [0xCF], [0x66, 0xCF], [0xCD, 0x10], [0xCC], [0xCE], [0xF1]] {
            #expect(SMMCodeWatch.reloadsFlags(b, code64: false), "\(b)")
        }
        #expect(SMMCodeWatch.reloadsFlags([0x48, 0xCF], code64: true))  // iretq
        for b: [UInt8] in [[0x9C], [0x90], [0xC3], [0xCB], [0x0F, 0xAA], [0x48, 0xCF], []] {
            #expect(!SMMCodeWatch.reloadsFlags(b, code64: false), "\(b)")  // 48 CF outside 64-bit code: DEC EAX
        }
    }

    @Test func candidatesIncludeEveryPrefixStart() {
        // mov dx, 0x604 (BA 04 06) out dx, al (EE) o32 cs: rsm
        #expect(Self.candidates([0xBA, 0x04, 0x06, 0xEE, 0x66, 0x2E, 0x0F, 0xAA]) == [0x1004, 0x1005, 0x1006])
        // SIDT and LIDT count, LGDT does not; an escape at the very end is not an instruction.
        #expect(
            Self.candidates([0x0F, 0x01, 0x0E, 0, 0, 0x0F, 0x01, 0x16, 0, 0, 0x0F, 0x01, 0x1D, 0x0F]) == [
                0x1000, 0x100A,
            ])
        #expect(Self.candidates([UInt8](repeating: 0, count: 64)) == [])
    }

    @Test func moreCandidatesThanSlotsIsNil() {
        let five = [UInt8]([0x0F, 0xAA, 0x90]).repeated(5)
        #expect(Self.candidates(five) == nil)
        #expect(Self.candidates(five, limit: 5)?.count == 5)
        // A run of prefixes before RSM: each start is a candidate.
        #expect(Self.candidates([0x66, 0x66, 0x66, 0x66, 0x0F, 0xAA]) == nil)
    }

    static func realMode(ds: UInt64 = 0, es: UInt64 = 0x30000, limit: UInt32 = 0xFFFF_FFFF) -> kvm_sregs {
        var s = kvm_sregs()
        func seg(_ base: UInt64) -> kvm_segment {
            var g = kvm_segment()
            g.base = base
            g.selector = UInt16(truncatingIfNeeded: base >> 4)
            g.limit = limit
            g.type = 3
            g.present = 1
            g.s = 1
            return g
        }
        s.ds = seg(ds)
        s.es = seg(es)
        s.ss = seg(0)
        s.fs = seg(0)
        s.gs = seg(0)
        s.cs = seg(0x30000)
        s.cs.type = 0xB
        return s
    }

    @Test func realModeSIDTTargets() {
        var r = kvm_regs()
        let s = Self.realMode()
        // sidt [0x8300]: DS base 0.
        #expect(
            SMMCodeWatch.realModeSIDTTarget([0x0F, 0x01, 0x0E, 0x00, 0x83], modrm: 2, sregs: s, regs: r)! == (0x8300, 5)
        )
        // sidt es:[bx+si+0x10]
        r.rbx = 0x8300
        r.rsi = 0x20
        #expect(
            SMMCodeWatch.realModeSIDTTarget([0x26, 0x0F, 0x01, 0x48, 0x10], modrm: 3, sregs: s, regs: r)!
                == (0x38330, 5))
        // a32 sidt [eax*4 + 0x100] with a SIB byte (04 85 disp32).
        r.rax = 0x1000
        #expect(
            SMMCodeWatch.realModeSIDTTarget(
                [0x67, 0x0F, 0x01, 0x0C, 0x85, 0x00, 0x01, 0x00, 0x00], modrm: 3, sregs: s, regs: r)! == (0x4100, 9))
        // sidt [bp-2]: SS, and the 16-bit offset wraps to 0xFFFE.
        r.rbp = 0
        #expect(
            SMMCodeWatch.realModeSIDTTarget([0x0F, 0x01, 0x4E, 0xFE], modrm: 2, sregs: s, regs: r)! == (0xFFFE, 4))
    }

    @Test func realModeSIDTOutsideTheLimitFaults() {
        let s = Self.realMode(limit: 0xFFFF)
        let r = kvm_regs()
        // [0xFFFC, 0x10002) passes a 64 KiB limit: KVM's __linearize raises #GP, so no target.
        #expect(SMMCodeWatch.realModeSIDTTarget([0x0F, 0x01, 0x0E, 0xFC, 0xFF], modrm: 2, sregs: s, regs: r) == nil)
        #expect(
            SMMCodeWatch.realModeSIDTTarget([0x0F, 0x01, 0x0E, 0xFA, 0xFF], modrm: 2, sregs: s, regs: r)! == (0xFFFA, 5)
        )
        var ro = s
        ro.ds.type = 1  // read-only data
        #expect(SMMCodeWatch.realModeSIDTTarget([0x0F, 0x01, 0x0E, 0, 0], modrm: 2, sregs: ro, regs: r) == nil)
        // Truncated instruction bytes: no target.
        #expect(SMMCodeWatch.realModeSIDTTarget([0x0F, 0x01, 0x0E, 0], modrm: 2, sregs: s, regs: r) == nil)
    }
}

extension Array {
    fileprivate func repeated(_ n: Int) -> [Element] { (0..<n).flatMap { _ in self } }
}

/// ``SteppedFlagsImage``: the PUSHF decode, the stack top it pushed to, and the TF bit it clears.
@Suite("Stepped flags image")
struct SteppedFlagsImageTests {
    @Test("PUSHF is 9C after any prefixes; anything else is not")
    func pushfDecode() {
        #expect(SteppedFlagsImage.pushfLength([0x9C], code64: false) == 1)
        #expect(SteppedFlagsImage.pushfLength([0x66, 0x9C, 0x90], code64: false) == 2)
        #expect(SteppedFlagsImage.pushfLength([0x48, 0x9C], code64: true) == 2)
        #expect(SteppedFlagsImage.pushfLength([0x48, 0x9C], code64: false) == nil)  // DEC EAX outside 64-bit code
        #expect(SteppedFlagsImage.pushfLength([0x9D], code64: false) == nil)
        #expect(SteppedFlagsImage.pushfLength([0x66], code64: false) == nil)
        #expect(SteppedFlagsImage.pushfLength([], code64: false) == nil)
    }

    @Test("the stack top: SP with SS.B 0, ESP with SS.B 1, RSP in 64-bit code")
    func stackTop() {
        var regs = kvm_regs()
        regs.rsp = 0x0001_6EFC
        var sr = kvm_sregs()
        sr.ss.base = 0x30000
        #expect(SteppedFlagsImage.stackTop(regs, sr) == 0x36EFC)
        sr.ss.db = 1
        #expect(SteppedFlagsImage.stackTop(regs, sr) == 0x46EFC)
        regs.rsp = 0x1_0000_0000_1000
        sr.efer = X86.EFER.lma | X86.EFER.lme
        sr.cs.l = 1
        #expect(SteppedFlagsImage.stackTop(regs, sr) == 0x1_0000_0000_1000)
    }

    @Test("TF (bit 8) leaves the pushed image's second byte; a clear one is left alone")
    func withoutTF() {
        #expect(SteppedFlagsImage.withoutTF(0x01) == 0x00)
        #expect(SteppedFlagsImage.withoutTF(0x03) == 0x02)
        #expect(SteppedFlagsImage.withoutTF(0x02) == nil)
    }
}

/// ``SteppedFlagsImage/boundary(_:_:stepping:memory:)`` over guest RAM, as the step exits report the boundaries.
@Suite("Stepped flags image boundaries")
struct SteppedFlagsImageBoundaryTests {
    /// Real-mode SMM code at 3000:8010 = PUSHFD (66 9C), SS base 0, SP 0x6F00 (SS.B 0).
    static func setUp() throws -> (GuestMemory, kvm_regs, kvm_sregs) {
        let m = try GuestMemory(ramSize: 2 << 20, firmware: [UInt8](repeating: 0xF4, count: 4096))
        m.write([0x66, 0x9C, 0x90], at: 0x38010)
        var regs = kvm_regs()
        regs.rip = 0x8010
        regs.rsp = 0x6F00
        var sr = kvm_sregs()
        sr.cs.base = 0x30000
        return (m, regs, sr)
    }

    @Test("the image a stepped PUSHF pushed loses TF at the next step boundary, and only then")
    func clearsAfterPUSHF() throws {
        var (m, regs, sr) = try Self.setUp()
        var image = SteppedFlagsImage()
        image.boundary(regs, sr, stepping: true, memory: m)
        #expect(image.pending?.length == 2)
        // A kick before the PUSHF ran: still pending, nothing written.
        let early = image.boundary(regs, sr, stepping: true, memory: m)
        #expect(!early)
        // The PUSHF ran: 0x00000102 at SS:SP.
        m.write([0x02, 0x01, 0x00, 0x00], at: 0x6EFC)
        regs.rip = 0x8012
        regs.rsp = 0x6EFC
        sr.ss.base = 0
        sr.cs.base = 0x30000
        let wrote = image.boundary(regs, sr, stepping: true, memory: m)
        #expect(wrote)
        #expect(m.read(0x6EFC, count: 4) == [0x02, 0x00, 0x00, 0x00])
        #expect(image.pending == nil, "NOP at the new boundary")
    }

    @Test("nothing is written when the code was not stepped or did not run the PUSHF next")
    func leavesOtherwise() throws {
        var (m, regs, sr) = try Self.setUp()
        var image = SteppedFlagsImage()
        image.boundary(regs, sr, stepping: false, memory: m)
        #expect(image.pending == nil, "not stepping: no TF to hide")
        image.boundary(regs, sr, stepping: true, memory: m)
        m.write([0x02, 0x01], at: 0x6EFC)
        regs.rsp = 0x6EFC
        regs.rip = 0x9000  // elsewhere (an exception, RSM): the PUSHF's image is not at the stack top
        let wrote = image.boundary(regs, sr, stepping: true, memory: m)
        #expect(!wrote)
        #expect(m.read(0x6EFC, count: 2) == [0x02, 0x01])
        sr.cr0 = X86.CR0.pg | X86.CR0.pe  // paging: linear is not physical
        regs.rip = 0x8010
        image.boundary(regs, sr, stepping: true, memory: m)
        #expect(image.pending == nil)
    }
}
