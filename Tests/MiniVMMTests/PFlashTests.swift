// SPDX-License-Identifier: MIT
import Foundation
import Testing

@testable import MiniVMM

/// QEMU's `cfi.pflash01` as pc_sysfw.c configures it (width 1, device-width unset, 4 KiB sectors), as a pure model:
/// the command state machine of hw/block/pflash_cfi01.c, ROMD switching, `secure`, and the pair's layout below 4 GiB.
@Suite struct PFlashTests {
    /// A writable 8 KiB flash whose bytes are their offset's low byte | 1 (never 0x50, 0x70 or 0).
    static func flash(readOnly: Bool = false, secure: Bool = false, size: Int = 8192) throws -> PFlashCFI01 {
        try PFlashCFI01(
            name: "system.flash1", image: (0..<size).map { UInt8(truncatingIfNeeded: $0) | 1 }, readOnly: readOnly,
            secure: secure)
    }

    /// OVMF's `QemuFlashDetected` (OvmfPkg/QemuFlashFvbServicesRuntimeDxe/QemuFlash.c), byte for byte: the answer
    /// QEMU's flash gives ("FD behaves as FLASH, writable"), the original byte restored, read-array mode at the end.
    static func ovmfDetect(_ f: PFlashCFI01, at off: Int, fromSMM: Bool = true) -> String {
        func rd() -> UInt8 { UInt8(truncatingIfNeeded: f.read(offset: off, width: 1, fromSMM: fromSMM)) }
        func wr(_ v: UInt8) { f.write(offset: off, width: 1, value: UInt32(v), fromSMM: fromSMM) }
        let original = rd()
        wr(0x50)
        var probe = rd()
        if original != 0x50 && probe == 0x50 {
            wr(original)
            return "RAM"
        }
        wr(0x70)
        probe = rd()
        if probe == original { return "ROM" }
        if probe == 0x70 { return "RAM" }
        guard probe == 0 else { return "unknown" }
        wr(0x10)
        wr(original)
        wr(0x70)
        probe = rd()
        wr(0xFF)
        return probe & 0x10 != 0 ? "FLASH, write-protected" : "FLASH, writable"
    }

    @Test func ovmfDetectsAWritableFlash() throws {
        let f = try Self.flash()
        #expect(Self.ovmfDetect(f, at: 0x10) == "FLASH, writable")
        #expect(f.romd && f.cmd == 0 && f.wcycle == 0 && f.status == 0x80)
        #expect(f.contents(0x10, count: 1) == [0x11])
        #expect(f.counters.leftROMD == 2 && f.counters.enteredROMD == 2)
    }

    @Test func ovmfDetectsTheCodeFlashAsWriteProtected() throws {
        let f = try Self.flash(readOnly: true)
        #expect(Self.ovmfDetect(f, at: 0) == "FLASH, write-protected")
        #expect(f.status & PFlashCFI01.statusProgramError != 0 && f.counters.readOnlyErrors == 1)
        #expect(f.contents(0, count: 1) == [0x01])
    }

    @Test func byteProgramWritesTheAccessWidthAndReadsStatusUntilReadArray() throws {
        let f = try Self.flash()
        var updates: [Range<Int>] = []
        f.onUpdate = { updates.append($0..<($0 + $1)) }
        f.write(offset: 0x100, width: 1, value: 0x40, fromSMM: true)
        #expect(!f.romd && f.wcycle == 1 && f.cmd == 0x40)
        f.write(offset: 0x100, width: 2, value: 0xBEEF, fromSMM: true)
        #expect(f.wcycle == 0 && f.cmd == 0x40 && !f.romd)
        #expect(f.read(offset: 0x100, width: 1, fromSMM: true) == 0x80)  // status, not data
        #expect(f.read(offset: 0x100, width: 2, fromSMM: true) == 0x80)
        #expect(f.read(offset: 0x100, width: 4, fromSMM: true) == 0x0080_0080)  // QEMU: status | status << 16
        f.write(offset: 0, width: 1, value: 0xFF, fromSMM: true)
        #expect(f.romd && f.read(offset: 0x100, width: 2, fromSMM: true) == 0xBEEF)
        #expect(updates == [0x100..<0x102] && f.counters.bytesProgrammed == 2)
    }

    @Test func blockEraseClearsTheAlignedSectorAtTheFirstCycle() throws {
        let f = try Self.flash()
        f.write(offset: 0x1234, width: 1, value: 0x20, fromSMM: true)
        // QEMU erases on the 0x20 cycle already; 0xD0 only confirms.
        #expect(f.contents(0x1000, count: 0x1000).allSatisfy { $0 == 0xFF })
        #expect(f.contents(0xF00, count: 1) == [0x01] && f.contents(0x0, count: 1) == [0x01])
        f.write(offset: 0x1234, width: 1, value: 0xD0, fromSMM: true)
        #expect(f.wcycle == 0 && f.cmd == 0x20 && f.status == 0x80 && f.counters.sectorsErased == 1)
        // Any other confirmation value than 0xD0/0xFF is an error: read array.
        f.write(offset: 0, width: 1, value: 0x20, fromSMM: true)
        f.write(offset: 0, width: 1, value: 0x33, fromSMM: true)
        #expect(f.romd && f.cmd == 0 && f.wcycle == 0)
    }

