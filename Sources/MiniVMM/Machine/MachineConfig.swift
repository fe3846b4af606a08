// SPDX-License-Identifier: MIT
import Foundation
import GuestFirmware

/// A failure of the machine or of its configuration: one readable line each.
public enum MachineError: Error, CustomStringConvertible, Equatable {
    case invalidConfiguration(String)
    case firmware(String)
    case hostResources(String)
    case kvm(String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let s), .firmware(let s), .hostResources(let s), .kvm(let s): s
        }
    }

    /// The process exit status for this error: 64 (EX_USAGE) for bad input, 3 when the host (KVM, memory,
    /// fds) cannot run the machine. 1 and 2 are reserved for failed invariants and unfinished runs.
    public var exitCode: Int32 {
        switch self {
        case .invalidConfiguration, .firmware: 64
        case .hostResources, .kvm: 3
        }
    }
}

/// Which firmware a run boots: the built-in scenario image, the built-in conformance image, or a file.
public enum FirmwareKind: String, Codable, Sendable {
    /// The built-in firmware: the hotplug scenario, judged by the invariants of DESIGN.md §5.
    case builtin
    /// The built-in conformance firmware: judged by its own PASS/FAIL lines and its isa-debug-exit status.
    case conformance
    /// A `--firmware FILE` image.
    case file
    /// A `--firmware FILE --stock` image: stock firmware (SeaBIOS, OVMF) on QEMU's q35 as it expects it (no minivmm
    /// ports, APM SMIs gated by SMI_EN), described by findings instead of judged by the built-in invariants.
    case stock
}

/// Everything one run needs. `validate` turns every bad input into a one-line error before any KVM work.
public struct MachineConfig: Sendable {
    public var maxCPUs: Int = 8
    public var bootCPUs: Int = 2
    /// CPUs to hot-add after boot (must be ≥ bootCPUs and < maxCPUs).
    public var hotAdd: [Int] = []
    public var hotplugReset = false
    /// CPUs to hot-remove after the hot-adds (the OS ejects them the strategy's way: C from SMM, as OVMF does).
    public var hotRemove: [Int] = []
    public var strategy: Strategy = .relocateAllAtBoot
    /// `--attack`: what the built-in firmware's OS loop does before each hot-add (nil: nothing).
    public var attack: Attack?
    public var ramBytes: UInt64 = 128 << 20
    /// MiB of extended TSEG offered through Q35 register 0x50 (0 = sized from maxCPUs).
    public var tsegMiB: UInt16 = 0
    public var firmware: [UInt8] = []
    public var firmwareName = "built-in"
    public var firmwareKind: FirmwareKind = .builtin
    /// `--pflash CODE,VARS`: `firmware` is the code flash (unit 0, read-only) and this the variable store (unit 1,
    /// writable), both QEMU `cfi.pflash01` devices instead of a `-bios` ROM (nil: no pflash).
    public var pflashVars: [UInt8]?
    public var pflashVarsPath: String?
    /// `--pflash-persist`: the variable store's writes go back to its file (else they live in memory for the run).
    public var pflashPersist = false
    /// The flashes' `secure` property: commands only from SMM (on unless `--no-pflash-secure`).
    public var pflashSecure = true
    /// Whether the guest CPUID advertises long mode (chooses the AMD64 save-state map, as KVM does).
    public var longMode = true
    /// The SMM backend (`.emulated` or `.kvm`; the CLI resolves `--smm auto` before building the config).
    public var backend: SMMBackendKind = .emulated
    /// kvm backend: also watch SMM entry with a hardware instruction breakpoint at SMBASE+0x8000
    /// (`KVM_GUESTDBG_USE_HW_BP`), which observes the entry of a firmware without the entry probe exactly where the
    /// host honours it. It replaces the guest's own DR0-DR3 breakpoints while armed (KVM loads `eff_db` from the
    /// VMM's), so it is off unless asked for.
    public var smmEntryBreakpoint = false
    /// kvm backend: single-step SMM code from the first exit of a session to its RSM (and arm stepping with each
    /// `KVM_SMI`). Off (`--no-smm-stepping`): SMIs are observed at exit granularity only, for firmware whose SMM
    /// code is too long to step (OVMF's: millions of instructions per boot, ~31 µs per step in the nested lane).
    public var smmStepping = true
    public var timeoutSeconds: Double = 300
    /// At most this many vCPUs per KVM VM, below what this host's KVM allows (nil: KVM's own limit). The emulated
    /// backend spreads its vCPUs over as many VMs as that takes (`VCPUShards`); tests set it low to exercise that
    /// with a few CPUs. The kvm backend, which needs one VM, treats it as its limit.
    public var vcpusPerVM: Int?
    /// `--until-console TEXT`: the run completes when the guest's debug console prints this text (for firmware
    /// that never exits, such as SeaBIOS's "No bootable device").
    public var untilConsole: String?
    /// `--until-smram-locked`: the run completes once the firmware has locked SMRAM: TSEG closed with SMRAM.D_LCK,
    /// and the default-SMBASE window locked too if the firmware enabled it (OVMF's `SmramAccessLock` order). For
    /// firmware that never exits, such as OVMF, whose debug console is empty in a release build.
    public var untilSMRAMLocked = false
    public var trace = false
    public var quiet = false
    /// Echo the guest's debug console to stdout.
    public var console = true

