// SPDX-License-Identifier: MIT
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// One CFI parallel flash with the Intel command set: QEMU's `cfi.pflash01` (hw/block/pflash_cfi01.c) as
/// hw/i386/pc_sysfw.c creates `system.flash0`/`system.flash1` for `-drive if=pflash`: `width` 1, `device-width`
/// unset (QEMU's "old behaviour" for status, CFI and ID reads), `sector-length` 4096, IDs 0, little-endian, and
/// `secure` as the device property (libvirt passes `-global driver=cfi.pflash01,property=secure,value=on` for
/// OVMF's SMM build). A pure model: the machine maps the storage read-only into the guest while `romd` is true
/// (QEMU's ROMD mode of `memory_region_init_rom_device`: reads never exit, writes exit as MMIO) and sends every
/// access here while it is false (command mode: reads exit too).
///
/// The command state machine (`wcycle`, `cmd`, `status`), exactly as `pflash_write`/`pflash_read`:
/// - cycle 0: 0x00, 0xF0, 0xFF read array; 0x50 clears status, then read array; 0x70 read status and 0x90
///   read ID (no further cycle); 0x10/0x40 byte program, 0x20 block erase (QEMU erases the 4 KiB sector at this
///   cycle already; status |= 0x80, or 0x20 on a read-only flash), 0x60 block (un)lock, 0x98 CFI query, 0xE8
///   write to buffer (status |= 0x80): these go to cycle 1. Anything else: read array.
/// - cycle 1: program writes the access's bytes (status 0x10 on a read-only flash), status |= 0x80, cycle 0
///   with `cmd` kept (reads return status); erase wants 0xD0 (confirm) or 0xFF; 0xE8 takes the byte count − 1;
///   0x60 takes 0xD0/0x01; 0x98 leaves query mode only on 0xFF (other values keep it).
/// - cycle 2 (0xE8): each write stores its bytes (straight to storage, as QEMU does), status |= 0x80; after
///   count + 1 writes, cycle 3, where 0xD0 confirms and anything else reads array.
/// Any write in cycle 0 leaves ROMD mode; read array returns to it. Reads in command mode: `cmd` 0 array data,
/// 0x10/0x20/0x28/0x40/0x50/0x60/0x70/0xE8 status (`| status << 16` for 4-byte reads), 0x90 the IDs (0), 0x98
/// the CFI table byte at `offset & 0xFF`. With `secure`, an access that is not from SMM (QEMU `MemTxAttrs.secure`)
/// reads array data whatever the mode and its writes fail (`MEMTX_ERROR`: dropped, no state change).
public final class PFlashCFI01: @unchecked Sendable {
    /// QEMU `FLASH_SECTOR_SIZE` in pc_sysfw.c.
    public static let sectorLength = 4096
    /// `cfi_table[0x2A]` for `width` 1: 2^8-byte write buffer.
    public static let writeBlockSize = 256
    /// Statuses (Intel command set): bit 7 ready, bit 5 erase error, bit 4 program error.
    public static let statusReady: UInt8 = 0x80
    public static let statusEraseError: UInt8 = 0x20
    public static let statusProgramError: UInt8 = 0x10

    /// QEMU's region name: `system.flash0` (code) or `system.flash1` (vars).
    public let name: String
    public let size: Int
    /// The drive is read-only (QEMU `pfl->ro`, from `readonly=on`): program and erase set error bits.
    public let readOnly: Bool
    /// The `secure` property: only SMM may send commands.
    public let secure: Bool
    let storage: UnsafeMutableRawPointer
    private let ownsStorage: Bool
    /// Called with (offset, length) after a write reached the storage (QEMU `pflash_update`, which writes the
    /// range to the drive).
    var onUpdate: ((Int, Int) -> Void)?

    public private(set) var wcycle: UInt8 = 0
    public private(set) var cmd: UInt8 = 0
    public private(set) var status: UInt8 = PFlashCFI01.statusReady
    public private(set) var counter: UInt64 = 0
    /// ROMD mode: array reads come straight from the storage (the machine's read-only memslot).
    public private(set) var romd = true
    public let cfiTable: [UInt8]
    public private(set) var counters = Counters()

    public struct Counters: Sendable, Equatable, Codable {
        /// Command-cycle writes accepted (every write that reached the state machine).
        public var writes = 0
        /// Bytes programmed (byte program and write-to-buffer data), sectors erased.
        public var bytesProgrammed = 0
        public var sectorsErased = 0
        /// Writes refused because they did not come from SMM (`secure`).
        public var nonSMMWritesRefused = 0
        /// Program or erase attempts on a read-only flash.
        public var readOnlyErrors = 0
        /// Switches out of and back into ROMD mode.
        public var leftROMD = 0
        public var enteredROMD = 0
    }