    @Test func readOnlyFlashSetsErrorBitsAndClearStatusClearsThem() throws {
        let f = try Self.flash(readOnly: true)
        let before = f.contents()
        f.write(offset: 0, width: 1, value: 0x20, fromSMM: true)
        f.write(offset: 0, width: 1, value: 0xD0, fromSMM: true)
        #expect(f.status == 0x80 | PFlashCFI01.statusEraseError)
        f.write(offset: 0, width: 1, value: 0x10, fromSMM: true)
        f.write(offset: 0, width: 1, value: 0x00, fromSMM: true)
        #expect(f.status == 0x80 | PFlashCFI01.statusEraseError | PFlashCFI01.statusProgramError)
        #expect(f.contents() == before)
        f.write(offset: 0, width: 1, value: 0x50, fromSMM: true)
        #expect(f.status == 0 && f.romd)
    }

    @Test func cfiQueryReturnsQEMUsTable() throws {
        let f = try Self.flash(size: 0x84000)  // OVMF_VARS_4M.fd: 528 KiB
        f.write(offset: 0x55, width: 1, value: 0x98, fromSMM: true)
        let q = (0x10...0x12).map { UInt8(f.read(offset: $0, width: 1, fromSMM: true)) }
        #expect(String(decoding: q, as: UTF8.self) == "QRY")
        #expect(f.read(offset: 0x27, width: 1, fromSMM: true) == 14)  // ctz32(0x84000)
        #expect(f.read(offset: 0x2A, width: 1, fromSMM: true) == 8)
        #expect(f.read(offset: 0x2D, width: 1, fromSMM: true) == 0x83)  // 132 blocks - 1
        #expect(f.read(offset: 0x2E, width: 1, fromSMM: true) == 0)
        #expect(f.read(offset: 0x2F, width: 1, fromSMM: true) == 0x10)  // 4096 >> 8
        #expect(f.read(offset: 0x110, width: 1, fromSMM: true) == 0x51)  // offset & 0xFF
        #expect(f.read(offset: 0x60, width: 4, fromSMM: true) == 0)  // beyond the table
        // QEMU stays in query mode on anything but 0xFF.
        f.write(offset: 0, width: 1, value: 0x70, fromSMM: true)
        #expect(f.cmd == 0x98 && f.read(offset: 0x10, width: 1, fromSMM: true) == 0x51)
        f.write(offset: 0, width: 1, value: 0xFF, fromSMM: true)
        #expect(f.romd && f.read(offset: 0x10, width: 1, fromSMM: true) == 0x11)
        // Read ID: IDs are 0 on pc's flash.
        f.write(offset: 0, width: 1, value: 0x90, fromSMM: true)
        #expect(f.read(offset: 0, width: 2, fromSMM: true) == 0 && f.read(offset: 1, width: 1, fromSMM: true) == 0)
    }

    @Test func writeToBufferStoresCountPlusOneWritesThenConfirms() throws {
        let f = try Self.flash()
        var updates: [Range<Int>] = []
        f.onUpdate = { updates.append($0..<($0 + $1)) }
        f.write(offset: 0x210, width: 1, value: 0xE8, fromSMM: true)
        #expect(f.read(offset: 0x210, width: 1, fromSMM: true) == 0x80)
        f.write(offset: 0x210, width: 1, value: 0x102, fromSMM: true)  // count 2 (masked to the bank width)
        #expect(f.counter == 2 && f.wcycle == 2)
        for (i, v) in [0xA1, 0xA2, 0xA3].enumerated() {
            f.write(offset: 0x210 + i, width: 1, value: UInt32(v), fromSMM: true)
        }
        #expect(f.wcycle == 3 && f.contents(0x210, count: 3) == [0xA1, 0xA2, 0xA3])
        #expect(updates == [0x200..<0x300])  // QEMU flushes the whole 256-byte write block
        f.write(offset: 0x210, width: 1, value: 0xD0, fromSMM: true)
        #expect(f.wcycle == 0 && f.cmd == 0xE8 && !f.romd)
        f.write(offset: 0x210, width: 1, value: 0xFF, fromSMM: true)
        #expect(f.romd)
    }

    @Test func secureFlashRefusesNonSMMWritesAndReadsArrayForThem() throws {
        let f = try Self.flash(secure: true)
        #expect(!f.write(offset: 0, width: 1, value: 0x10, fromSMM: false))
        #expect(f.romd && f.wcycle == 0 && f.counters.nonSMMWritesRefused == 1 && f.counters.writes == 0)
        // SMM enters read-status mode; a non-SMM reader still sees array data (QEMU pflash_data_read).
        f.write(offset: 0, width: 1, value: 0x70, fromSMM: true)
        #expect(f.read(offset: 4, width: 1, fromSMM: true) == 0x80)
        #expect(f.read(offset: 4, width: 1, fromSMM: false) == 0x05)
        #expect(Self.ovmfDetect(try Self.flash(secure: true), at: 0, fromSMM: false) == "ROM")
    }