    public init() {}

    /// The TSEG size in MiB this run offers: enough for the firmware's per-CPU 1 KiB tiles plus the 64 KiB
    /// the last tile's save-state map needs, rounded up to whole MiB.
    public var effectiveTSEGMiB: UInt16 {
        if tsegMiB != 0 { return tsegMiB }
        // Stock firmware gets QEMU q35's default extended TSEG (`mch.extended-tseg-mbytes` = 16): OVMF sizes its
        // SMRAM from what 0x50 reports and needs several MiB.
        if firmwareKind == .stock { return 16 }
        let bytes = UInt64(0x10000) + UInt64(max(maxCPUs, 1)) * UInt64(MINIVMM_SMM_TILE)
        return UInt16(max(1, (bytes + (1 << 20) - 1) >> 20))
    }

    /// The default hot-add set: the first CPU removed at boot, one in the middle and the highest.
    public static func defaultHotAdd(maxCPUs: Int, bootCPUs: Int) -> [Int] {
        guard maxCPUs > bootCPUs else { return [] }
        return Array(Set([bootCPUs, (bootCPUs + maxCPUs - 1) / 2, maxCPUs - 1])).sorted()
    }

    /// The most CPUs minivmm models (the emulated backend's limit): the built-in firmware's per-CPU tables (SMI
    /// counts, relocation flags, 1 KiB SMRAM tiles) and the CPU hotplug block are sized for this many x2APIC IDs, as
    /// QEMU's q35 machine allows 4096 CPUs. KVM's per-VM limit does not bound the emulated backend: it spreads its
    /// vCPUs over several VMs (`VCPUShards`).
    public static let modelMaxCPUs = Int(MINIVMM_MAX_CPUS_LIMIT)

    /// The error for `--max-cpus n` above ``modelMaxCPUs`` (the CLI's range check says the same).
    public static func aboveModelLimit(_ n: Int) -> String {
        "--max-cpus \(n) exceeds minivmm's model limit of \(modelMaxCPUs) CPUs (the firmware's per-CPU tables and TSEG tiles are sized for it, as QEMU q35 allows)"
    }

