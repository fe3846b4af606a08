// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge
import Testing

@testable import MiniVMM

/// `--pflash CODE,VARS` on real KVM: a tiny real-mode guest in a 4 KiB code flash (ending at 4 GiB) programs a byte
/// of the 4 KiB variable store below it (linear 0xFFFFE000, CS-relative 0xE000 from the reset CS base 0xFFFF0000)
/// through the CFI commands, reads the status register through MMIO (the store's memslot is gone in command mode),
/// returns to read-array mode (the read-only memslot again) and reads the byte back, then queries CFI. It reports
/// the first check that failed through isa-debug-exit (0: all passed).
@Suite(.serialized, .needsKVM)
struct PFlashGuestTests {
    /// The guest: the code flash image (4 KiB, reset vector at its last 16 bytes).
    static func codeImage() -> [UInt8] {
        var code: [UInt8] = []
        var fixups: [(at: Int, fail: UInt8)] = []
        func store(_ off: UInt16, _ v: UInt8) { code += [0x2E, 0xC6, 0x06, UInt8(off & 0xFF), UInt8(off >> 8), v] }
        func load(_ off: UInt16) { code += [0x2E, 0xA0, UInt8(off & 0xFF), UInt8(off >> 8)] }
        func expectAL(_ v: UInt8, fail: UInt8) {
            code += [0x3C, v, 0x75, 0]  // cmp al, v; jne fail
            fixups.append((code.count - 1, fail))
        }
        store(0xE010, 0x10)  // byte program
        store(0xE010, 0xA5)
        load(0xE010)
        expectAL(0x80, fail: 1)  // status: ready
        store(0xE010, 0xFF)  // read array
        load(0xE010)
        expectAL(0xA5, fail: 2)
        store(0xE000, 0x98)  // CFI query
        load(0xE010)
        expectAL(0x51, fail: 3)  // 'Q'
        store(0xE000, 0xFF)
        code += [0xB0, 0x00, 0xE6, 0xF4, 0xF4]  // mov al, 0; out 0xF4, al; hlt
        for n: UInt8 in 1...3 {
            let target = code.count
            for f in fixups where f.fail == n { code[f.at] = UInt8(truncatingIfNeeded: target - (f.at + 1)) }
            code += [0xB0, n, 0xE6, 0xF4, 0xF4]
        }
        var image = [UInt8](repeating: 0xF4, count: 4096)
        image.replaceSubrange(0..<code.count, with: code)
        // Reset vector (IP 0xFFF0): jmp near to IP 0xF000, the image's first byte.
        image.replaceSubrange(0xFF0..<0xFF3, with: [0xE9, 0x0D, 0xF0])
        return image
    }

    static func run(secure: Bool, persist: Bool) throws -> (RunReport, varsFile: [UInt8]) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("minivmm-pflash-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let vars = dir.appendingPathComponent("vars.fd")
        try Data((0..<4096).map { UInt8(truncatingIfNeeded: $0) | 1 }).write(to: vars)
        var c = MachineConfig()
        c.maxCPUs = 1
        c.bootCPUs = 1
        c.firmware = codeImage()
        c.pflashVars = try MachineConfig.loadFirmware(path: vars.path)
        c.pflashVarsPath = vars.path
        c.pflashPersist = persist
        c.pflashSecure = secure
        c.firmwareName = "pflash-guest"
        c.firmwareKind = .stock
        c.backend = .emulated
        c.console = false
        c.quiet = true
        c.timeoutSeconds = 30
        let kvm = try KVM()
        try c.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        let r = try MiniVMMRunner.run(c, kvm: kvm)
        return (r, [UInt8](try Data(contentsOf: vars)))
    }

    @Test func guestProgramsTheVariableStoreThroughCFICommands() throws {
        let (r, file) = try Self.run(secure: false, persist: true)
        #expect(
            r.outcome == .completed && r.guestExitStatus == 1,
            "\(r.outcomeDetail) status \(String(describing: r.guestExitStatus))")
        let units = try #require(r.pflash)
        #expect(units.map(\.base) == [0xFFFF_F000, 0xFFFF_E000])
        let store = units[1]
        #expect(store.romd && store.counters.bytesProgrammed == 1 && store.counters.leftROMD == 2)
        #expect(store.counters.enteredROMD == 2 && store.counters.nonSMMWritesRefused == 0)
        // --pflash-persist: the programmed byte reached the file, nothing else changed.
        #expect(file[0x10] == 0xA5 && file[0x11] == 0x11 && file[0x0F] == 0x0F)
    }

    @Test func secureFlashRefusesTheNonSMMGuestAndLeavesTheFileAlone() throws {
        let (r, file) = try Self.run(secure: true, persist: true)
        // The program command was refused, so the "status" read returned array data: check 1 fails.
        #expect(r.guestExitStatus == 3, "\(r.outcomeDetail)")
        let store = try #require(r.pflash?[1])
        #expect(store.romd && store.counters.writes == 0 && store.counters.nonSMMWritesRefused == 2)
        #expect(file[0x10] == 0x11)
    }

    @Test func withoutPersistTheFileIsUntouched() throws {
        let (r, file) = try Self.run(secure: false, persist: false)
        #expect(r.guestExitStatus == 1 && r.pflash?[1].counters.bytesProgrammed == 1)
        #expect(file[0x10] == 0x11)
    }
}

/// The CLI's `--no-pflash-secure` (the inversion of `--pflash-secure`) reaches the flashes: the same guest, run
/// through the binary, programs the variable store only without `secure`.
@Suite(.serialized, .needsKVM)
struct PFlashCLITests {
    @Test func noPflashSecureLetsNonSMMCodeProgramTheStore() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("minivmm-pflash-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let code = dir.appendingPathComponent("code.fd")
        let vars = dir.appendingPathComponent("vars.fd")
        try Data(PFlashGuestTests.codeImage()).write(to: code)
        try Data(repeating: 0xFF, count: 4096).write(to: vars)
        let args = [
            "run", "--pflash", "\(code.path),\(vars.path)", "--max-cpus", "1", "--boot-cpus", "1", "--timeout", "30",
        ]
        let off = try MiniVMMBinary.run(args + ["--no-pflash-secure"])
        let on = try MiniVMMBinary.run(args)
        let offStore = off.stdout.split(separator: "\n").first { $0.contains("pflash: system.flash1") } ?? ""
        let onStore = on.stdout.split(separator: "\n").first { $0.contains("pflash: system.flash1") } ?? ""
        #expect(offStore.contains("1 bytes programmed") && offStore.contains("0 non-SMM writes refused"), "\(offStore)")
        #expect(!onStore.contains("0 non-SMM writes refused") && onStore.contains("0 bytes programmed"), "\(onStore)")
    }
}