    /// A flash over `storage` (not copied; the caller keeps it alive and mapped for the flash's lifetime).
    init(name: String, storage: UnsafeMutableRawPointer, size: Int, readOnly: Bool, secure: Bool) {
        self.name = name
        self.storage = storage
        self.size = size
        self.readOnly = readOnly
        self.secure = secure
        ownsStorage = false
        cfiTable = Self.makeCFITable(size: size)
    }

    /// A flash holding a copy of `image` (a multiple of 4 KiB).
    public init(name: String, image: [UInt8], readOnly: Bool, secure: Bool) throws {
        guard !image.isEmpty, image.count % Self.sectorLength == 0 else {
            throw MachineError.firmware("\(name): \(image.count) bytes, not a non-zero multiple of 4 KiB")
        }
        guard let p = mmap(nil, image.count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            p != MAP_FAILED
        else { throw MachineError.hostResources("cannot map \(image.count) bytes for \(name)") }
        // SAFETY: the mapping holds image.count bytes.
        image.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: image.count) }
        self.name = name
        storage = p
        size = image.count
        self.readOnly = readOnly
        self.secure = secure
        ownsStorage = true
        cfiTable = Self.makeCFITable(size: size)
    }

    deinit {
        if ownsStorage { munmap(storage, size) }
    }

    /// Host address of the storage (for the read-only memslot).
    var hostAddress: UInt64 { UInt64(UInt(bitPattern: storage)) }

    /// The storage's bytes (tests, persistence).
    public func contents(_ offset: Int = 0, count: Int? = nil) -> [UInt8] {
        let n = count ?? size - offset
        guard offset >= 0, n >= 0, offset <= size, n <= size - offset else { return [] }
        // SAFETY: bounds checked against the storage.
        return Array(UnsafeRawBufferPointer(start: storage + offset, count: n))
    }

    /// QEMU `pflash_cfi01_fill_cfi_table` for one device (`device-width` unset), `width` 1, 4 KiB sectors.
    static func makeCFITable(size: Int) -> [UInt8] {
        var t = [UInt8](repeating: 0, count: 0x52)
        let blocks = size / sectorLength
        let values: [(Int, UInt8)] = [
            (0x10, 0x51), (0x11, 0x52), (0x12, 0x59),  // "QRY"
            (0x13, 0x01), (0x14, 0x00), (0x15, 0x31), (0x16, 0x00),
            (0x1B, 0x45), (0x1C, 0x55), (0x1F, 0x07), (0x20, 0x07), (0x21, 0x0A), (0x22, 0x00),
            (0x23, 0x04), (0x24, 0x04), (0x25, 0x04), (0x26, 0x00),
            (0x27, UInt8(truncatingIfNeeded: size == 0 ? 0 : size.trailingZeroBitCount)),
            (0x28, 0x02), (0x29, 0x00), (0x2A, 0x08), (0x2B, 0x00), (0x2C, 0x01),
            (0x2D, UInt8(truncatingIfNeeded: blocks &- 1)), (0x2E, UInt8(truncatingIfNeeded: (blocks &- 1) >> 8)),
            (0x2F, UInt8(truncatingIfNeeded: sectorLength >> 8)), (0x30, UInt8(truncatingIfNeeded: sectorLength >> 16)),
            (0x31, 0x50), (0x32, 0x52), (0x33, 0x49), (0x34, 0x31), (0x35, 0x30), (0x3F, 0x01),  // "PRI", "10"
        ]
        for (i, v) in values { t[i] = v }
        return t
    }

    /// Power-on / system reset (QEMU `pflash_cfi01_system_reset`): read array, ROMD, status ready.
    public func reset() {
        cmd = 0
        wcycle = 0
        enterROMD()
        status = Self.statusReady
    }

    private func enterROMD() {
        if !romd { counters.enteredROMD += 1 }
        romd = true
    }

    // MARK: accesses (offset and size are checked by the caller: 1, 2 or 4 bytes inside the flash)

    /// Whether [offset, offset+size) lies in the flash and size is 1, 2 or 4.
    func valid(_ offset: Int, _ width: Int) -> Bool {
        (width == 1 || width == 2 || width == 4) && offset >= 0 && offset <= size - width
    }

    func dataRead(_ offset: Int, _ width: Int) -> UInt32 {
        var v: UInt32 = 0
        // SAFETY: `valid` checked [offset, offset+width) against the storage.
        for i in 0..<width { v |= UInt32((storage + offset + i).load(as: UInt8.self)) << (8 * UInt32(i)) }
        return v
    }

    private func dataWrite(_ offset: Int, _ value: UInt32, _ width: Int) {
        // SAFETY: `valid` checked [offset, offset+width) against the storage.
        for i in 0..<width {
            (storage + offset + i).storeBytes(of: UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))), as: UInt8.self)
        }
    }

    /// QEMU `pflash_mem_read_with_attrs`: a read of 1, 2 or 4 bytes at `offset`; `fromSMM` is `attrs.secure`.
    public func read(offset: Int, width: Int, fromSMM: Bool) -> UInt32 {
        guard valid(offset, width) else { return UInt32.max }
        if secure && !fromSMM { return dataRead(offset, width) }
        if romd { return dataRead(offset, width) }
        switch cmd {
        case 0x00:
            return dataRead(offset, width)
        case 0x10, 0x20, 0x28, 0x40, 0x50, 0x60, 0x70, 0xE8:
            var r = UInt32(status)
            if width > 2 { r |= UInt32(status) << 16 }
            return r
        case 0x90:
            return 0  // ident0..3 are 0 on pc's flash: manufacturer and device codes read 0, the rest 0
        case 0x98:
            let boff = offset & 0xFF
            return boff < cfiTable.count ? UInt32(cfiTable[boff]) : 0
        default:
            // "This should never happen": reset the state and read array.
            wcycle = 0
            cmd = 0
            return dataRead(offset, width)
        }
    }

    /// QEMU `pflash_mem_write_with_attrs`. Returns false when the write was refused (`secure`, not from SMM).
    @discardableResult
    public func write(offset: Int, width: Int, value: UInt32, fromSMM: Bool) -> Bool {
        guard valid(offset, width) else { return true }
        if secure && !fromSMM {
            counters.nonSMMWritesRefused += 1
            return false
        }
        counters.writes += 1
        let c = UInt8(truncatingIfNeeded: value)
        if wcycle == 0 {
            if romd { counters.leftROMD += 1 }
            romd = false
        }
        switch wcycle {
        case 0:
            switch c {
            case 0x00, 0xF0, 0xFF:
                readArray()
                return true
            case 0x10, 0x40, 0x60, 0x98:
                break
            case 0x20:
                let base = offset & ~(Self.sectorLength - 1)
                if !readOnly {
                    // SAFETY: base is a sector start inside the flash (size is a multiple of the sector length).
                    (storage + base).initializeMemory(as: UInt8.self, repeating: 0xFF, count: Self.sectorLength)
                    counters.sectorsErased += 1
                    onUpdate?(base, Self.sectorLength)
                } else {
                    status |= Self.statusEraseError
                    counters.readOnlyErrors += 1
                }
                status |= Self.statusReady
            case 0x50:
                status = 0
                readArray()
                return true
            case 0x70, 0x90:
                cmd = c
                return true
            case 0xE8:
                status |= Self.statusReady
            default:
                readArray()
                return true
            }
            wcycle += 1
            cmd = c
        case 1:
            switch cmd {
            case 0x10, 0x40:
                program(offset, value, width)
                status |= Self.statusReady
                wcycle = 0
            case 0x20, 0x28:
                if c == 0xD0 {
                    wcycle = 0
                    status |= Self.statusReady
                } else {
                    readArray()
                }
            case 0xE8:
                counter = UInt64(c)  // masked to the bank width (1 byte)
                wcycle += 1
            case 0x60:
                if c == 0xD0 || c == 0x01 {
                    wcycle = 0
                    status |= Self.statusReady
                } else {
                    readArray()
                }
            case 0x98:
                if c == 0xFF { readArray() }  // any other value: "leaving query mode", which QEMU does not do
            default:
                readArray()
            }
        case 2:
            guard cmd == 0xE8 else {
                readArray()
                return true
            }
            store(offset, value, width)
            status |= Self.statusReady
            if counter == 0 {
                wcycle += 1
                if !readOnly {
                    onUpdate?(offset & ~(Self.writeBlockSize - 1), Self.writeBlockSize)
                } else {
                    status |= Self.statusProgramError
                }
            }
            counter &-= 1
        case 3:
            if cmd == 0xE8 && c == 0xD0 {
                wcycle = 0
                status |= Self.statusReady
            } else {
                readArray()
            }
        default:
            readArray()
        }
        return true
    }

    /// Byte program: the data, then the drive update of just those bytes.
    private func program(_ offset: Int, _ value: UInt32, _ width: Int) {
        if store(offset, value, width) { onUpdate?(offset, width) }
    }

    /// Program data to the storage, or the program error on a read-only flash. True when it was stored.
    @discardableResult
    private func store(_ offset: Int, _ value: UInt32, _ width: Int) -> Bool {
        guard !readOnly else {
            status |= Self.statusProgramError
            counters.readOnlyErrors += 1
            return false
        }
        dataWrite(offset, value, width)
        counters.bytesProgrammed += width
        return true
    }

    /// QEMU's `mode_read_array` label.
    private func readArray() {
        enterROMD()
        wcycle = 0
        cmd = 0
    }
}
