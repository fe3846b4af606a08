// SPDX-License-Identifier: MIT

/// COM1 at 0x3F8 as QEMU's q35 has it (`isa-serial`, a 16550A: hw/char/serial.c), transmit side only: what the
/// firmware writes to THR appears on minivmm's console like the debug console's bytes (OVMF's exception handlers
/// print their dump there, in SMM too). Only for `--stock` machines.
///
/// - THR (offset 0, DLAB 0) write: one byte to the console. RBR reads 0 (nothing is ever received).
/// - DLL/DLM (offsets 0/1 with LCR.DLAB), IER, LCR, MCR, SCR: storage, as QEMU's reset leaves them (all 0).
/// - IIR (offset 2) reads 0x01 (no interrupt pending; interrupts are not modelled), FCR writes are ignored.
/// - LSR (offset 5) reads 0x60 (THRE | TEMT: the transmitter is always empty), MSR (offset 6) 0xB0 (DCD, DSR, CTS,
///   QEMU's reset value).
public final class SerialPort: PortIODevice {
    public static let port: UInt16 = 0x3F8
    public static let length: UInt16 = 8
    static let lcrDLAB: UInt8 = 0x80

    public let name = "serial0"
    private var regs = [UInt8](repeating: 0, count: 8)  // DLL, IER, -, LCR, MCR, -, -, SCR
    private var dlm: UInt8 = 0

    public init() {}

    private var dlab: Bool { regs[3] & Self.lcrDLAB != 0 }

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        switch offset {
        case 0: return dlab ? UInt32(regs[0]) : 0
        case 1: return dlab ? UInt32(dlm) : UInt32(regs[1])
        case 2: return 0x01
        case 3, 4, 7: return UInt32(regs[Int(offset)])
        case 5: return 0x60
        case 6: return 0xB0
        default: return 0xFF
        }
    }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        let b = UInt8(truncatingIfNeeded: value)
        switch offset {
        case 0:
            if dlab {
                regs[0] = b
                return []
            }
            return [.console(b)]
        case 1:
            if dlab { dlm = b } else { regs[1] = b & 0x0F }
        case 3, 4, 7:
            regs[Int(offset)] = b
        default:
            break
        }
        return []
    }
}
