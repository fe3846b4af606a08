// SPDX-License-Identifier: MIT
import GuestFirmware

/// Guest-physical memory as a DMA-capable device sees it (QEMU `dma_memory_read`/`dma_memory_write` on
/// the device's address space). Returns nil/false when any byte is outside guest RAM.
public protocol GuestMemoryAccess: AnyObject {
    func readBytes(at gpa: UInt64, count: Int) -> [UInt8]?
    func writeBytes(_ bytes: [UInt8], at gpa: UInt64) -> Bool
    /// QEMU `dma_memory_set(as, addr, 0, len)`: zeroes in place, no buffer (a guest may ask for 4 GiB).
    func zeroBytes(at gpa: UInt64, count: Int) -> Bool
}

extension GuestMemoryAccess {
    public func zeroBytes(at gpa: UInt64, count: Int) -> Bool {
        var done = 0
        while done < count {
            let n = min(count - done, 1 << 16)
            guard writeBytes([UInt8](repeating: 0, count: n), at: gpa &+ UInt64(done)) else { return false }
            done += n
        }
        return true
    }
}

/// QEMU's firmware configuration device (`hw/nvram/fw_cfg.c`, `docs/specs/fw_cfg.rst`), x86 I/O flavour.
/// Register it at `MINIVMM_PORT_FWCFG_SEL` (0x510) with length `FwCfg.length` (12):
///
/// | port          | offset | access                                                                      |
/// |---------------|--------|-----------------------------------------------------------------------------|
/// | 0x510-0x511   | 0-1    | QEMU `fw_cfg_comb_mem_ops`: 16-bit write selects, 8-bit read returns the next data byte, 8-bit write is ignored (QEMU ≥ 2.4) |
/// | 0x512-0x513   | 2-3    | not decoded by QEMU: reads all-ones, writes ignored                         |
/// | 0x514-0x517   | 4-7    | DMA address high half, big-endian (`fw_cfg_dma_mem_ops`)                    |
/// | 0x518-0x51B   | 8-11   | DMA address low half, big-endian; the 32-bit write starts the transfer      |
///
/// Reads of 0x514-0x51B return the DMA signature "QEMU CFG" byte by byte. Items: signature (0x0000),
/// ID (0x0001, traditional + DMA), RAM size (0x0003), boot CPUs (0x0005), max CPUs (0x000F), the file
/// directory (0x0019) and files from 0x0020, sorted by name like QEMU's `fw_cfg_add_file_callback`.
/// Files are writable only through DMA and only when added writable.
public final class FwCfg: PortIODevice {
    /// Why a file could not be added.
    public enum FileError: Error, Equatable, CustomStringConvertible {
        case duplicate(String)
        case nameTooLong(String)
        case tooManyFiles(String)

        public var description: String {
            switch self {
            case .duplicate(let name): return "Duplicate fw_cfg file name \"\(name)\""
            case .nameTooLong(let name): return "fw_cfg file name \"\(name)\" is longer than 55 bytes"
            case .tooManyFiles(let name): return "No free fw_cfg file slot for \"\(name)\""
            }
        }
    }

    /// Runs when the item is selected (QEMU `FWCfgCallback select_cb`).
    public typealias SelectCallback = (FwCfg) -> Void
    /// Runs after a successful DMA write into the item (QEMU `FWCfgWriteCallback`), with the written range.
    public typealias WriteCallback = (FwCfg, _ offset: Int, _ length: Int) -> Void

    public static let port = UInt16(MINIVMM_PORT_FWCFG_SEL)
    public static let length: UInt16 = 12
    /// `FW_CFG_DMA_SIGNATURE`: "QEMU CFG" as a big-endian u64.
    public static let dmaSignature: UInt64 = 0x5145_4D55_2043_4647
    /// `FW_CFG_VERSION | FW_CFG_VERSION_DMA`.
    public static let idTraditionalAndDMA: UInt32 = 0x3
    /// `FW_CFG_ENTRY_MASK`: the write-channel (0x4000) and arch-local (0x8000) bits are not part of the index.
    static let entryMask: UInt16 = 0x3FFF
    static let archLocal: UInt16 = 0x8000
    static let fileNameSize = 56
    static let dmaDescriptorSize = 16

