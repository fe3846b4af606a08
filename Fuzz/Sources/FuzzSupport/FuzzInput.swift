// SPDX-License-Identifier: MIT
import CFuzzer
import Glibc
import MiniVMM

/// The fuzzer's input read as a stream of little-endian fields, so each target can turn it into a sequence of
/// operations. Reading past the end gives zeros; `isEmpty` tells a target's loop when to stop.
public struct FuzzInput {
    private let bytes: [UInt8]
    private var position = 0

    /// Copies libFuzzer's buffer (`data` may be nil when `size` is 0).
    public init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        if let data, size > 0 {
            // SAFETY: libFuzzer passes `size` readable bytes at `data` for the duration of the call.
            bytes = Array(UnsafeBufferPointer(start: data, count: size))
        } else {
            bytes = []
        }
    }

    /// Wraps bytes already in hand (tests, nested inputs).
    public init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// No byte left.
    public var isEmpty: Bool { position >= bytes.count }

    /// Bytes not yet consumed.
    public var remaining: Int { max(bytes.count - position, 0) }

    public mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    public mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    public mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
    public mutating func bool() -> Bool { u8() & 1 != 0 }

    /// `count` bytes, zero-padded past the end of the input.
    public mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<max(count, 0)).map { _ in u8() }
    }

    /// The rest of the input.
    public mutating func rest() -> [UInt8] {
        guard position < bytes.count else { return [] }
        defer { position = bytes.count }
        return Array(bytes[position...])
    }

    /// A port access size: mostly 1, 2 or 4, sometimes an invalid one (0, 3, 8).
    public mutating func accessSize() -> Int {
        [1, 2, 4, 1, 2, 4, 0, 3, 8][Int(u8()) % 9]
    }
}

/// A fuzz invariant: stops the process (libFuzzer records the input) when `condition` is false.
@inline(__always)
public func fuzzCheck(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("fuzz invariant: \(message())") }
}

/// The all-ones value of a port access of `size` bytes (1, 2 or 4): no read may return more.
public func fuzzMask(size: Int) -> UInt32 {
    size >= 4 ? 0xFFFF_FFFF : (UInt32(1) << UInt32(8 * max(size, 0))) &- 1
}

/// Guest RAM for DMA: `size` bytes at guest-physical 0, every access bounds-checked without overflow (any byte outside
/// fails the whole access, as QEMU's `dma_memory_rw` on an unassigned range).
public final class FakeGuestMemory: GuestMemoryAccess {
    public var bytes: [UInt8]

    public init(size: Int) {
        bytes = [UInt8](repeating: 0, count: size)
    }

    private func range(_ gpa: UInt64, _ count: Int) -> Range<Int>? {
        guard count >= 0, gpa <= UInt64(bytes.count), UInt64(count) <= UInt64(bytes.count) - gpa else { return nil }
        return Int(gpa)..<(Int(gpa) + count)
    }

    public func readBytes(at gpa: UInt64, count: Int) -> [UInt8]? {
        range(gpa, count).map { Array(bytes[$0]) }
    }

    public func writeBytes(_ data: [UInt8], at gpa: UInt64) -> Bool {
        guard let r = range(gpa, data.count) else { return false }
        bytes.replaceSubrange(r, with: data)
        return true
    }

    public func zeroBytes(at gpa: UInt64, count: Int) -> Bool {
        guard let r = range(gpa, count) else { return false }
        for i in r { bytes[i] = 0 }
        return true
    }
}

/// Runs libFuzzer's driver on `callback` with the process arguments and exits with its status. SwiftPM gives every
/// executable target a `main` of its own, so the targets call this from their top-level code instead of relying on
/// libFuzzer's `main`.
public func runFuzzer(_ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> Never {
    var argc = CommandLine.argc
    // SAFETY: the process's own argv, valid for its lifetime; libFuzzer only reads and reorders it.
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, callback))
}