    @Test func unknownCommandsAndResetReturnToReadArray() throws {
        let f = try Self.flash()
        f.write(offset: 0, width: 1, value: 0x10, fromSMM: true)
        f.write(offset: 0, width: 1, value: 0x42, fromSMM: true)
        f.write(offset: 0, width: 1, value: 0x77, fromSMM: true)  // not a command
        #expect(f.romd && f.cmd == 0)
        f.write(offset: 0, width: 1, value: 0x60, fromSMM: true)
        f.write(offset: 0, width: 1, value: 0x01, fromSMM: true)  // block lock: accepted, nothing locked
        #expect(f.wcycle == 0 && f.cmd == 0x60 && !f.romd)
        f.reset()
        #expect(f.romd && f.cmd == 0 && f.status == 0x80)
        // Accesses outside the flash or of odd widths never reach the storage.
        #expect(f.read(offset: f.size - 1, width: 2, fromSMM: true) == UInt32.max)
        #expect(f.read(offset: -1, width: 1, fromSMM: true) == UInt32.max)
        f.write(offset: f.size, width: 1, value: 0x20, fromSMM: true)
        #expect(f.romd)
    }

    @Test func thePairLiesBelowFourGiBCodeOnTop() throws {
        let code = try PFlashCFI01(
            name: "system.flash0", image: .init(repeating: 0xC0, count: 0x37C000), readOnly: true, secure: true)
        let vars = try Self.flash(size: 0x84000)
        let bank = try PFlashBank([code, vars])
        #expect(bank.units[0].base == 0xFFC8_4000 && bank.units[0].end == 0x1_0000_0000)
        #expect(bank.units[1].base == 0xFFC0_0000 && bank.base == 0xFFC0_0000)
        #expect(bank.unit(at: 0xFFC8_3FFF) == 1 && bank.unit(at: 0xFFC8_4000) == 0 && bank.unit(at: 0xFFBF_FFFF) == nil)
        // An 8-byte access is two 4-byte ones, an unaligned one naturally aligned pieces.
        #expect(PFlashBank.pieces(address: 0x1000, size: 8).map(\.width) == [4, 4])
        #expect(PFlashBank.pieces(address: 0x1001, size: 4).map(\.width) == [1, 2, 1])
        #expect(PFlashBank.pieces(address: 0x1002, size: 8).map(\.width) == [2, 4, 2])
        // Across the boundary: the low bytes from the vars flash, the high ones from the code flash.
        let v = bank.read(address: 0xFFC8_3FFE, size: 4, fromSMM: true)
        #expect(v == 0xC0C0_FFFF)
        // A write into code (read-only) and vars in one access: both flashes leave ROMD mode.
        let r = bank.write(address: 0xFFC8_3FFE, size: 4, value: 0x7070_7070, fromSMM: true)
        #expect(Set(r.romdChanged) == [0, 1] && !r.refused)
        #expect(bank.read(address: 0xFFC8_3FFE, size: 4, fromSMM: true) == 0x0080_0080)
        #expect(throws: MachineError.self) {
            try PFlashBank([code, try Self.flash(size: 0x50_0000)])
        }
    }
}

/// COM1 as `--stock` machines have it: what the firmware writes to THR reaches the console (OVMF prints its exception
/// dumps there), the divisor latch does not, and the transmitter always reads empty.
@Suite struct SerialPortTests {
    @Test func thrBytesReachTheConsoleAndTheTransmitterIsAlwaysEmpty() {
        let s = SerialPort()
        let ctx = AccessContext(cpu: 0, inSMM: true)
        #expect(s.write(offset: 0, size: 1, value: 0x41, context: ctx) == [.console(0x41)])
        #expect(s.read(offset: 5, size: 1, context: ctx) == 0x60)
        #expect(s.read(offset: 2, size: 1, context: ctx) == 0x01)
        _ = s.write(offset: 3, size: 1, value: 0x83, context: ctx)  // DLAB, 8N1
        #expect(s.write(offset: 0, size: 1, value: 0x01, context: ctx).isEmpty)  // divisor 115200
        _ = s.write(offset: 1, size: 1, value: 0x00, context: ctx)
        #expect(s.read(offset: 0, size: 1, context: ctx) == 0x01 && s.read(offset: 3, size: 1, context: ctx) == 0x83)
        _ = s.write(offset: 3, size: 1, value: 0x03, context: ctx)
        #expect(s.write(offset: 0, size: 1, value: 0x0A, context: ctx) == [.console(0x0A)])
        _ = s.write(offset: 7, size: 1, value: 0x5A, context: ctx)
        #expect(s.read(offset: 7, size: 1, context: ctx) == 0x5A && s.read(offset: 0, size: 1, context: ctx) == 0)
    }
}