    final class Item {
        var data: [UInt8]
        let writable: Bool
        let onSelect: SelectCallback?
        let onWrite: WriteCallback?

        init(data: [UInt8], writable: Bool, onSelect: SelectCallback?, onWrite: WriteCallback?) {
            self.data = data
            self.writable = writable
            self.onSelect = onSelect
            self.onWrite = onWrite
        }
    }

    struct File {
        let name: String
        let item: Item
    }

    public let name = "fwcfg"
    /// Guest memory for DMA; without it a DMA request cannot complete and is reported `.ignored`.
    public var memory: (any GuestMemoryAccess)?

    /// Fixed items below `FW_CFG_FILE_FIRST`, by key.
    private var items: [UInt16: Item] = [:]
    /// Arch-local items (key bit 15, QEMU `entries[1]`), by index.
    private var archItems: [UInt16: Item] = [:]
    /// Files, sorted by name; file i has selector `FW_CFG_FILE_FIRST + i`.
    private var files: [File] = []
    /// QEMU `cur_entry`; nil is `FW_CFG_INVALID`.
    public private(set) var currentKey: UInt16?
    /// QEMU `cur_offset`.
    public private(set) var currentOffset = 0
    /// QEMU `dma_addr`.
    private var dmaAddress: UInt64 = 0
    /// DMA transfers started (descriptor writes to 0x518).
    public private(set) var dmaTransfers = 0

    public init(ramSize: UInt64, bootCPUs: UInt16, maxCPUs: UInt16, memory: (any GuestMemoryAccess)? = nil) {
        self.memory = memory
        setItem(UInt16(FW_CFG_SIGNATURE), data: Array("QEMU".utf8))
        setItem(UInt16(FW_CFG_ID), data: littleEndianBytes(Self.idTraditionalAndDMA))
        setItem(UInt16(FW_CFG_RAM_SIZE), data: littleEndianBytes(ramSize))
        setItem(UInt16(FW_CFG_NB_CPUS), data: littleEndianBytes(bootCPUs))
        setItem(UInt16(FW_CFG_MAX_CPUS), data: littleEndianBytes(maxCPUs))
        rebuildDirectory()
        reset()
    }

    /// Machine reset (QEMU `fw_cfg_reset`): selects the signature and clears the DMA address.
    public func reset() {
        dmaAddress = 0
        select(UInt16(FW_CFG_SIGNATURE))
    }

    /// Sets a fixed item below `FW_CFG_FILE_FIRST` (QEMU `fw_cfg_add_bytes`), read-only.
    public func setItem(_ key: UInt16, data: [UInt8]) {
        precondition(key & Self.entryMask < UInt16(FW_CFG_FILE_FIRST), "fw_cfg key \(key) is a file slot")
        items[key & Self.entryMask] = Item(data: data, writable: false, onSelect: nil, onWrite: nil)
    }

    /// Sets an arch-local item (key 0x8000 | index, QEMU `FW_CFG_ARCH_LOCAL` entries such as x86's
    /// `FW_CFG_ACPI_TABLES` 0x8000 and `FW_CFG_IRQ0_OVERRIDE` 0x8002), read-only.
    public func setArchItem(_ key: UInt16, data: [UInt8]) {
        precondition(
            key & Self.archLocal != 0 && key & Self.entryMask < UInt16(FW_CFG_FILE_FIRST), "not an x86 arch key")
        archItems[key & Self.entryMask] = Item(data: data, writable: false, onSelect: nil, onWrite: nil)
    }

