// SPDX-License-Identifier: MIT
import GuestFirmware
import Logging

/// What a guest access to the CPU hotplug block asks of the machine.
///
/// Self-contained for now; the machine's general device-effect type will wrap it.
public enum HotplugEffect: Sendable, Equatable {
    /// The guest ejected this CPU (control bit 3): the machine must stop and park its vCPU (no RESET).
    case eject(cpu: Int)
    /// The access had no effect, for the stated reason (worth a line in the log or report).
    case ignored(String)
}

/// QEMU's "modern" ACPI CPU hotplug register block (QEMU `hw/acpi/cpu.c`, `docs/specs/acpi_cpu_hotplug.rst`),
/// 12 little-endian bytes at I/O port `MINIVMM_PORT_CPUHP_BASE` (0x0CD8, ICH9), with QEMU's exact semantics:
///
/// | offset | read | write |
/// |--------|------|-------|
/// | 0x0 (dword) | command data 2: 0 for GET_NEXT, arch ID bits 63:32 for GET_CPU_ID | CPU selector |
/// | 0x4 (byte)  | status: bit0 enabled, bit1 insert, bit2 remove, bit4 fw_remove | control: bit1 clears insert, else bit2 clears remove, else bit3 ejects, else bit4 sets fw_remove |
/// | 0x5 (byte)  | 0 | command: 0 GET_NEXT_CPU_WITH_EVENT, 1 OST_EVENT, 2 OST_STATUS, 3 GET_CPU_ID |
/// | 0x8 (dword) | command data: selector for GET_NEXT, arch ID bits 31:0 for GET_CPU_ID | OST event/status |
///
/// With an out-of-range selector, reads return 0 and writes other than to the selector are ignored. Eject and
/// fw_remove are refused for CPU 0 (QEMU's `first_cpu`) and for CPUs that are not present. GET_NEXT scans from
/// the selector with wrap-around and stops at the first CPU with insert, remove or fw_remove set; when no CPU
/// has an event the selector stays put. Commands ≥ 4 are ignored (the command register keeps its value).
/// Accesses of 1–4 bytes are valid (QEMU `.valid` min 1, max 4, no `.impl`), unaligned ones are not (QEMU
/// rejects them in `memory_region_access_valid`; they read 0). As in QEMU a narrow access is not merged: a
/// byte write at offset 0 replaces the whole selector, and a read returns the register masked to its width.
///
/// **minivmm extension (strategy B, `hotplug-smbase-register`):** vendor command `CPUHP_CMD_MINIVMM_SMBASE`
/// (0x80). With it selected, command data (offset 0x8, dword) is the selected CPU's SMBASE register, which
/// the VMM loads into the CPU's internal SMBASE when it is hot-added. Only a CPU in SMM may use it: outside SMM
/// reads return 0 and writes are dropped, and both are counted (`deniedSMBASEReads`, `deniedSMBASEWrites`).
/// Narrower writes to it are ignored. QEMU has no such command.
///
/// The VMM side (`plug`, `requestUnplug`) follows QEMU's `acpi_cpu_plug_cb` / `acpi_cpu_unplug_request_cb`;
/// raising the SCI is the machine's job. APIC ID (QEMU's arch ID) = CPU index. Not thread-safe.
public final class CPUHotplugController {
    /// Register offsets and bits, from the contract header.
    public static let length = Int(MINIVMM_CPUHP_LEN)
    static let offsetSelector = Int(CPUHP_W_CPU_SEL)
    static let offsetStatus = Int(CPUHP_R_CPU_STAT)
    static let offsetCommand = Int(CPUHP_W_CMD)
    static let offsetData = Int(CPUHP_RW_CMD_DATA)
    static let offsetData2 = Int(CPUHP_R_CMD_DATA2)
    static let statusEnabled = UInt32(CPUHP_STAT_ENABLED)
    static let statusInsert = UInt32(CPUHP_STAT_INSERT)
    static let statusRemove = UInt32(CPUHP_STAT_REMOVE)
    static let controlEject = UInt32(CPUHP_STAT_EJECT)
    static let statusFwRemove = UInt32(CPUHP_STAT_FW_REMOVE)
    static let commandGetNext = UInt8(CPUHP_CMD_GET_NEXT_CPU_WITH_EVENT)
    static let commandOSTEvent = UInt8(CPUHP_CMD_OST_EVENT)
    static let commandOSTStatus = UInt8(CPUHP_CMD_OST_STATUS)
    static let commandGetCPUID = UInt8(CPUHP_CMD_GET_CPU_ID)
    /// QEMU's `CPHP_CMD_MAX`: commands at or above it are ignored (except minivmm's vendor command).
    static let commandMax: UInt32 = 4
    static let commandSMBASE = UInt8(CPUHP_CMD_MINIVMM_SMBASE)

