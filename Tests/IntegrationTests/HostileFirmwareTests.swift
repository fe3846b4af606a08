// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge
import Testing

@testable import MiniVMM

/// Tiny hostile firmware images built by the test itself: a guest value must never trap the VMM, make it allocate
/// what the guest cannot address, or outlive --timeout. Each ends in a report.
@Suite(
    .serialized,
    .needsKVM)
struct HostileFirmwareTests {
    /// A 4 KiB flat image: `code` (16-bit real mode) at its start (IP 0xF000 under the reset CS base 0xFFFF0000),
    /// a near jump to it at the reset vector (offset 0xFF0), HLT everywhere else.
    static func image(_ code: [UInt8]) -> [UInt8] {
        var image = [UInt8](repeating: 0xF4, count: 4096)
        image.replaceSubrange(0..<code.count, with: code)
        let rel = UInt16(truncatingIfNeeded: 0xF000 - (0xFFF0 + 3))
        image.replaceSubrange(0xFF0..<0xFF3, with: [0xE9, UInt8(rel & 0xFF), UInt8(rel >> 8)])
        return image
    }

    static func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    /// `mov dx, port; mov eax, value; out dx, eax`.
    static func out32(_ port: UInt16, _ value: UInt32) -> [UInt8] {
        [0xBA, UInt8(port & 0xFF), UInt8(port >> 8), 0x66, 0xB8] + le32(value) + [0x66, 0xEF]
    }

    /// `mov dx, port; mov al, value; out dx, al`.
    static func out8(_ port: UInt16, _ value: UInt8) -> [UInt8] {
        [0xBA, UInt8(port & 0xFF), UInt8(port >> 8), 0xB0, value, 0xEE]
    }

    /// Closes TSEG (ESMRAMC = T_EN | TSEG_SZ_EXT, SMRAM = G_SMRAME) through 0xCF8/0xCFC.
    static let closeTSEG = out32(0xCF8, 0x8000_009C) + out8(0xCFE, 0x07) + out8(0xCFD, 0x08)
    /// isa-debug-exit with 0: the run completes (status 1).
    static let exitOK = out8(0xF4, 0x00) + [0xF4]

    static func run(_ code: [UInt8], timeout: Double = 20) throws -> RunReport {
        var c = MachineConfig()
        c.maxCPUs = 1
        c.bootCPUs = 1
        c.firmware = image(code)
        c.firmwareName = "hostile"
        c.console = false
        c.quiet = true
        c.timeoutSeconds = timeout
        let kvm = try KVM()
        try c.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        return try MiniVMMRunner.run(c, kvm: kvm)
    }

    /// The fw_cfg DMA address registers take big-endian values: the guest writes them byte-swapped.
    static func dma(at address: UInt64) -> [UInt8] {
        out32(0x514, UInt32(truncatingIfNeeded: address >> 32).byteSwapped)
            + out32(0x518, UInt32(truncatingIfNeeded: address).byteSwapped)
    }

    @Test("a fw_cfg DMA descriptor at 0xFFFFFFFF_FFFFFFFF after TSEG closed is refused, not a trap")
    func dmaDescriptorAtTheTopOfTheAddressSpace() throws {
        let r = try Self.run(Self.closeTSEG + Self.dma(at: ~0) + Self.exitOK)
        #expect(r.outcome == .completed, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        #expect(r.smramClosed)
    }

    @Test("a fw_cfg DMA descriptor inside closed TSEG reads all-ones and fails at once, with no 4 GiB buffer")
    func dmaDescriptorInsideClosedTSEG() throws {
        let tsegBase = UInt64(128 << 20) - UInt64(MachineConfig().effectiveTSEGMiB) << 20
        let r = try Self.run(Self.closeTSEG + Self.dma(at: tsegBase + 0x100) + Self.exitOK)
        #expect(r.outcome == .completed, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        #expect(r.counters.smramAccesses.dmaBlocked >= 1, "the descriptor read hit the black hole")
    }

    @Test("a DMA read past an item's end zero-fills in place and fails outside RAM")
    func dmaZeroFillOutsideRAM() throws {
        // Descriptor at 0x2000: control = SELECT(key 0) | READ, length 0xFFFFFFFF, address 0x1000 (RAM, but the
        // length runs past the end of RAM): the signature's 4 bytes are copied, then the zero fill fails.
        let descriptor: [UInt8] = [0x00, 0x00, 0x00, 0x0A, 0xFF, 0xFF, 0xFF, 0xFF] + [0, 0, 0, 0, 0, 0, 0x10, 0x00]
        var code: [UInt8] = []
        for (i, b) in descriptor.enumerated() {
            // mov byte [0x2000 + i], b  (C6 06 lo hi imm8)
            let a = UInt16(0x2000 + i)
            code += [0xC6, 0x06, UInt8(a & 0xFF), UInt8(a >> 8), b]
        }
        let r = try Self.run(code + Self.dma(at: 0x2000) + Self.exitOK)
        #expect(r.outcome == .completed, "\(r.outcome.rawValue): \(r.outcomeDetail)")
    }

    @Test("an SMI storm keeps the report bounded: the first and the latest SMIs, and a count of the rest")
    func smiStormIsCapped() throws {
        // RSM at 0x38000 (mov ax,0x3000; mov ds,ax; mov word [0x8000],0xAA0F), then APM SMIs forever.
        let code: [UInt8] = [0xB8, 0x00, 0x30, 0x8E, 0xD8, 0xC7, 0x06, 0x00, 0x80, 0x0F, 0xAA, 0xE6, 0xB2, 0xEB, 0xFC]
        let r = try Self.run(code, timeout: 2)
        #expect(r.outcome == .timeout)
        let entries = r.cpus[0].smiEntries.count
        #expect(entries == CPUObservation.recordHead + CPUObservation.recordTail, "\(entries) entries kept")
        #expect(r.counters.smis > entries && r.counters.droppedRecords == r.counters.smis - entries)
    }

    @Test("a firmware spamming hot-add refusals keeps the report bounded")
    func refusalSpamIsCapped() throws {
        // mov eax, REPORT_HOTADD_REFUSED << 24; mov dx, 0x600; out dx, eax; jmp back
        let code: [UInt8] = [0x66, 0xB8, 0x00, 0x00, 0x00, 0x0D, 0xBA, 0x00, 0x06, 0x66, 0xEF, 0xEB, 0xFC]
        let r = try Self.run(code, timeout: 1)
        #expect(r.outcome == .timeout)
        #expect(r.hotAddRefusals.count == 64)
        #expect(r.counters.droppedRecords > 0)
        #expect(r.firmwareReports.count <= 64)
    }
}
