// SPDX-License-Identifier: MIT
import Foundation

/// The MC146818 RTC and its CMOS RAM at ports 0x70/0x71 (QEMU `mc146818rtc`, hw/rtc/mc146818rtc.c), with the
/// bytes QEMU's `pc_cmos_init` and `x86_rtc_set_cpus_count` store for the PC BIOS. Register at `CMOS.port`,
/// length 2.
///
/// - 0x70 (write): index, bit 7 the NMI mask (QEMU keeps `data & 0x7f`); reads 0xFF as in QEMU.
/// - 0x71: the byte at the index. Time registers (0x00 seconds … 0x09 year, 0x32 century) read the host's UTC
///   time plus the offset the guest set by writing them, in BCD or binary (REG_B DM) and 24- or 12-hour
///   (REG_B 24/12) as REG_B selects. REG_A bit 7 (UIP) always reads 0: the update cycle is not modelled, so a
///   firmware waiting for UIP to clear never waits. REG_C reads 0 and clears; REG_D reads 0x80 (VRT), writes
///   ignored. Everything else is 128 bytes of storage.
public final class CMOS: PortIODevice {
    public static let port: UInt16 = 0x70
    public static let length: UInt16 = 2
    static let regA = 0x0A, regB = 0x0B, regC = 0x0C, regD = 0x0D, century = 0x32
    /// REG_B bits: SET 0x80, DM (binary) 0x04, 24/12 0x02.
    static let regBSet: UInt8 = 0x80, regBBinary: UInt8 = 0x04, regB24h: UInt8 = 0x02

    public let name = "rtc-cmos"
    public private(set) var index = 0
    public private(set) var bytes = [UInt8](repeating: 0, count: 128)
    /// Seconds added to the host's time (what the guest's writes to the time registers moved it by).
    public private(set) var offsetSeconds: Int64 = 0
    let now: () -> Int64

    /// - Parameters: `ramBytes` below 4 GiB, `bootCPUs` (QEMU `smp.cpus`), `now` the host's UTC time in seconds.
    public init(ramBytes: UInt64, bootCPUs: Int, now: @escaping () -> Int64 = { Int64(Date().timeIntervalSince1970) }) {
        self.now = now
        bytes = Self.initialBytes(ramBytes: ramBytes, bootCPUs: bootCPUs)
    }

    /// The CMOS contents QEMU's `mc146818rtc` reset and `pc_cmos_init` leave (time registers excluded: live).
    public static func initialBytes(ramBytes: UInt64, bootCPUs: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 128)
        b[regA] = 0x26  // 32.768 kHz divider, 1024 Hz rate
        b[regB] = regB24h
        b[regD] = 0x80
        func put16(_ at: Int, _ v: UInt64) { b.storeLittleEndian(UInt16(truncatingIfNeeded: v), at: at) }
        let kib: UInt64 = 1024, mib: UInt64 = 1 << 20
        put16(0x15, min(ramBytes / kib, 640))  // base memory
        let ext = ramBytes > mib ? min((ramBytes - mib) / kib, 65535) : 0
        put16(0x17, ext)
        put16(0x30, ext)
        let above16 = ramBytes > 16 * mib ? min((ramBytes - 16 * mib) / (64 * kib), 65535) : 0
        put16(0x34, above16)
        // 0x5B-0x5D: RAM above 4 GiB in 64 KiB units; minivmm's RAM ends below 4 GiB.
        b[0x5F] = UInt8(truncatingIfNeeded: max(bootCPUs, 1) - 1)
        b[0x14] = 0x02 | 0x04  // REG_EQUIPMENT_BYTE: FPU, PS/2 mouse
        b[0x3D] = 0x12  // boot order "cad": hard disk, then floppy
        b[0x38] = 0x30  // third device CD-ROM, floppy boot signature check on
        return b
    }

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        guard offset == 1 else { return 0xFF }
        switch index {
        case 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, Self.century:
            return UInt32(timeRegister(index))
        case Self.regA:
            return UInt32(bytes[Self.regA] & 0x7F)
        case Self.regC:
            let v = bytes[Self.regC]
            bytes[Self.regC] = 0
            return UInt32(v)
        default:
            return UInt32(bytes[index])
        }
    }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        let byte = UInt8(truncatingIfNeeded: value)
        if offset == 0 {
            index = Int(byte & 0x7F)
            return []
        }
        switch index {
        case 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, Self.century:
            setTimeRegister(index, byte)
        case Self.regA:
            bytes[Self.regA] = byte & 0x7F
        case Self.regC, Self.regD:
            break  // read-only
        case 0x01, 0x03, 0x05:
            bytes[index] = byte  // alarms: storage (no alarm interrupt is modelled)
        default:
            bytes[index] = byte
        }
        return []
    }

    // MARK: time

    private var binary: Bool { bytes[Self.regB] & Self.regBBinary != 0 }
    private var twentyFourHour: Bool { bytes[Self.regB] & Self.regB24h != 0 }

    /// The guest's calendar time now.
    func components() -> DateComponents {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = TimeZone(identifier: "UTC")!
        let (t, overflow) = now().addingReportingOverflow(offsetSeconds)
        let date = Date(timeIntervalSince1970: TimeInterval(overflow ? 0 : t))
        return cal.dateComponents([.year, .month, .day, .hour, .minute, .second, .weekday], from: date)
    }

    private func encode(_ v: Int) -> UInt8 {
        let v = max(0, min(v, 99))
        return binary ? UInt8(v) : UInt8((v / 10) << 4 | v % 10)
    }

    private func decode(_ b: UInt8) -> Int {
        binary ? Int(b) : Int(b >> 4) * 10 + Int(b & 0x0F)
    }

    func timeRegister(_ r: Int) -> UInt8 {
        let c = components()
        switch r {
        case 0x00: return encode(c.second ?? 0)
        case 0x02: return encode(c.minute ?? 0)
        case 0x04:
            let h = c.hour ?? 0
            if twentyFourHour { return encode(h) }
            let h12 = h % 12 == 0 ? 12 : h % 12
            return encode(h12) | (h >= 12 ? 0x80 : 0)
        case 0x06: return encode(c.weekday ?? 1)
        case 0x07: return encode(c.day ?? 1)
        case 0x08: return encode(c.month ?? 1)
        case 0x09: return encode((c.year ?? 2000) % 100)
        default: return encode((c.year ?? 2000) / 100)
        }
    }

    /// A write to a time register moves the guest's clock so that this field reads `b` (QEMU keeps a base time and
    /// an offset the same way). Out-of-range values are clamped into the calendar; nothing traps.
    private func setTimeRegister(_ r: Int, _ b: UInt8) {
        var c = components()
        var v = decode(r == 0x04 ? b & 0x7F : b)
        if r == 0x04 && !twentyFourHour {
            v = v % 12 + (b & 0x80 != 0 ? 12 : 0)
        }
        switch r {
        case 0x00: c.second = min(v, 59)
        case 0x02: c.minute = min(v, 59)
        case 0x04: c.hour = min(v, 23)
        case 0x06: return  // day of week follows the date
        case 0x07: c.day = max(1, min(v, 31))
        case 0x08: c.month = max(1, min(v, 12))
        case 0x09: c.year = ((c.year ?? 2000) / 100) * 100 + min(v, 99)
        default: c.year = min(v, 99) * 100 + (c.year ?? 2000) % 100
        }
        c.weekday = nil
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = TimeZone(identifier: "UTC")!
        guard let date = cal.date(from: c) else { return }
        let target = Int64(date.timeIntervalSince1970)
        offsetSeconds = target &- now()
    }
}
