// SPDX-License-Identifier: MIT

/// System control port A at 0x92 (QEMU `port92`, hw/input/i8042.c): bit 1 is the fast A20 gate, bit 0 the fast
/// reset. Reads return the last value written (0 at reset). Writing bit 0 as 1 when it was 0 requests a system reset
/// (QEMU `qemu_system_reset_request`), which minivmm does not model: the run ends with outcome `guest-reset`.
/// The A20 gate is stored only: KVM does not mask address line 20, so A20 is always enabled.
public final class Port92: PortIODevice {
    public static let port: UInt16 = 0x92
    public static let length: UInt16 = 1

    public let name = "port92"
    public private(set) var outport: UInt8 = 0

    public init() {}

    /// QEMU `port92_reset`: the reset bit clears, the A20 bit stays.
    public func reset() { outport &= ~1 }

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 { UInt32(outport) }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        let old = outport
        outport = UInt8(truncatingIfNeeded: value)
        guard outport & 1 != 0 && old & 1 == 0 else { return [] }
        return [.systemResetRequest("port 0x92 fast reset (bit 0)")]
    }
}
