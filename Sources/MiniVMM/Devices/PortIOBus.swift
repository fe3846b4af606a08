// SPDX-License-Identifier: MIT

/// Why a device could not be put on the port-I/O bus.
public enum BusError: Error, Equatable, CustomStringConvertible {
    /// The device asked for a range of zero ports.
    case zeroLength(device: String, base: UInt16)
    /// The range runs past port 0xFFFF.
    case overflow(device: String, base: UInt16, length: UInt16)
    /// The range overlaps a device already on the bus.
    case overlap(device: String, range: ClosedRange<UInt16>, existing: String, existingRange: ClosedRange<UInt16>)

    public var description: String {
        switch self {
        case .zeroLength(let device, let base):
            return "Device \(device) at port \(hex(base)) has a zero-length port range"
        case .overflow(let device, let base, let length):
            return "Device \(device) at port \(hex(base)) with length \(hex(length)) runs past port 0xFFFF"
        case .overlap(let device, let range, let existing, let existingRange):
            return
                "Device \(device) at ports \(hex(range.lowerBound))-\(hex(range.upperBound)) overlaps "
                + "device \(existing) at ports \(hex(existingRange.lowerBound))-\(hex(existingRange.upperBound))"
        }
    }
}

/// The x86 port-I/O address space: devices registered on non-overlapping port ranges, like QEMU's
/// `address_space_io` (or kvmtool's `kvm__register_pio`, Firecracker's `Bus`).
///
/// An access is dispatched by its first port; a multi-byte access that runs past the end of a device's
/// range still goes to that device, which sees `offset + size > length`. `rep ins/outs` are looped by the
/// VMM one element at a time. Not thread-safe: the machine serializes accesses.
public final class PortIOBus {
    /// The direction of an I/O access.
    public enum Direction: String, Sendable, Hashable {
        case read
        case write
    }

    /// A port and direction, the key of the access counters.
    public struct AccessKey: Sendable, Hashable, CustomStringConvertible {
        public var port: UInt16
        public var direction: Direction

        public init(port: UInt16, direction: Direction) {
            self.port = port
            self.direction = direction
        }

        public var description: String { "\(direction) \(hex(port))" }
    }

    /// A device and its range on the bus.
    public struct Registration {
        public let device: any PortIODevice
        public let range: ClosedRange<UInt16>
        /// False once the device was unregistered (its ports decode nothing).
        public var active = true
    }

    /// Every registered device, in registration order.
    public private(set) var registrations: [Registration] = []
    /// Accesses to ports no device decodes, counted per port and direction. Reads return all-ones
    /// (QEMU `unassigned_io_ops`), writes are dropped.
    public private(set) var unknownAccesses: [AccessKey: Int] = [:]
    /// Accesses with a size other than 1, 2 or 4, counted per port and direction.
    public private(set) var badAccesses: [AccessKey: Int] = [:]

    /// Index + 1 into `registrations` for each of the 65536 ports; 0 means no device.
    private var slots: [UInt16]

    public init() {
        slots = [UInt16](repeating: 0, count: 0x1_0000)
    }

    /// Puts `device` on ports `base ..< base + length`.
    /// - Throws: `BusError` for a zero length, a range past 0xFFFF or an overlap with another device.
    public func register(_ device: any PortIODevice, base: UInt16, length: UInt16) throws {
        guard length > 0 else { throw BusError.zeroLength(device: device.name, base: base) }
        guard UInt32(base) + UInt32(length) <= 0x1_0000 else {
            throw BusError.overflow(device: device.name, base: base, length: length)
        }
        let range = base...(base + (length - 1))
        if let existing = registrations.first(where: { $0.active && $0.range.overlaps(range) }) {
            throw BusError.overlap(
                device: device.name, range: range, existing: existing.device.name, existingRange: existing.range)
        }
        // A device placed again (a relocatable block) reuses its own entry: the list never grows past one per device.
        let index: Int
        if let i = registrations.firstIndex(where: { !$0.active && $0.device === device }) {
            registrations[i] = Registration(device: device, range: range)
            index = i
        } else {
            registrations.append(Registration(device: device, range: range))
            index = registrations.count - 1
        }
        let slot = UInt16(index + 1)
        for port in range {
            slots[Int(port)] = slot
        }
    }

    /// Takes `device` off the bus (QEMU `memory_region_set_enabled(false)` on a relocatable block such as the ICH9
    /// PM I/O space). Its registration stays in the list with an empty decode, so the other slots keep their
    /// indices; registering it again decodes it at its new range.
    public func unregister(_ device: any PortIODevice) {
        for (i, r) in registrations.enumerated() where r.device === device {
            for port in r.range where slots[Int(port)] == UInt16(i + 1) {
                slots[Int(port)] = 0
            }
            registrations[i] = Registration(device: r.device, range: r.range, active: false)
        }
    }

    /// The device decoding `port`, with the port's offset inside it.
    public func device(at port: UInt16) -> (device: any PortIODevice, offset: UInt16)? {
        let slot = Int(slots[Int(port)])
        guard slot > 0 else { return nil }
        let registration = registrations[slot - 1]
        return (registration.device, port - registration.range.lowerBound)
    }

    /// An `IN` of `size` bytes from `port` (KVM_EXIT_IO, direction in). Unknown ports and bad sizes read
    /// as all-ones and are counted.
    public func read(port: UInt16, size: Int, context: AccessContext) -> UInt32 {
        let key = AccessKey(port: port, direction: .read)
        guard Self.isValid(size: size) else {
            badAccesses[key, default: 0] += 1
            return 0xFFFF_FFFF
        }
        guard let (device, offset) = device(at: port) else {
            unknownAccesses[key, default: 0] += 1
            return allOnes(size: size)
        }
        return masked(device.read(offset: offset, size: size, context: context), size: size)
    }

    /// An `OUT` of the low `size` bytes of `value` to `port` (KVM_EXIT_IO, direction out). Unknown ports
    /// and bad sizes are counted and give `.ignored`.
    public func write(port: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        let key = AccessKey(port: port, direction: .write)
        guard Self.isValid(size: size) else {
            badAccesses[key, default: 0] += 1
            return [.ignored("Port I/O write of \(size) bytes to \(hex(port)): size must be 1, 2 or 4")]
        }
        guard let (device, offset) = device(at: port) else {
            unknownAccesses[key, default: 0] += 1
            return [.ignored("Port I/O write of \(size) bytes to \(hex(port)): no device")]
        }
        return device.write(offset: offset, size: size, value: masked(value, size: size), context: context)
    }

    /// Total of `unknownAccesses`.
    public var unknownAccessCount: Int { unknownAccesses.values.reduce(0, +) }
    /// Total of `badAccesses`.
    public var badAccessCount: Int { badAccesses.values.reduce(0, +) }

    private static func isValid(size: Int) -> Bool { size == 1 || size == 2 || size == 4 }
}

/// `0x`-prefixed upper-case hexadecimal, for messages.
func hex<T: BinaryInteger>(_ value: T) -> String {
    "0x" + String(value, radix: 16, uppercase: true)
}
