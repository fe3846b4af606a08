// SPDX-License-Identifier: MIT

/// Who performs a device access: the vCPU index and whether it is in System Management Mode.
///
/// QEMU passes the equivalent through `MemTxAttrs` (`secure`, `requester_id`) and `current_cpu`.
public struct AccessContext: Sendable, Equatable {
    /// Index of the vCPU doing the access (its APIC ID in minivmm).
    public var cpu: Int
    /// Whether that vCPU is in SMM (QEMU `MemTxAttrs.secure` on x86).
    public var inSMM: Bool

    public init(cpu: Int, inSMM: Bool) {
        self.cpu = cpu
        self.inSMM = inSMM
    }
}

/// What a device access asks the machine to do. Devices never reach into the machine themselves: they
/// return effects and the machine, which owns vCPUs and memory, applies them under its lock.
public enum DeviceEffect: Sendable, Equatable {
    /// A byte written to the debug console (QEMU `isa-debugcon`).
    case console(UInt8)
    /// Stop the VM with this exit status, `(v << 1) | 1` (QEMU `isa-debug-exit`).
    case debugExit(status: Int64)
    /// A write to APM_CNT: raise an SMI (on every present CPU when ICH9 SMI broadcast is in use,
    /// QEMU `ich9_apm_ctrl_changed`). The command byte stays readable at port 0xB2.
    case broadcastSMI(command: UInt8)
    /// The Q35 MCH SMRAM decode (`0x9C`, `0x9D`, `0x9E`, `0x50`) changed (QEMU `mch_update_smram`,
    /// `mch_update_smbase_smram`).
    case smramControlChanged(SMRAMControl)
    /// The Q35 MCH PAM registers (0x90–0x96) changed: 0xC0000–0xFFFFF must be remapped (QEMU `mch_update_pam`).
    case pamChanged(PAMState)
    /// The guest asked for a system reset (QEMU `qemu_system_reset_request`), which minivmm does not model: the run ends.
    case systemResetRequest(String)
    /// An event on minivmm's report channel: `code << 24 | arg` written to `MINIVMM_PORT_REPORT`.
    case report(code: UInt8, arg: UInt32)
    /// The hotplug block asked to eject this CPU (QEMU `acpi_cpu_hotplug` eject, bit 3 of the control byte).
    case ejectCPU(Int)
    /// The guest wrote an `_OST` status for this CPU through the hotplug block (QEMU `acpi_cpu_ost` → the
    /// `ACPI_DEVICE_OST` QMP event), with the `_OST` event it wrote before.
    case ostStatus(cpu: Int, event: UInt32, status: UInt32)
    /// A bad register value or an access no device handles; the machine logs and counts it.
    case ignored(String)
}

/// A device on the port-I/O bus, like a QEMU `MemoryRegionOps` on the I/O address space: `offset` is
/// relative to the device's base port and `size` is 1, 2 or 4 (the bus rejects other sizes).
///
/// Devices are not thread-safe; the machine serializes every access under one lock.
public protocol PortIODevice: AnyObject {
    /// A short name for logs and bus errors (QEMU's memory region name, e.g. `"fwcfg"`).
    var name: String { get }
    /// Reads `size` bytes at `offset`; the bus masks the result to `size` bytes.
    func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32
    /// Writes the low `size` bytes of `value` at `offset` and returns what the machine must do.
    func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect]
}

/// The all-ones value of an access of `size` bytes: what an undecoded ISA/PCI read returns.
@inline(__always)
func allOnes(size: Int) -> UInt32 {
    size >= 4 ? 0xFFFF_FFFF : (UInt32(1) << UInt32(8 * max(size, 0))) &- 1
}

/// `value` masked to the low `size` bytes.
@inline(__always)
func masked(_ value: UInt32, size: Int) -> UInt32 {
    value & allOnes(size: size)
}