    /// Adds a file (QEMU `fw_cfg_add_file_callback`), keeping the directory sorted by name (`strcmp`), so
    /// files after the new one move up one selector, exactly as in QEMU.
    /// - Throws: `FileError` for a duplicate name, a name that does not fit the 56-byte field with its
    ///   NUL, or no selector left.
    public func addFile(
        name: String, data: [UInt8], writable: Bool = false, onSelect: SelectCallback? = nil,
        onWrite: WriteCallback? = nil
    ) throws {
        let bytes = Array(name.utf8)
        guard bytes.count < Self.fileNameSize else { throw FileError.nameTooLong(name) }
        guard !files.contains(where: { $0.name == name }) else { throw FileError.duplicate(name) }
        guard files.count < Int(Self.entryMask) - Int(FW_CFG_FILE_FIRST) else { throw FileError.tooManyFiles(name) }
        let index = files.firstIndex { bytes.lexicographicallyPrecedes(Array($0.name.utf8)) } ?? files.count
        files.insert(
            File(name: name, item: Item(data: data, writable: writable, onSelect: onSelect, onWrite: onWrite)),
            at: index)
        rebuildDirectory()
    }

    /// The contents of a file, as the guest would read them now.
    public func fileData(named name: String) -> [UInt8]? {
        files.first { $0.name == name }?.item.data
    }

    /// Replaces the contents of a file (QEMU `fw_cfg_modify_file`); the directory follows a size change.
    @discardableResult
    public func setFileData(named name: String, _ data: [UInt8]) -> Bool {
        guard let file = files.first(where: { $0.name == name }) else { return false }
        let resized = file.item.data.count != data.count
        file.item.data = data
        if resized { rebuildDirectory() }
        return true
    }

    /// The selector of a file (`FW_CFG_FILE_FIRST + index`).
    public func selector(ofFile name: String) -> UInt16? {
        files.firstIndex { $0.name == name }.map { UInt16(FW_CFG_FILE_FIRST) + UInt16($0) }
    }

