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

/// One 8259A interrupt controller's registers (QEMU `i8259`, hw/intc/i8259.c): the master at 0x20, the slave at
/// 0xA0, two ports each. minivmm routes no device interrupt through it (there is no PIT, keyboard or IOAPIC input;
/// fixed interrupts reach CPUs only as local-APIC IPIs), so IRR and ISR stay 0 and a poll reads 0; what firmware
/// programs — the ICW1–ICW4 initialisation sequence, the mask (IMR), the OCW2 priority rotation, the OCW3 register
/// select, poll and special mask — is kept and read back exactly as QEMU's `pic_ioport_read`/`pic_ioport_write` do.
public final class I8259: PortIODevice {
    public static let masterPort: UInt16 = 0x20
    public static let slavePort: UInt16 = 0xA0
    public static let length: UInt16 = 2

    public let name: String
    public private(set) var imr: UInt8 = 0
    public private(set) var irr: UInt8 = 0
    public private(set) var isr: UInt8 = 0
    public private(set) var irqBase: UInt8 = 0
    public private(set) var priorityAdd: UInt8 = 0
    public private(set) var initState = 0
    private var init4 = false
    private var singleMode = false
    private var readISR = false
    private var poll = false
    public private(set) var specialMask = false
    public private(set) var autoEOI = false
    private var rotateOnAutoEOI = false
    private var specialFullyNested = false

    public init(master: Bool) { name = master ? "pic-master" : "pic-slave" }

    /// QEMU `pic_init_reset` (ICW1 and machine reset); IRR keeps only level-triggered lines, none here.
    public func reset() {
        imr = 0
        irr = 0
        isr = 0
        priorityAdd = 0
        irqBase = 0
        readISR = false
        poll = false
        specialMask = false
        initState = 0
        autoEOI = false
        rotateOnAutoEOI = false
        specialFullyNested = false
        init4 = false
        singleMode = false
    }

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        if poll {
            poll = false
            return 0  // no interrupt pending: QEMU returns 0
        }
        return UInt32(offset & 1 == 0 ? (readISR ? isr : irr) : imr)
    }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        let v = UInt8(truncatingIfNeeded: value)
        if offset & 1 == 0 {
            if v & 0x10 != 0 {  // ICW1
                reset()
                initState = 1
                init4 = v & 1 != 0
                singleMode = v & 2 != 0
            } else if v & 0x08 != 0 {  // OCW3
                if v & 0x04 != 0 { poll = true }
                if v & 0x02 != 0 { readISR = v & 1 != 0 }
                if v & 0x40 != 0 { specialMask = v & 0x20 != 0 }
            } else {  // OCW2: with ISR always 0 only the rotation state changes
                switch v >> 5 {
                case 0, 4: rotateOnAutoEOI = v >> 7 != 0
                case 6: priorityAdd = (v &+ 1) & 7
                case 7: priorityAdd = ((v & 7) &+ 1) & 7
                default: break
                }
            }
            return []
        }
        switch initState {
        case 1:  // ICW2
            irqBase = v & 0xF8
            initState = singleMode ? (init4 ? 3 : 0) : 2
        case 2:  // ICW3
            initState = init4 ? 3 : 0
        case 3:  // ICW4
            specialFullyNested = (v >> 4) & 1 != 0
            autoEOI = (v >> 1) & 1 != 0
            initState = 0
        default:  // OCW1
            imr = v
        }
        return []
    }
}

/// The ICH9 edge/level control registers for the two 8259s at 0x4D0 (master) and 0x4D1 (slave) (QEMU
/// `elcr_ioport_*`): storage under QEMU's masks 0xF8 and 0xDE (IRQs 0, 1, 2, 8 and 13 are always edge-triggered).
public final class ELCR: PortIODevice {
    public static let port: UInt16 = 0x4D0
    public static let length: UInt16 = 2
    static let masks: [UInt8] = [0xF8, 0xDE]

    public let name = "elcr"
    public private(set) var elcr: [UInt8] = [0, 0]

    public init() {}

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        var value: UInt32 = 0
        for i in 0..<size {
            let at = Int(offset) + i
            value |= UInt32(at < 2 ? elcr[at] : 0xFF) << UInt32(8 * i)
        }
        return value
    }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        for i in 0..<size where Int(offset) + i < 2 {
            let at = Int(offset) + i
            elcr[at] = UInt8(truncatingIfNeeded: value >> UInt32(8 * i)) & Self.masks[at]
        }
        return []
    }
}
