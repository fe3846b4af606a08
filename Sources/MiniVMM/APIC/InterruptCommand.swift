// SPDX-License-Identifier: MIT
import GuestFirmware

/// The delivery mode field (bits 10:8) of the local APIC Interrupt Command Register (Intel SDM Vol. 3A 11.6.1).
/// The encoding 3 is reserved and has no case: an ICR write carrying it does not decode.
public enum DeliveryMode: UInt8, Sendable {
    case fixed = 0
    case lowestPriority = 1
    case smi = 2
    case nmi = 4
    case initIPI = 5
    case startup = 6
    case extINT = 7
}

/// Where an IPI goes: the ICR destination shorthand (bits 19:18) combined with the destination mode (bit 11)
/// and the destination field (xAPIC ICR bits 63:56, x2APIC ICR bits 63:32).
public enum IPIDestination: Sendable, Equatable {
    /// Physical destination mode, no shorthand: the CPU whose APIC ID equals the value.
    case physical(UInt32)
    /// Shorthand 01: the sender only.
    case selfOnly
    /// Shorthand 10, or the broadcast destination ID (0xFF xAPIC, 0xFFFFFFFF x2APIC): every CPU.
    case allIncludingSelf
    /// Shorthand 11: every CPU but the sender.
    case allExcludingSelf
    /// Logical destination mode, no shorthand. minivmm does not model logical destinations.
    case logical(UInt32)

    /// False for destinations minivmm does not route (logical mode); callers should report these.
    public var isSupported: Bool {
        if case .logical = self { return false }
        return true
    }

    /// The CPU indices this destination reaches. In minivmm the APIC ID is the CPU index.
    ///
    /// - Parameters:
    ///   - sender: the index of the CPU that wrote the ICR.
    ///   - present: the indices of the CPUs currently present (in any order).
    /// - Returns: the targets in ascending order. A physical ID that is not present gives no target; a logical
    ///   destination gives no target (see `isSupported`).
    public func targets(sender: Int, present: [Int]) -> [Int] {
        switch self {
        case .physical(let id):
            return present.contains(Int(id)) ? [Int(id)] : []
        case .selfOnly:
            return [sender]
        case .allIncludingSelf:
            return present.sorted()
        case .allExcludingSelf:
            return present.filter { $0 != sender }.sorted()
        case .logical:
            return []
        }
    }
}

/// A decoded Interrupt Command Register write (Intel SDM Vol. 3A 11.6.1, and 11.12.9 for the x2APIC form).
public struct InterruptCommand: Sendable, Equatable {
    /// Bits 7:0: the vector (for STARTUP, the page number of the start address).
    public var vector: UInt8
    /// Bits 10:8.
    public var mode: DeliveryMode
    /// Bit 14: true for assert, false for de-assert.
    public var level: Bool
    /// Bit 15: true for level-triggered, false for edge-triggered.
    public var triggerLevel: Bool
    /// Shorthand, destination mode and destination field, combined.
    public var destination: IPIDestination

    public init(vector: UInt8, mode: DeliveryMode, level: Bool, triggerLevel: Bool, destination: IPIDestination) {
        self.vector = vector
        self.mode = mode
        self.level = level
        self.triggerLevel = triggerLevel
        self.destination = destination
    }

    /// Delivery status (bit 12) is read-only and always reads 0 in minivmm: IPIs are delivered at once.
    static let deliveryStatusBit: UInt32 = 1 << 12
    static let destinationModeLogicalBit: UInt32 = 1 << 11
    static let levelAssertBit = UInt32(APIC_ICR_LEVEL_ASSERT)
    static let triggerLevelBit: UInt32 = 1 << 15
    static let shorthandMask: UInt32 = 0x000C_0000
    static let shorthandSelf = UInt32(APIC_ICR_DEST_SELF)
    static let shorthandAll = UInt32(APIC_ICR_DEST_ALL)
    static let shorthandAllButSelf = UInt32(APIC_ICR_DEST_ALL_BUT_SELF)

    /// Decodes the low dword common to both forms, with the destination field already extracted.
    private static func decode(low: UInt32, destinationID: UInt32, broadcastID: UInt32) -> InterruptCommand? {
        guard let mode = DeliveryMode(rawValue: UInt8((low >> 8) & 0x7)) else { return nil }
        let destination: IPIDestination
        switch low & shorthandMask {
        case shorthandSelf:
            destination = .selfOnly
        case shorthandAll:
            destination = .allIncludingSelf
        case shorthandAllButSelf:
            destination = .allExcludingSelf
        default:
            // KVM treats the all-ones ID as broadcast in either destination mode (kvm_apic_is_broadcast_dest).
            if destinationID == broadcastID {
                destination = .allIncludingSelf
            } else if low & destinationModeLogicalBit != 0 {
                destination = .logical(destinationID)
            } else {
                destination = .physical(destinationID)
            }
        }
        return InterruptCommand(
            vector: UInt8(truncatingIfNeeded: low), mode: mode, level: low & levelAssertBit != 0,
            triggerLevel: low & triggerLevelBit != 0, destination: destination)
    }

    /// Decodes the 64-bit x2APIC ICR (MSR 0x830): destination in bits 63:32, 0xFFFFFFFF is broadcast.
    /// Returns nil for the reserved delivery mode 3.
    public static func decodeX2APIC(_ icr: UInt64) -> InterruptCommand? {
        decode(low: UInt32(truncatingIfNeeded: icr), destinationID: UInt32(icr >> 32), broadcastID: 0xFFFF_FFFF)
    }

    /// Decodes the xAPIC ICR pair (MMIO 0x300 low, 0x310 high): destination in high bits 31:24, 0xFF is
    /// broadcast. Returns nil for the reserved delivery mode 3.
    public static func decodeXAPIC(low: UInt32, high: UInt32) -> InterruptCommand? {
        decode(low: low, destinationID: high >> 24, broadcastID: 0xFF)
    }

    /// INIT level de-assert (mode INIT, level 0, trigger level): a no-op on modern CPUs and in KVM, which
    /// accepts an INIT only when it is edge-triggered or asserts (`__apic_accept_irq`).
    public var isINITDeassert: Bool {
        mode == .initIPI && !level && triggerLevel
    }
}
