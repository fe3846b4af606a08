// SPDX-License-Identifier: MIT
import CKVM
import GuestFirmware
import KVMBridge
import Testing

@testable import MiniVMM

/// The kvm backend's exit-granularity SMI accounting (issue 9, gap 4), without KVM: two looks at KVM's SMM flag,
/// MSR 0x9E and MSR_SMI_COUNT give the SMIs between them, or say what cannot be known.
struct KVMSMIAccountingTests {
    static let base = KVMSMIAccounting.countBase

    static func look(_ inSMM: Bool, _ smbase: UInt32, _ count: UInt64?) -> KVMSMMLook {
        KVMSMMLook(inSMM: inSMM, smbase: smbase, smiCount: count)
    }

    @Test("no SMI between two exits: nothing, and no problem")
    func quiet() {
        var a = KVMSMIAccounting(last: Self.look(false, 0x30000, Self.base))
        let o = a.account(Self.look(false, 0x30000, Self.base))
        #expect(o == KVMSMIAccounting.Outcome())
        #expect(a.last == Self.look(false, 0x30000, Self.base))
    }

    @Test("a relocation SMI that left no exit: counted once, entered at the old SMBASE, RSM loaded the new one")
    func unseenRelocation() {
        var a = KVMSMIAccounting(last: Self.look(false, 0x30000, Self.base))
        let o = a.account(Self.look(false, 0x7f0_0400, Self.base + 1))
        #expect(o.smis == [AccountedSMI(smbase: 0x30000, rsmSMBASE: 0x7f0_0400)])
        #expect(!o.opensSession && !o.closesSession && o.problems.isEmpty)
    }

    @Test("first exit inside SMM opens a session with MSR 0x9E as its SMBASE; the exit after RSM closes it")
    func sessionSeenInSMM() {
        var a = KVMSMIAccounting(last: Self.look(false, 0x30000, Self.base + 4))
        let open = a.account(Self.look(true, 0x30000, Self.base + 5))
        #expect(open.opensSession && open.smis == [AccountedSMI(smbase: 0x30000, rsmSMBASE: nil)])
        // Still inside: nothing new.
        #expect(a.account(Self.look(true, 0x30000, Self.base + 5)) == KVMSMIAccounting.Outcome())
        let close = a.account(Self.look(false, 0x7f0_0000, Self.base + 5))
        #expect(close.closesSession && close.closedSessionRSM == 0x7f0_0000 && close.smis.isEmpty)
        #expect(close.problems.isEmpty)
    }