    // MARK: PortIODevice

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        switch offset {
        case 0...1:
            // fw_cfg_comb_valid: only 8-bit reads; fw_cfg_data_read then returns the next byte.
            guard size == 1 else { return allOnes(size: size) }
            return UInt32(readDataByte())
        case 4...11:
            // fw_cfg_dma_mem_read: the signature bytes at these offsets, the device being big-endian.
            var value: UInt32 = 0
            for index in 0..<size {
                let at = Int(offset) - 4 + index
                let byte = at < 8 ? UInt8(truncatingIfNeeded: Self.dmaSignature >> UInt64(8 * (7 - at))) : 0xFF
                value |= UInt32(byte) << UInt32(8 * index)
            }
            return value
        default:
            return allOnes(size: size)
        }
    }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        switch (offset, size) {
        case (0...1, 2):
            select(UInt16(truncatingIfNeeded: value))
            return []
        case (0...1, 1):
            // fw_cfg_write: "nothing, write support removed in QEMU v2.4+".
            return []
        case (4, 4):
            dmaAddress = UInt64(value.byteSwapped) << 32
            return []
        case (8, 4):
            dmaAddress |= UInt64(value.byteSwapped)
            return dmaTransfer()
        default:
            return [.ignored("fw_cfg: \(size)-byte write at \(hex(Int(Self.port) + Int(offset))) is not valid")]
        }
    }

    // MARK: QEMU fw_cfg core

    /// QEMU `fw_cfg_select`: resets the offset and runs the item's select callback.
    func select(_ key: UInt16) {
        currentOffset = 0
        guard key & Self.entryMask < maxEntry else {
            currentKey = nil
            return
        }
        currentKey = key
        currentItem?.onSelect?(self)
    }

    /// QEMU `fw_cfg_data_read` for one byte: 0 past the end or with no valid item.
    func readDataByte() -> UInt8 {
        guard let item = currentItem, currentOffset < item.data.count else { return 0 }
        defer { currentOffset += 1 }
        return item.data[currentOffset]
    }

    /// QEMU `fw_cfg_dma_transfer`.
    func dmaTransfer() -> [DeviceEffect] {
        dmaTransfers += 1
        let descriptorAddress = dmaAddress
        dmaAddress = 0
        guard let memory else {
            return [.ignored("fw_cfg: DMA request at \(hex(descriptorAddress)) without guest memory")]
        }
        guard let raw = memory.readBytes(at: descriptorAddress, count: Self.dmaDescriptorSize),
            raw.count == Self.dmaDescriptorSize
        else {
            _ = memory.writeBytes(bigEndianBytes(UInt32(FW_CFG_DMA_CTL_ERROR)), at: descriptorAddress)
            return [.ignored("fw_cfg: DMA descriptor at \(hex(descriptorAddress)) is outside guest memory")]
        }
        var control = UInt32(bigEndian: raw, at: 0)
        var length = UInt64(UInt32(bigEndian: raw, at: 4))
        var address = UInt64(bigEndian: raw, at: 8)

        if control & UInt32(FW_CFG_DMA_CTL_SELECT) != 0 {
            select(UInt16(truncatingIfNeeded: control >> 16))
        }
        let item = currentItem
        let isRead = control & UInt32(FW_CFG_DMA_CTL_READ) != 0
        let isWrite = !isRead && control & UInt32(FW_CFG_DMA_CTL_WRITE) != 0
        if !isRead && !isWrite && control & UInt32(FW_CFG_DMA_CTL_SKIP) == 0 {
            length = 0
        }
        control = 0
        let error = UInt32(FW_CFG_DMA_CTL_ERROR)

        while length > 0 && control & error == 0 {
            let chunk: UInt64
            if let item, currentOffset < item.data.count {
                chunk = min(length, UInt64(item.data.count - currentOffset))
                let range = currentOffset..<(currentOffset + Int(chunk))
                if isRead && !memory.writeBytes(Array(item.data[range]), at: address) {
                    control |= error
                }
                if isWrite {
                    if !item.writable || chunk != length {
                        control |= error
                    } else if let bytes = memory.readBytes(at: address, count: Int(chunk)), bytes.count == Int(chunk) {
                        item.data.replaceSubrange(range, with: bytes)
                        item.onWrite?(self, range.lowerBound, range.count)
                    } else {
                        control |= error
                    }
                }
                currentOffset += Int(chunk)
            } else {
                // Past the item's end a read fills zeros (QEMU dma_memory_set): in place, bounded by guest RAM
                // (a range outside it fails at once), never a buffer of the guest's length.
                chunk = length
                if isRead && !memory.zeroBytes(at: address, count: Int(chunk)) {
                    control |= error
                }
                if isWrite {
                    control |= error
                }
            }
            address &+= chunk
            length -= chunk
        }
        _ = memory.writeBytes(bigEndianBytes(control), at: descriptorAddress)
        return []
    }

    // MARK: Helpers

    /// QEMU `fw_cfg_max_entry`: an exclusive limit on the entry index.
    private var maxEntry: UInt16 { UInt16(FW_CFG_FILE_FIRST) + UInt16(files.count) }

    private var currentItem: Item? {
        guard let key = currentKey else { return nil }
        let index = key & Self.entryMask
        if key & Self.archLocal != 0 { return archItems[index] }
        if index >= UInt16(FW_CFG_FILE_FIRST) {
            let fileIndex = Int(index) - Int(FW_CFG_FILE_FIRST)
            return fileIndex < files.count ? files[fileIndex].item : nil
        }
        return items[index]
    }

    /// Regenerates item 0x0019: be32 count, then per file be32 size, be16 select, be16 reserved, name[56].
    private func rebuildDirectory() {
        var directory = bigEndianBytes(UInt32(files.count))
        for (index, file) in files.enumerated() {
            directory += bigEndianBytes(UInt32(file.item.data.count))
            directory += bigEndianBytes(UInt16(FW_CFG_FILE_FIRST) + UInt16(index))
            directory += [0, 0]
            var name = Array(file.name.utf8)
            name += [UInt8](repeating: 0, count: Self.fileNameSize - name.count)
            directory += name
        }
        items[UInt16(FW_CFG_FILE_DIR)] = Item(data: directory, writable: false, onSelect: nil, onWrite: nil)
    }
}
