// SPDX-License-Identifier: MIT
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The pflash pair of QEMU's PC machines (hw/i386/pc_sysfw.c `pc_system_flash_map`): unit 0 (`system.flash0`, the
/// code) ends at 4 GiB, unit 1 (`system.flash1`, the variable store) lies right below it, each a `cfi.pflash01`
/// (`PFlashCFI01`). Routes guest-physical MMIO accesses to the flashes the way QEMU's memory core dispatches them to
/// a region whose ops set no access sizes (`memory_access_size`): an access wider than 4 bytes or not naturally
/// aligned is split into naturally aligned pieces of at most 4 bytes, in increasing address order, each going to the
/// flash that holds it. Pure: the machine keeps the memslots in step with each flash's ROMD mode.
public final class PFlashBank: @unchecked Sendable {
    public struct Unit {
        public let base: UInt64
        public let flash: PFlashCFI01
        public var end: UInt64 { base + UInt64(flash.size) }
    }

    /// Unit 0 first.
    public let units: [Unit]
    /// The lowest address the flashes cover.
    public var base: UInt64 { units.last?.base ?? Layout.fourGiB }

    /// `flashes` in unit order (code first); QEMU refuses a pair larger than 8 MiB (`FLASH_MAP_BASE_MIN`).
    public init(_ flashes: [PFlashCFI01]) throws {
        var top = Layout.fourGiB
        var u: [Unit] = []
        for f in flashes {
            let size = UInt64(f.size)
            guard size <= top, top - size >= Layout.fourGiB - 0x80_0000 else {
                throw MachineError.firmware("the pflash units do not fit in the 8 MiB below 4 GiB")
            }
            top -= size
            u.append(Unit(base: top, flash: f))
        }
        units = u
    }

    /// The unit holding `address`.
    public func unit(at address: UInt64) -> Int? {
        units.firstIndex { address >= $0.base && address < $0.end }
    }

    public func contains(_ address: UInt64) -> Bool { unit(at: address) != nil }

    /// The pieces QEMU's memory core makes of an access of `size` bytes at `address`.
    static func pieces(address: UInt64, size: Int) -> [(address: UInt64, width: Int)] {
        var out: [(UInt64, Int)] = []
        var a = address
        var left = max(0, min(size, 8))
        while left > 0 {
            var maxWidth = 4
            let align = a == 0 ? 4 : Int(min(UInt64(4), a & (~a &+ 1)))
            maxWidth = min(maxWidth, align)
            var w = min(left, maxWidth)
            while w & (w - 1) != 0 { w -= 1 }  // pow2floor
            out.append((a, w))
            a &+= UInt64(w)
            left -= w
        }
        return out
    }

    /// A read of `size` (1...8) bytes, little-endian; bytes outside every flash read 0xFF.
    public func read(address: UInt64, size: Int, fromSMM: Bool) -> UInt64 {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        for p in Self.pieces(address: address, size: size) {
            var piece = UInt64.max
            if let i = unit(at: p.address) {
                let u = units[i]
                let off = Int(p.address - u.base)
                if u.flash.valid(off, p.width) {
                    piece = UInt64(u.flash.read(offset: off, width: p.width, fromSMM: fromSMM))
                }
            }
            let mask: UInt64 = p.width >= 8 ? .max : (1 << (UInt64(p.width) * 8)) - 1
            v |= (piece & mask) << shift
            shift += UInt64(p.width) * 8
        }
        return v
    }

    /// A write of `size` (1...8) bytes. Returns the units whose ROMD mode changed, and whether any piece was refused
    /// (`secure`, not from SMM).
    public func write(address: UInt64, size: Int, value: UInt64, fromSMM: Bool) -> (romdChanged: [Int], refused: Bool) {
        var changed: [Int] = []
        var refused = false
        var shift: UInt64 = 0
        for p in Self.pieces(address: address, size: size) {
            defer { shift += UInt64(p.width) * 8 }
            guard let i = unit(at: p.address) else { continue }
            let u = units[i]
            let off = Int(p.address - u.base)
            guard u.flash.valid(off, p.width) else { continue }
            let before = u.flash.romd
            if !u.flash.write(
                offset: off, width: p.width, value: UInt32(truncatingIfNeeded: value >> shift), fromSMM: fromSMM)
            {
                refused = true
            }
            if u.flash.romd != before && !changed.contains(i) { changed.append(i) }
        }
        return (changed, refused)
    }

    public func reset() {
        for u in units { u.flash.reset() }
    }
}

/// Writes a flash's updated ranges back to its file (QEMU `pflash_update` → `blk_pwrite`, widened to 512-byte
/// sectors). Only for `--pflash-persist`: otherwise the variable store lives in memory for the run.
final class PFlashFileWriter {
    let path: String
    let fd: Int32
    weak var flash: PFlashCFI01?
    private(set) var failures = 0
    private(set) var bytesWritten = 0

    init(path: String, flash: PFlashCFI01) throws {
        self.path = path
        self.flash = flash
        fd = open(path, O_WRONLY)
        if fd < 0 {
            throw MachineError.firmware("cannot open \(path) for writing: \(String(cString: strerror(errno)))")
        }
    }

    deinit { close(fd) }

    func update(offset: Int, count: Int) {
        guard let flash else { return }
        let lo = offset & ~511
        let hi = min(flash.size, (offset + count + 511) & ~511)
        guard lo < hi else { return }
        let bytes = flash.contents(lo, count: hi - lo)
        let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(lo)) }
        if n != bytes.count { failures += 1 } else { bytesWritten += n }
    }
}

/// One pflash unit as the run ended (the report's `pflash`).
public struct PFlashUnitReport: Codable, Sendable, Equatable {
    public var name: String
    public var base: UInt64
    public var size: Int
    public var readOnly: Bool
    public var secure: Bool
    /// In read-array (ROMD) mode at the end, and the status register then.
    public var romd: Bool
    public var status: UInt8
    public var counters: PFlashCFI01.Counters

    /// The unit in words, for the summary.
    public var line: String {
        let c = counters
        return "\(name) at \(FirmwareFindings.hex(base))-\(FirmwareFindings.hex(base + UInt64(size) - 1))"
            + " (\(readOnly ? "read-only" : "writable")\(secure ? ", SMM-only commands" : "")): \(c.writes) command writes,"
            + " \(c.bytesProgrammed) bytes programmed, \(c.sectorsErased) sectors erased,"
            + " \(c.nonSMMWritesRefused) non-SMM writes refused, \(c.readOnlyErrors) read-only errors;"
            + " \(romd ? "read-array mode" : "command mode") at the end"
    }
}

extension PFlashBank {
    public var report: [PFlashUnitReport] {
        units.map {
            PFlashUnitReport(
                name: $0.flash.name, base: $0.base, size: $0.flash.size, readOnly: $0.flash.readOnly,
                secure: $0.flash.secure, romd: $0.flash.romd, status: $0.flash.status, counters: $0.flash.counters)
        }
    }
}