    @Test("an unseen SMI before the one seen in SMM: the unseen one's RSM loaded the SMBASE the new one entered with")
    func unseenThenOpen() {
        var a = KVMSMIAccounting(last: Self.look(false, 0x30000, Self.base))
        let o = a.account(Self.look(true, 0x7f0_0000, Self.base + 2))
        #expect(
            o.smis == [
                AccountedSMI(smbase: 0x30000, rsmSMBASE: 0x7f0_0000), AccountedSMI(smbase: 0x7f0_0000, rsmSMBASE: nil),
            ])
        #expect(o.opensSession && o.problems.isEmpty)
    }

    @Test("two unseen SMIs between two exits: counted, their SMBASEs reported unobservable, none guessed")
    func twoUnseen() {
        var a = KVMSMIAccounting(last: Self.look(false, 0x30000, Self.base))
        let o = a.account(Self.look(false, 0x30000, Self.base + 2))
        #expect(o.smis.isEmpty && o.unobservableSMIs == 2)
        #expect(o.problems.count == 1 && o.problems[0].contains("unobservable"))
    }

    @Test("an RSM and then an unseen SMI: the open session's RSM is unobservable too")
    func closeThenUnseen() {
        var a = KVMSMIAccounting(last: Self.look(true, 0x7f0_0000, Self.base + 1))
        let o = a.account(Self.look(false, 0x7f0_0000, Self.base + 2))
        #expect(o.closesSession && o.closedSessionRSM == nil && o.unobservableSMIs == 1 && o.problems.count == 1)
    }

    @Test("an INIT zeroes KVM's count: below the floor it counts the SMIs since the INIT")
    func initResetsCount() {
        var a = KVMSMIAccounting(last: Self.look(false, 0x30000, Self.base + 7))
        let o = a.account(Self.look(false, 0x7f0_0800, 1))
        #expect(o.initSeen && o.smis == [AccountedSMI(smbase: 0x30000, rsmSMBASE: 0x7f0_0800)] && o.problems.isEmpty)
        // With no SMI since the INIT, a changed SMBASE proves SMIs before it that left no exit.
        var b = KVMSMIAccounting(last: Self.look(false, 0x30000, Self.base))
        let p = b.account(Self.look(false, 0x7f0_0800, 0))
        #expect(p.initSeen && p.smis.isEmpty && p.problems.count == 1 && p.problems[0].contains("INIT"))
    }

    @Test("SMBASE changed without any SMI counted is a problem; SMM without a counted SMI is one too")
    func inconsistencies() {
        var a = KVMSMIAccounting(last: Self.look(false, 0x30000, Self.base))
        #expect(a.account(Self.look(false, 0x40000, Self.base)).problems.count == 1)
        var b = KVMSMIAccounting(last: Self.look(false, 0x30000, Self.base))
        let o = b.account(Self.look(true, 0x30000, Self.base))
        #expect(o.problems.count == 1 && o.opensSession && o.smis.count == 1)
    }

    @Test("without MSR_SMI_COUNT only the SMM flag counts: entering is one SMI")
    func noCount() {
        var a = KVMSMIAccounting(last: Self.look(false, 0x30000, nil))
        #expect(a.account(Self.look(false, 0x30000, nil)).smis.isEmpty)
        let o = a.account(Self.look(true, 0x30000, nil))
        #expect(o.smis == [AccountedSMI(smbase: 0x30000, rsmSMBASE: nil)] && o.problems.isEmpty)
    }

    @Test("a huge count is reported, not enumerated")
    func hugeCount() {
        var a = KVMSMIAccounting(last: Self.look(false, 0x30000, Self.base))
        let o = a.account(Self.look(false, 0x30000, UInt64.max))
        #expect(o.smis.isEmpty && !o.problems.isEmpty)
    }
}

/// Which exits show an SMI at its entry point, and the local APIC page a hot-add RESET writes (gap 7).
struct KVMBackendPureTests {
    static let smbase: UInt32 = 0x7f0_0400

    @Test("the probe's OUT at SMBASE+0x8003/4 and the breakpoint at SMBASE+0x8000 are at entry; others are not")
    func atEntry() {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { buffer.deallocate() }
        let data = UnsafeRawBufferPointer(start: buffer, count: 1)
        let probe = VCPUExit.ioOut(port: UInt16(MINIVMM_PORT_SMM_ENTRY), size: 1, count: 1, data: data)
        let base = UInt64(Self.smbase)
        #expect(KVMSMMBackend.isAtEntry(probe, smbase: Self.smbase, csBase: base, rip: 0x8003))
        #expect(KVMSMMBackend.isAtEntry(probe, smbase: Self.smbase, csBase: base, rip: 0x8004))
        #expect(!KVMSMMBackend.isAtEntry(probe, smbase: Self.smbase, csBase: base, rip: 0x8040))
        #expect(!KVMSMMBackend.isAtEntry(probe, smbase: Self.smbase, csBase: 0x30000, rip: 0x8003))
        let other = VCPUExit.ioOut(port: 0x600, size: 1, count: 1, data: data)
        #expect(!KVMSMMBackend.isAtEntry(other, smbase: Self.smbase, csBase: base, rip: 0x8003))
        let bp = VCPUExit.debug(exception: 1, pc: base + 0x8000, dr6: 0xFFFF_0FF1, dr7: 0x401)
        #expect(KVMSMMBackend.isAtEntry(bp, smbase: Self.smbase, csBase: base, rip: 0x8000))
        let step = VCPUExit.debug(exception: 1, pc: base + 0x8000, dr6: 0xFFFF_4FF0, dr7: 0x400)
        #expect(!KVMSMMBackend.isAtEntry(step, smbase: Self.smbase, csBase: base, rip: 0x8000))
    }

