// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge
import Testing

@testable import MiniVMM

/// SMM code on the emulated backend (issue 9, gaps 1 and 5): the guest-visible IDTR in an SMI handler is KVM's
/// SMI-entry 0/0, a handler's own IDT is its own, and RSM is caught exactly whether the SMRAM-view vCPU runs
/// with breakpoints or single-steps. Each firmware checks in real mode after RSM and exits with status 1 (pass)
/// or 3 (a check failed).
@Suite(.serialized, .needsKVM)
struct SMMCodeWatchTests {
    typealias F = SMMCodeFirmware

    /// Data area of the handler blob (offset 0x300, linear 0x38300, ES:0x8300 in the main code): 0xFF until written.
    static let data = 0x300
    static let dataLinear = F.entry + UInt32(data)

    /// Pads `blob` with 0xFF up to the end of the data area.
    static func withData(_ blob: [UInt8]) -> [UInt8] {
        precondition(blob.count <= data)
        return blob + [UInt8](repeating: 0xFF, count: data + 0x40 - blob.count)
    }

    /// Main-code checks (ES = 0x3000): each `cmp dword es:[0x8000 + offset], value; jne fail`, then AL = 0, or
    /// AL = 1 at `fail`.
    static func checks(_ list: [(offset: Int, value: UInt32)], ebx: UInt32? = nil) -> [UInt8] {
        var blocks: [[UInt8]] = list.map { c in
            [0x26, 0x66, 0x81, 0x3E] + F.le16(UInt16(0x8000 + c.offset)) + F.le32(c.value)
        }
        if let ebx { blocks.append([0x66, 0x81, 0xFB] + F.le32(ebx)) }  // cmp ebx, imm32
        var code: [UInt8] = []
        let total = blocks.reduce(0) { $0 + $1.count + 2 }
        for b in blocks {
            code += b
            let next = code.count + 2
            code += [0x75, UInt8(total + 4 - next)]  // jne fail
        }
        return code + [0x30, 0xC0, 0xEB, 0x02, 0xB0, 0x01]  // xor al, al; jmp +2; fail: mov al, 1
    }

    static func run(main: [UInt8], blob: [UInt8]) throws -> RunReport {
        var c = SMMCodeBench.config(image: F.image(main: main, blob: blob), backend: .emulated)
        c.timeoutSeconds = 30
        let kvm = try KVM()
        try c.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        return try MiniVMMRunner.run(c, kvm: kvm)
    }

    static func expectPass(_ r: RunReport, _ what: Comment) {
        #expect(r.outcome == .completed && r.guestExitStatus == 1, "\(what): \(r.outcome.rawValue) \(r.outcomeDetail)")
        #expect(r.counters.rsms == r.counters.smis && r.counters.smis >= 1, "\(what): every SMI ended in RSM")
    }

    /// A loop of `n` turns (16-bit code) that makes single-stepping show in the exit count.
    static func loop(_ n: UInt32) -> [UInt8] { F.loop16(n) }

    @Test("SIDT in a real-mode SMI handler reads KVM's SMI-entry IDTR 0/0 (breakpoints)")
    func sidtRealModeBreakpoints() throws {
        // mov ax, 0x3000; mov ds, ax; sidt [0x8300]; 2000 turns; rsm — two candidates: breakpoints.
        let blob = Self.withData(
            F.probe + [0xB8, 0x00, 0x30, 0x8E, 0xD8, 0x0F, 0x01, 0x0E] + F.le16(0x8000 + UInt16(Self.data))
                + Self.loop(2000)
                + F.rsm)
        let r = try Self.run(main: F.apmSMI + Self.checks([(Self.data, 0), (Self.data + 2, 0)]), blob: blob)
        Self.expectPass(r, "SIDT reads 0/0")
        #expect(r.counters.exits < 100, "the handler ran freely (\(r.counters.exits) exits)")
    }

