// SPDX-License-Identifier: MIT

/// Byte-order helpers for the devices' register files and fw_cfg's items (x86 and PCI configuration space are
/// little-endian; fw_cfg's file directory and DMA descriptors are big-endian).

/// The little-endian bytes of an integer (fw_cfg's fixed items are little-endian).
func littleEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
}

/// The big-endian bytes of an integer (the file directory and DMA descriptors are big-endian).
func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    littleEndianBytes(value).reversed()
}

extension FixedWidthInteger {
    /// Reads a big-endian integer from `bytes` at `offset`.
    init(bigEndian bytes: [UInt8], at offset: Int) {
        self = bytes[offset..<(offset + Self.bitWidth / 8)].reduce(0) { $0 << 8 | Self($1) }
    }

    /// Reads a little-endian integer from `bytes` at `offset`.
    init(littleEndian bytes: [UInt8], at offset: Int) {
        self = bytes[offset..<(offset + Self.bitWidth / 8)].reversed().reduce(0) { $0 << 8 | Self($1) }
    }
}

extension Array where Element == UInt8 {
    /// Stores `value` little-endian at `offset` (the caller keeps the bytes in bounds).
    mutating func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        replaceSubrange(offset..<(offset + T.bitWidth / 8), with: littleEndianBytes(value))
    }

    /// The `count` bytes (at most 4) at `offset` as a little-endian value; bytes past the end read 0.
    func littleEndianUInt32(at offset: Int, count: Int) -> UInt32 {
        var value: UInt32 = 0
        for i in 0..<Swift.min(count, 4) where indices.contains(offset + i) {
            value |= UInt32(self[offset + i]) << UInt32(8 * i)
        }
        return value
    }
}