    /// One possible CPU's slot (QEMU `AcpiCpuStatus`).
    public struct CPUStatus: Sendable, Equatable {
        /// QEMU `cpu != NULL`: the CPU exists (status bit 0).
        public var present = false
        public var isInserting = false
        public var isRemoving = false
        /// OSPM asked firmware to eject (status bit 4).
        public var fwRemove = false
        /// Last `_OST` event and status the guest wrote.
        public var ostEvent: UInt32 = 0
        public var ostStatus: UInt32 = 0
        /// minivmm's SMM-only SMBASE register; nil until SMM code writes it.
        public var smbase: UInt32?

        var hasEvent: Bool { isInserting || isRemoving || fwRemove }
    }

    public let possibleCPUs: Int
    private var cpus: [CPUStatus]
    /// The CPU selector as last written (may be out of range).
    public private(set) var selector: UInt32 = 0
    /// The last accepted command.
    public private(set) var command: UInt8 = 0
    /// Vendor SMBASE accesses refused because the accessing CPU was not in SMM.
    public private(set) var deniedSMBASEReads = 0
    public private(set) var deniedSMBASEWrites = 0
    /// `_OST` status writes (QEMU emits an ACPI_DEVICE_OST QMP event for each); the values are in `status(cpu:)`.
    public private(set) var ostStatusWrites = 0

    private let logger = Logger(label: "minivmm.cpu-hotplug")

    /// - Parameters:
    ///   - possibleCPUs: the number of slots (QEMU's possible CPUs, minivmm's max CPUs).
    ///   - present: the CPUs that exist at boot; they carry no insert event (cold-plugged).
    public init(possibleCPUs: Int, present: Set<Int>) {
        precondition(possibleCPUs > 0, "the CPU hotplug block needs at least one CPU")
        self.possibleCPUs = possibleCPUs
        cpus = [CPUStatus](repeating: CPUStatus(), count: possibleCPUs)
        for cpu in present where cpus.indices.contains(cpu) {
            cpus[cpu].present = true
        }
    }

    // MARK: - VMM side

    /// Hot-adds `cpu`: present with an insert event. False when out of range or already present.
    @discardableResult
    public func plug(cpu: Int) -> Bool {
        guard cpus.indices.contains(cpu), !cpus[cpu].present else { return false }
        cpus[cpu].present = true
        cpus[cpu].isInserting = true
        return true
    }

    /// Asks the guest to remove `cpu` (remove event). False when out of range, not present or CPU 0 (QEMU
    /// refuses to unplug the boot CPU).
    @discardableResult
    public func requestUnplug(cpu: Int) -> Bool {
        guard cpus.indices.contains(cpu), cpu != 0, cpus[cpu].present else { return false }
        cpus[cpu].isRemoving = true
        return true
    }

    public func isPresent(_ cpu: Int) -> Bool {
        cpus.indices.contains(cpu) && cpus[cpu].present
    }

    /// CPUs with an insert, remove or fw_remove event pending (what GET_NEXT would find).
    public var pendingEventCount: Int {
        cpus.reduce(0) { $0 + ($1.hasEvent ? 1 : 0) }
    }

    /// The SMBASE register SMM code programmed for `cpu`; nil when out of range or never written.
    public func smbaseRegister(cpu: Int) -> UInt32? {
        cpus.indices.contains(cpu) ? cpus[cpu].smbase : nil
    }

    public func status(cpu: Int) -> CPUStatus? {
        cpus.indices.contains(cpu) ? cpus[cpu] : nil
    }

    // MARK: - Guest side

    /// QEMU's `.valid` rule: 1–4 bytes, naturally aligned, inside the block.
    private static func isValidAccess(offset: Int, size: Int) -> Bool {
        (1...4).contains(size) && offset >= 0 && offset + size <= length && offset & (size - 1) == 0
    }

    private func ignored(_ reason: String) -> HotplugEffect {
        logger.debug("\(reason)")
        return .ignored(reason)
    }

    private var selectedIndex: Int? {
        selector < UInt32(possibleCPUs) ? Int(selector) : nil
    }