    @Test("SIDT as the first handler instruction, and with 0x66/0x67 prefixes while single-stepping, reads 0/0")
    func sidtRealModeFirstInstructionAndPrefixes() throws {
        // sidt cs:[0x8300] (first instruction); o32 sidt cs:[0x8310]; a32 sidt [0x38320] (DS base 0);
        // sidt es:[bx+si+0x10] with ES = 0x3000, BX = 0x8300, SI = 0x20 (0x38330). More than four candidates:
        // single-stepping.
        var b: [UInt8] = [0x2E, 0x0F, 0x01, 0x0E] + F.le16(0x8000 + UInt16(Self.data))
        b += F.probe
        b += [0x66, 0x2E, 0x0F, 0x01, 0x0E] + F.le16(0x8000 + UInt16(Self.data + 0x10))
        b += [0x67, 0x0F, 0x01, 0x0D] + F.le32(Self.dataLinear + 0x20)
        b += [0xB8, 0x00, 0x30, 0x8E, 0xC0, 0xBB] + F.le16(0x8000 + UInt16(Self.data)) + [0xBE, 0x20, 0x00]
        b += [0x26, 0x0F, 0x01, 0x48, 0x10]  // sidt es:[bx+si+0x10]
        b += Self.loop(2000) + F.rsm
        let checks = [0, 0x10, 0x20, 0x30].flatMap { [(Self.data + $0, UInt32(0)), (Self.data + $0 + 2, UInt32(0))] }
        let r = try Self.run(main: F.apmSMI + Self.checks(checks), blob: Self.withData(b))
        Self.expectPass(r, "SIDT with prefixes reads 0/0")
        #expect(r.counters.exits > 4000, "more than four candidates: single-stepped (\(r.counters.exits) exits)")
    }

    /// End to end on this host, whose KVM emulates the PUSHF itself (`em_pushf` reads `kvm_get_rflags`, which hides
    /// the stepping's TF); where the CPU runs it (the nested lane), TF reaches the image and the VMM clears it
    /// (``SteppedFlagsImage``, whose own tests write a TF image and see it cleared).
    @Test("PUSHF in a single-stepped handler reads KVM's SMI-entry RFLAGS 0x2: the stepping's TF is not shown")
    func pushfWhileSingleStepping() throws {
        // mov ax, 0x3000; mov ds, ax; pushf; pop word [0x8300]; pushfd; pop dword [0x8304]; rsm; then four more
        // 0F AA never run: five RSM candidates, so the handler is single-stepped.
        var b: [UInt8] = F.probe + [0xB8, 0x00, 0x30, 0x8E, 0xD8]
        b += [0x9C, 0x8F, 0x06] + F.le16(0x8000 + UInt16(Self.data))
        b += [0x66, 0x9C, 0x66, 0x8F, 0x06] + F.le16(0x8000 + UInt16(Self.data + 4))
        b += F.rsm + [0x0F, 0xAA, 0x0F, 0xAA, 0x0F, 0xAA, 0x0F, 0xAA]
        let r = try Self.run(
            main: F.apmSMI + Self.checks([(Self.data, 0xFFFF_0002), (Self.data + 4, 0x2)]), blob: Self.withData(b))
        Self.expectPass(r, "PUSHF reads 0x2")
        #expect(r.counters.exits > 8, "more than four candidates: single-stepped (\(r.counters.exits) exits)")
    }

    @Test("SIDT in protected mode reads 0/0 before the handler's LIDT and its own IDT after; RSM restores the state")
    func protectedModeOwnIDT() throws {
        let idtBase = F.entry + UInt32(F.pmIDT)
        let idtLimit = UInt32(F.pmIDTEntries * 8 - 1)
        let before: [UInt8] = [0x0F, 0x01, 0x0D] + F.le32(Self.dataLinear)  // sidt [data]
        let body: [UInt8] =
            [0x0F, 0x01, 0x0D] + F.le32(Self.dataLinear + 0x10)  // sidt [Self.data + 0x10]
            + [0x31, 0xDB] + F.loop32(2000)  // xor ebx, ebx; Self.loop
        let blob = Self.withData(F.protectedModeHandler(beforeLIDT: before, body: body))
        let main: [UInt8] = [0x66, 0xBB] + F.le32(0x1234_5678) + F.apmSMI  // mov ebx, 0x12345678; SMI
        let checks = Self.checks(
            [
                (Self.data, 0), (Self.data + 2, 0),
                (Self.data + 0x10, idtLimit | (idtBase & 0xFFFF) << 16), (Self.data + 0x12, idtBase),
            ], ebx: 0x1234_5678)
        Self.expectPass(try Self.run(main: main + checks, blob: blob), "protected-mode handler with its own IDT")
    }

