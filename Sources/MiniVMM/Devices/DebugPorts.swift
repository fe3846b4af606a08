// SPDX-License-Identifier: MIT
import GuestFirmware

/// QEMU `isa-debugcon` (OVMF's debug console), one port at `MINIVMM_PORT_DEBUGCON` (0x402).
///
/// A write emits the low byte of the value on minivmm's console; a read returns the readback byte,
/// 0xE9 by default like QEMU's `readback` property, so firmware can detect the port.
public final class DebugConsole: PortIODevice {
    public static let port = UInt16(MINIVMM_PORT_DEBUGCON)
    public static let length: UInt16 = 1

    public let name = "debugcon"
    /// QEMU `isa-debugcon.readback`.
    public var readback: UInt8

    public init(readback: UInt8 = 0xE9) {
        self.readback = readback
    }

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        UInt32(readback)
    }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        // QEMU debugcon_ioport_write: `unsigned char ch = val;` only the low byte is printed.
        [.console(UInt8(truncatingIfNeeded: value))]
    }
}

/// QEMU `isa-debug-exit` at `MINIVMM_PORT_DEBUG_EXIT` (0xF4) with `iosize=4`.
///
/// Writing v (masked to the access size, as QEMU's memory core hands it to `debug_exit_write`) stops the
/// VM with exit status `(v << 1) | 1`. Reads return 0.
public final class DebugExit: PortIODevice {
    public static let port = UInt16(MINIVMM_PORT_DEBUG_EXIT)
    public static let length: UInt16 = 4

    public let name = "isa-debug-exit"

    public init() {}

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 { 0 }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        let status = (UInt64(masked(value, size: size)) << 1) | 1
        return [.debugExit(status: Int64(status))]
    }
}

/// The ICH9 APM control/status ports (QEMU `hw/isa/apm.c` as used by `lpc_ich9.c`): APM_CNT at
/// `MINIVMM_PORT_APM_CNT` (0xB2) and APM_STS at `MINIVMM_PORT_APM_STS` (0xB3). Register at 0xB2, length 2.
///
/// A write to APM_CNT latches the command byte and raises an SMI (`.broadcastSMI`); SMI handlers read the
/// command back. APM_STS is a scratch byte. Like QEMU's `apm_ops` (`impl` size 1), wider accesses are split
/// into bytes: an `outw` to 0xB2 writes APM_CNT and APM_STS and raises one SMI.
public final class APMControl: PortIODevice {
    public static let port = UInt16(MINIVMM_PORT_APM_CNT)
    public static let length: UInt16 = 2

    public let name = "apm"
    /// APM_CNT: the last command written.
    public private(set) var command: UInt8 = 0
    /// APM_STS: scratch byte.
    public private(set) var status: UInt8 = 0
    /// With the ICH9 PM block as its gate (a `--firmware FILE` machine), a write to APM_CNT follows QEMU
    /// `ich9_apm_ctrl_changed`: commands 0x02/0x03 (ACPI enable/disable) only set/clear PM1_CNT.SCI_EN, and any
    /// other command raises an SMI only while SMI_EN.APMC_EN is set. Without it (the built-in firmwares, which
    /// never program the LPC bridge) every write raises an SMI, as before.
    public var gate: ICH9PMIO?
    /// APM_CNT writes that SMI_EN.APMC_EN (clear) kept from raising an SMI.
    public private(set) var gatedWrites = 0

    /// `ICH9_APM_ACPI_ENABLE`, `ICH9_APM_ACPI_DISABLE`.
    static let acpiEnableCommand: UInt8 = 0x02
    static let acpiDisableCommand: UInt8 = 0x03

    public init() {}

    /// Clears both registers (machine reset).
    public func reset() {
        command = 0
        status = 0
    }

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        var value: UInt32 = 0
        for index in 0..<size {
            let byte: UInt8
            switch Int(offset) + index {
            case 0: byte = command
            case 1: byte = status
            default: byte = 0xFF
            }
            value |= UInt32(byte) << UInt32(8 * index)
        }
        return value
    }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        var effects: [DeviceEffect] = []
        for index in 0..<size {
            let byte = UInt8(truncatingIfNeeded: value >> UInt32(8 * index))
            switch Int(offset) + index {
            case 0:
                command = byte
                if let pm = gate {
                    if byte == Self.acpiEnableCommand || byte == Self.acpiDisableCommand {
                        pm.apmACPICommand(enable: byte == Self.acpiEnableCommand)
                    } else if pm.apmSMIEnabled {
                        effects.append(.broadcastSMI(command: byte))
                    } else {
                        gatedWrites += 1
                    }
                } else {
                    effects.append(.broadcastSMI(command: byte))
                }
            case 1:
                status = byte
            default:
                effects.append(.ignored("APM write past APM_STS at \(hex(Int(Self.port) + Int(offset) + index))"))
            }
        }
        return effects
    }
}

/// minivmm's report channel at `MINIVMM_PORT_REPORT` (0x600), 4 bytes wide: the firmware reports events
/// with a 32-bit OUT of `code << 24 | arg` (`REPORT_*`), and reads the VMM's current command
/// (`MINIVMM_CMD_*`) with a 32-bit IN. Other widths are ignored.
public final class ReportPort: PortIODevice {
    public static let port = UInt16(MINIVMM_PORT_REPORT)
    public static let length: UInt16 = 4

    public let name = "minivmm-report"
    /// What a 32-bit IN returns: the VMM's command for the firmware.
    public var command = UInt32(MINIVMM_CMD_NONE)

    public init() {}

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        guard offset == 0, size == 4 else { return allOnes(size: size) }
        return command
    }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        guard offset == 0, size == 4 else {
            return [.ignored("Report channel write of \(size) bytes at offset \(offset): only 32-bit OUT at 0x600")]
        }
        return [.report(code: UInt8(truncatingIfNeeded: value >> 24), arg: value & 0x00FF_FFFF)]
    }
}

/// The SMM entry probe (`MINIVMM_PORT_SMM_ENTRY`): every SMI handler's first instruction is an OUT here, which
/// only gives the VMM an exit at SMM entry. The kvm backend records the entry from KVM's state at that exit;
/// the written value is never used. Reads return all-ones.
public final class SMMEntryProbe: PortIODevice {
    public let name = "smm-entry-probe"
    public init() {}

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 { allOnes(size: size) }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] { [] }
}