    /// A guest read of `size` bytes at `offset` in the block (`cpu_hotplug_rd`).
    ///
    /// - Parameter inSMM: whether the CPU performing the access is in SMM (for the vendor SMBASE command).
    public func read(offset: Int, size: Int, inSMM: Bool) -> (value: UInt32, effect: HotplugEffect?) {
        guard Self.isValidAccess(offset: offset, size: size) else {
            return (0, ignored("invalid \(size)-byte read at offset \(offset)"))
        }
        guard let index = selectedIndex else {
            return (0, ignored("read with invalid CPU selector \(selector)"))
        }
        let cpu = cpus[index]
        var value: UInt32 = 0
        var effect: HotplugEffect?
        switch offset {
        case Self.offsetStatus:
            value |= cpu.present ? Self.statusEnabled : 0
            value |= cpu.isInserting ? Self.statusInsert : 0
            value |= cpu.isRemoving ? Self.statusRemove : 0
            value |= cpu.fwRemove ? Self.statusFwRemove : 0
        case Self.offsetData:
            switch command {
            case Self.commandGetNext:
                value = selector
            case Self.commandGetCPUID:
                value = UInt32(truncatingIfNeeded: UInt64(index))
            case Self.commandSMBASE:
                if inSMM {
                    value = cpu.smbase ?? 0
                } else {
                    deniedSMBASEReads += 1
                    effect = ignored("SMBASE register read of CPU \(index) outside SMM")
                }
            default:
                break
            }
        case Self.offsetData2:
            // GET_CPU_ID: arch ID bits 63:32, zero for APIC IDs; every other command reads 0.
            value = command == Self.commandGetCPUID ? UInt32(truncatingIfNeeded: UInt64(index) >> 32) : 0
        default:
            break
        }
        let mask: UInt32 = size == 4 ? 0xFFFF_FFFF : (1 << (UInt32(size) * 8)) - 1
        return (value & mask, effect)
    }

    /// A guest write of `size` bytes (`value` zero-extended) at `offset` in the block (`cpu_hotplug_wr`).
    ///
    /// - Parameter inSMM: whether the CPU performing the access is in SMM (for the vendor SMBASE command).
    /// - Returns: `.eject` when the machine must unplug a CPU, `.ignored` for a refused or meaningless write.
    @discardableResult
    public func write(offset: Int, size: Int, value: UInt32, inSMM: Bool) -> HotplugEffect? {
        guard Self.isValidAccess(offset: offset, size: size) else {
            return ignored("invalid \(size)-byte write at offset \(offset)")
        }
        if offset == Self.offsetSelector {
            selector = value
            return nil
        }
        guard let index = selectedIndex else {
            return ignored("write at offset \(offset) with invalid CPU selector \(selector)")
        }
        switch offset {
        case Self.offsetStatus:
            return writeControl(index, value)
        case Self.offsetCommand:
            return writeCommand(value)
        case Self.offsetData:
            return writeData(index, value, size: size, inSMM: inSMM)
        default:
            return ignored("write at offset \(offset): no register")
        }
    }

    /// Control byte: one action per write, in QEMU's priority order.
    private func writeControl(_ index: Int, _ value: UInt32) -> HotplugEffect? {
        if value & Self.statusInsert != 0 {
            cpus[index].isInserting = false
        } else if value & Self.statusRemove != 0 {
            cpus[index].isRemoving = false
        } else if value & Self.controlEject != 0 {
            guard cpus[index].present, index != 0 else {
                return ignored("eject of CPU \(index) refused (not present or first CPU)")
            }
            cpus[index].present = false
            cpus[index].fwRemove = false
            return .eject(cpu: index)
        } else if value & Self.statusFwRemove != 0 {
            guard cpus[index].present, index != 0 else {
                return ignored("fw_remove of CPU \(index) refused (not present or first CPU)")
            }
            cpus[index].fwRemove = true
        }
        return nil
    }

    private func writeCommand(_ value: UInt32) -> HotplugEffect? {
        guard value < Self.commandMax || value == UInt32(Self.commandSMBASE) else {
            return ignored("unknown command \(value)")
        }
        command = UInt8(value)
        if command == Self.commandGetNext {
            // QEMU's loop: from the selector, wrapping, stop at the first CPU with an event.
            let start = Int(selector)
            var iter = start
            repeat {
                if cpus[iter].hasEvent {
                    selector = UInt32(iter)
                    break
                }
                iter = iter + 1 < possibleCPUs ? iter + 1 : 0
            } while iter != start
        }
        return nil
    }

    private func writeData(_ index: Int, _ value: UInt32, size: Int, inSMM: Bool) -> HotplugEffect? {
        switch command {
        case Self.commandOSTEvent:
            cpus[index].ostEvent = value
        case Self.commandOSTStatus:
            cpus[index].ostStatus = value
            ostStatusWrites += 1
        case Self.commandSMBASE:
            guard inSMM else {
                deniedSMBASEWrites += 1
                return ignored("SMBASE register write of CPU \(index) outside SMM dropped")
            }
            guard size == 4 else { return ignored("SMBASE register write of \(size) bytes") }
            cpus[index].smbase = value
        default:
            return ignored("data write with command \(command) has no effect")
        }
        return nil
    }
}