    @Test(
        "a single-step exit one instruction past entry keeps the map exact only after an instruction that writes nothing"
    )
    func harmlessFirst() {
        // The entry probe: mov dx, 0x604 (16-bit code).
        #expect(KVMSMMBackend.harmlessFirstInstructionLength([0xBA, 0x04, 0x06, 0xEE, 0, 0]) == 3)
        #expect(KVMSMMBackend.harmlessFirstInstructionLength([0x66, 0xB8, 1, 2, 3, 4]) == 6)
        #expect(KVMSMMBackend.harmlessFirstInstructionLength([0xFA]) == 1)
        // mov [bx], ax; a stack push; an operand-size prefix on something else; nothing readable.
        #expect(KVMSMMBackend.harmlessFirstInstructionLength([0x89, 0x07, 0, 0, 0, 0]) == nil)
        #expect(KVMSMMBackend.harmlessFirstInstructionLength([0x50, 0, 0, 0, 0, 0]) == nil)
        #expect(KVMSMMBackend.harmlessFirstInstructionLength([0x66, 0x89, 0x07, 0, 0, 0]) == nil)
        #expect(KVMSMMBackend.harmlessFirstInstructionLength([]) == nil)
        #expect(KVMSMMBackend.harmlessFirstInstructionLength([0xBA, 0x04]) == nil)
    }

    static func reg(_ s: kvm_lapic_state, _ offset: Int) -> UInt32 {
        withUnsafeBytes(of: s.regs) { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }

    @Test("RESET's local APIC page: ID kept, version kept, LVTs masked, SVR 0xFF, DFR all ones, the rest zero")
    func lapicReset() {
        var old = kvm_lapic_state()
        withUnsafeMutableBytes(of: &old.regs) { page in
            for i in stride(from: 0, to: 1024, by: 4) {
                page.storeBytes(of: UInt32(0xA5A5_A5A5), toByteOffset: i, as: UInt32.self)
            }
            page.storeBytes(of: UInt32(0x0005_0014).littleEndian, toByteOffset: 0x30, as: UInt32.self)
        }
        let s = KVMSMMBackend.resetLAPICState(old, apicID: 7)
        #expect(Self.reg(s, 0x20) == 7 << 24)
        #expect(Self.reg(s, 0x30) == 0x0005_0014)
        #expect(Self.reg(s, 0xF0) == 0xFF)
        #expect(Self.reg(s, 0xE0) == 0xFFFF_FFFF)
        for lvt in [0x320, 0x330, 0x340, 0x350, 0x360, 0x370] { #expect(Self.reg(s, lvt) == 0x1_0000) }
        let special: Set = [0x20, 0x30, 0xE0, 0xF0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370]
        for off in stride(from: 0, to: 1024, by: 4) where !special.contains(off) {
            #expect(Self.reg(s, off) == 0, "register at \(off)")
        }
    }

    @Test("the RESET read-back names each checked local APIC register KVM does not hold as written")
    func lapicResetReadBack() {
        let written = KVMSMMBackend.resetLAPICState(kvm_lapic_state(), apicID: 3)
        #expect(KVMSMMBackend.lapicResetMismatches(held: written, written: written).isEmpty)
        var held = written
        withUnsafeMutableBytes(of: &held.regs) { page in
            // LINT0 unmasked (checked), and a register RESET does not check.
            page.storeBytes(of: UInt32(0x0000_00EF).littleEndian, toByteOffset: 0x350, as: UInt32.self)
            page.storeBytes(of: UInt32(0x1234).littleEndian, toByteOffset: 0x3F0, as: UInt32.self)
        }
        let m = KVMSMMBackend.lapicResetMismatches(held: held, written: written)
        #expect(m.map(\.offset) == [0x350])
        #expect(m.first?.held == 0xEF)
    }
}