    /// Checks the configuration against this host's KVM limit (`KVM_CAP_MAX_VCPUS`, which binds only the kvm
    /// backend: one VM holds every CPU there) and the emulated backend's own model limit.
    public func validate(kvmMaxVCPUs: Int) throws(MachineError) {
        if maxCPUs < 1 { throw .invalidConfiguration("--max-cpus must be at least 1 (got \(maxCPUs))") }
        if let n = vcpusPerVM, n < 1 {
            throw .invalidConfiguration("the vCPUs per KVM VM must be at least 1 (got \(n))")
        }
        if backend == .kvm {
            let limit = min(kvmMaxVCPUs, vcpusPerVM ?? kvmMaxVCPUs)
            if maxCPUs > limit {
                throw .invalidConfiguration(
                    "--max-cpus \(maxCPUs) exceeds this host's KVM limit of \(limit) vCPUs per VM (KVM_CAP_MAX_VCPUS); the kvm backend needs every CPU in one VM (KVM's SMM and in-kernel local APICs)"
                )
            }
        }
        if maxCPUs > Self.modelMaxCPUs { throw .invalidConfiguration(Self.aboveModelLimit(maxCPUs)) }
        if bootCPUs < 1 { throw .invalidConfiguration("--boot-cpus must be at least 1 (got \(bootCPUs))") }
        if bootCPUs > maxCPUs {
            throw .invalidConfiguration("--boot-cpus \(bootCPUs) is greater than --max-cpus \(maxCPUs)")
        }
        for c in hotAdd where c < bootCPUs || c >= maxCPUs {
            throw .invalidConfiguration(
                "--hot-add \(c) is not a CPU removed after boot (valid: \(bootCPUs)...\(maxCPUs - 1))")
        }
        if let dup = Dictionary(grouping: hotAdd, by: { $0 }).first(where: { $0.value.count > 1 })?.key {
            throw .invalidConfiguration("--hot-add lists CPU \(dup) twice")
        }
        for c in hotRemove where c < 1 || c >= maxCPUs || (c >= bootCPUs && !hotAdd.contains(c)) {
            throw .invalidConfiguration(
                "--hot-remove \(c) is not a CPU present after the hot-adds (valid: 1...\(max(bootCPUs - 1, 1)) or a --hot-add CPU; never CPU 0)"
            )
        }
        if let dup = Dictionary(grouping: hotRemove, by: { $0 }).first(where: { $0.value.count > 1 })?.key {
            throw .invalidConfiguration("--hot-remove lists CPU \(dup) twice")
        }
        if !timeoutSeconds.isFinite || timeoutSeconds <= 0 {
            throw .invalidConfiguration("--timeout must be a positive number of seconds")
        }
        try Self.validateFirmware(firmware)
        if let vars = pflashVars {
            try Self.validateFirmware(vars, name: "the pflash VARS image")
            if firmware.count + vars.count > Int(MINIVMM_FW_MAX_SIZE) {
                throw .firmware(
                    "the pflash pair is \(firmware.count + vars.count) bytes: QEMU maps at most 8 MiB of flash below 4 GiB"
                )
            }
        }
        let tseg = UInt64(effectiveTSEGMiB) << 20
        let tiles = UInt64(0x10000) + UInt64(maxCPUs - 1) * UInt64(MINIVMM_SMM_TILE)
        if firmwareName == "built-in" && tseg < tiles {
            throw .invalidConfiguration(
                "--tseg-mib \(effectiveTSEGMiB) is too small for --max-cpus \(maxCPUs): the built-in firmware's 1 KiB SMRAM tiles need \((tiles + 0xFFFFF) >> 20) MiB"
            )
        }
        let minRAM = tseg + Layout.oneMiB + (1 << 20)
        if ramBytes < minRAM {
            throw .invalidConfiguration(
                "RAM of \(ramBytes >> 20) MiB is too small for a \(tseg >> 20) MiB TSEG and the firmware (need at least \(minRAM >> 20) MiB)"
            )
        }
        if ramBytes > Layout.pciHoleStart {
            throw .invalidConfiguration("RAM above \(Layout.pciHoleStart >> 20) MiB is not supported (32-bit guest)")
        }
        if ramBytes % (1 << 20) != 0 { throw .invalidConfiguration("RAM size must be a whole number of MiB") }
    }

    /// A flat firmware image as QEMU's `-bios`: non-empty, a multiple of 4 KiB, at most 8 MiB.
    public static func validateFirmware(_ image: [UInt8], name: String = "firmware") throws(MachineError) {
        if image.isEmpty { throw .firmware("\(name) is empty") }
        if image.count % 4096 != 0 {
            throw .firmware("\(name) is \(image.count) bytes, not a multiple of 4 KiB")
        }
        if image.count > Int(MINIVMM_FW_MAX_SIZE) {
            throw .firmware("\(name) is \(image.count) bytes, larger than the \(MINIVMM_FW_MAX_SIZE >> 20) MiB allowed")
        }
    }

    /// Loads a firmware file with the checks above.
    public static func loadFirmware(path: String) throws(MachineError) -> [UInt8] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw .firmware("firmware file \(path) does not exist")
        }
        if isDir.boolValue { throw .firmware("firmware file \(path) is a directory") }
        // The size first: a huge file is refused without reading it.
        if let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber,
            size.int64Value > Int64(MINIVMM_FW_MAX_SIZE)
        {
            throw .firmware(
                "firmware file \(path) is \(size.int64Value) bytes, larger than the \(MINIVMM_FW_MAX_SIZE >> 20) MiB allowed"
            )
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .firmware("firmware file \(path) cannot be read")
        }
        let bytes = [UInt8](data)
        try validateFirmware(bytes, name: "firmware file \(path)")
        return bytes
    }
}