    @Test("SIDT in long mode stores KVM's 10-byte 0/0 before the handler's LIDT and its own IDT after")
    func longModeOwnIDT() throws {
        // The 64-bit IDT ends at blob offset 0x330: this test's data area is at 0x340.
        let area = 0x340
        let at = F.entry + UInt32(area)
        let before: [UInt8] = [0x0F, 0x01, 0x0C, 0x25] + F.le32(at)  // sidt [at]
        let body: [UInt8] = [0x0F, 0x01, 0x0C, 0x25] + F.le32(at + 0x10) + F.loop64(2000)  // sidt [at + 0x10]
        var blob = F.longModeHandler(beforeLIDT: before, body: body)
        blob += [UInt8](repeating: 0xFF, count: area + 0x40 - blob.count)
        let idtBase = F.entry + UInt32(F.pmIDT)
        let idtLimit = UInt32(F.pmIDTEntries * 16 - 1)
        let checks = Self.checks([
            (area, 0), (area + 4, 0), (area + 6, 0),
            (area + 0x10, idtLimit | (idtBase & 0xFFFF) << 16), (area + 0x12, idtBase), (area + 0x16, 0),
        ])
        let r = try Self.run(main: F.apmSMI + checks, blob: blob)
        Self.expectPass(r, "long-mode handler with its own IDT")
    }

    @Test("a long-mode handler with its own IDT runs freely until RSM")
    func longModeRunsFreely() throws {
        let image = F.benchImage(.smmLong, iterations: 5000)
        var c = SMMCodeBench.config(image: image, backend: .emulated)
        c.timeoutSeconds = 30
        let r = try MiniVMMRunner.run(c, kvm: try KVM())
        Self.expectPass(r, "long-mode loop")
        #expect(r.counters.exits < 100, "breakpoints, not single-stepping (\(r.counters.exits) exits)")
    }

    @Test("a protected-mode handler with its own IDT runs freely until RSM")
    func protectedModeRunsFreely() throws {
        let r = try Self.run(main: F.apmSMI + F.statusOK, blob: F.protectedModeHandler(body: F.loop32(5000)))
        Self.expectPass(r, "protected-mode loop")
        #expect(r.counters.exits < 100, "breakpoints, not single-stepping (\(r.counters.exits) exits)")
    }

    @Test("an RSM outside the scanned code after the handler's own LIDT is caught at the guest's #UD handler")
    func rsmOutsideScannedCodeWithOwnIDT() throws {
        // Main: ESP = 0x7000, RSM planted at 0x60000, EBX = 0x12345678, two SMIs. Handler body: jmp to 0x60000.
        let main: [UInt8] =
            [0x66, 0xBC] + F.le32(0x7000)
            + [0xB8, 0x00, 0x60, 0x8E, 0xE0, 0x64, 0xC7, 0x06, 0x00, 0x00, 0x0F, 0xAA]
            + [0x66, 0xBB] + F.le32(0x1234_5678) + F.apmSMI + F.apmSMI
        let body: [UInt8] = [0x31, 0xDB, 0xB8] + F.le32(0x60000) + [0xFF, 0xE0]  // xor ebx, ebx; jmp eax
        let r = try Self.run(
            main: main + Self.checks([], ebx: 0x1234_5678), blob: F.protectedModeHandler(body: body))
        Self.expectPass(r, "RSM at 0x60000")
        #expect(r.counters.smis == 2)
    }

    @Test("an exception in a real-mode SMI handler is a triple fault, as with KVM's IDT limit 0")
    func exceptionInSMMTripleFaults() throws {
        // xor cx, cx; div cx: #DE.
        let r = try Self.run(main: F.apmSMI + F.statusOK, blob: F.probe + [0x31, 0xC9, 0xF7, 0xF1] + F.rsm)
        #expect(r.outcome != .completed, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        #expect(r.outcomeDetail.contains("triple fault"), "\(r.outcomeDetail)")
    }
}
