// SPDX-License-Identifier: MIT
import GuestFirmware

/// How firmware gives CPUs their SMBASE (DESIGN.md §1). The raw value is the CLI spelling.
public enum Strategy: String, Codable, CaseIterable, Sendable {
    case relocateAllAtBoot = "relocate-all-at-boot"
    case hotplugSMBASERegister = "hotplug-smbase-register"
    case smramAtDefaultSMBASE = "smram-at-default-smbase"
    case naive

    /// The id the firmware reads from fw_cfg `opt/org.minivmm/strategy` (its `strategy_table` row).
    public var firmwareID: UInt32 {
        switch self {
        case .relocateAllAtBoot: UInt32(MINIVMM_STRATEGY_RELOCATE_ALL_AT_BOOT)
        case .hotplugSMBASERegister: UInt32(MINIVMM_STRATEGY_HOTPLUG_SMBASE_REG)
        case .smramAtDefaultSMBASE: UInt32(MINIVMM_STRATEGY_SMRAM_AT_DEFAULT)
        case .naive: UInt32(MINIVMM_STRATEGY_NAIVE)
        }
    }

    /// Everything the VMM, the invariants, the CLI, bench and the report need to know about the strategy.
    public var spec: StrategySpec { StrategySpec.table[self]! }
}

/// Which CPUs exist when the machine starts.
public enum BootPresence: String, Codable, Sendable {
    /// Every possible CPU (strategy A boots them all and hot-removes the extras after relocating them).
    case allPossible = "all-possible"
    /// Only `--boot-cpus`; the others are hot-added later as new CPUs.
    case bootCPUsOnly = "boot-cpus-only"
}

/// What the VMM does to a CPU it hot-adds (before the firmware brings it up with INIT-SIPI-SIPI).
public enum HotAddAction: String, Codable, Sendable {
    /// Unpark the CPU as it was ejected: no RESET, so it keeps its relocated SMBASE (strategy A).
    case keepState = "keep-state"
    /// RESET, as QEMU does for every hot-plugged CPU: power-on registers, SMBASE 0x30000.
    case reset
    /// RESET, then load the CPU's internal SMBASE from its SMM-only SMBASE register in the hotplug block
    /// (strategy B; kvm backend: host-initiated `KVM_SET_MSRS` of MSR 0x9E).
    case resetLoadingSMBASERegister = "reset-loading-smbase-register"
}

/// One SMRAM window a strategy relies on.
public enum SMRAMWindowKind: String, Codable, Sendable, CaseIterable {
    /// The top `tseg` bytes of RAM, SMRAM once ESMRAMC.T_EN closes it.
    case tseg
    /// 0x30000–0x4FFFF, SMRAM once MCH register 0x9C is locked (QEMU `mch.smbase-smram`).
    case defaultSMBASE = "default-smbase"
    /// 0xA0000–0xBFFFF, SMRAM while SMRAM.G_SMRAME is set and D_OPEN is not (QEMU `low_smram`).
    case aSegment = "a-segment"
}

/// What an invariant must show for a strategy.
public enum Expectation: String, Codable, Sendable {
    /// The invariant must hold.
    case holds
    /// The strategy is insecure by design: the invariant must be seen to fail (the check's own test).
    case fails
    /// Not judged in this configuration (its outcome depends on a race the configuration itself creates).
    case either
}

/// A strategy's row in the table: one value per strategy, read by the CLI, bench, the machine, the invariants and
/// the report. The firmware's `strategy_table` has one row per strategy too, checked against
/// `MINIVMM_STRATEGY_COUNT` at assembly time and against `Strategy.allCases` in a test.
public struct StrategySpec: Sendable, Equatable {
    public let strategy: Strategy
    /// The letter DESIGN.md §1 uses (A, B, C, N).
    public let letter: String
    /// Whether the built-in firmware implements it.
    public let builtinFirmware: Bool
    public let bootPresence: BootPresence
    public let hotAddAction: HotAddAction
    /// The SMRAM windows the strategy uses (the machine maps and guards them all; invariant 4 checks these).
    public let smramWindows: [SMRAMWindowKind]
    /// Whether hot-added CPUs take their first SMI at 0x38000 (relocation there) or enter at an SMBASE set before.
    public let hotAddedRelocateAtDefaultSMBASE: Bool
    /// Invariant id → what it must show.
    public let expectations: [Int: Expectation]
    /// The attacks this strategy is expected to lose (the insecure-by-design baseline loses every code-planting one).
    public let compromisedBy: Set<Attack>
    /// SMRAM the built-in firmware's strategy reserves per possible CPU (its tile), in bytes.
    public let smramBytesPerPossibleCPU: Int
    /// SMRAM the strategy needs beyond the tiles (the 64 KiB above the last tile's SMBASE; C's 128 KiB window).
    public let smramFixedBytes: Int

    /// The expectation for invariant `id` (every invariant is checked for every strategy).
    public func expectation(_ id: Int) -> Expectation { expectations[id] ?? .holds }

    /// TSEG plus other SMRAM this strategy needs at `maxCPUs` possible CPUs, in bytes.
    public func smramBytes(maxCPUs: Int) -> Int { smramFixedBytes + smramBytesPerPossibleCPU * max(maxCPUs, 1) }

    public static let table: [Strategy: StrategySpec] = [
        .relocateAllAtBoot: StrategySpec(
            strategy: .relocateAllAtBoot, letter: "A", builtinFirmware: true, bootPresence: .allPossible,
            hotAddAction: .keepState, smramWindows: [.tseg], hotAddedRelocateAtDefaultSMBASE: false,
            expectations: [1: .holds, 2: .holds, 3: .holds, 4: .holds], compromisedBy: [],
            smramBytesPerPossibleCPU: Int(MINIVMM_SMM_TILE), smramFixedBytes: 0x10000),
        .hotplugSMBASERegister: StrategySpec(
            strategy: .hotplugSMBASERegister, letter: "B", builtinFirmware: true, bootPresence: .bootCPUsOnly,
            hotAddAction: .resetLoadingSMBASERegister, smramWindows: [.tseg], hotAddedRelocateAtDefaultSMBASE: false,
            expectations: [1: .holds, 2: .holds, 3: .holds, 4: .holds], compromisedBy: [],
            smramBytesPerPossibleCPU: Int(MINIVMM_SMM_TILE), smramFixedBytes: 0x10000),
        .smramAtDefaultSMBASE: StrategySpec(
            strategy: .smramAtDefaultSMBASE, letter: "C", builtinFirmware: true, bootPresence: .bootCPUsOnly,
            hotAddAction: .reset, smramWindows: [.tseg, .defaultSMBASE], hotAddedRelocateAtDefaultSMBASE: true,
            expectations: [1: .holds, 2: .holds, 3: .holds, 4: .holds], compromisedBy: [],
            smramBytesPerPossibleCPU: Int(MINIVMM_SMM_TILE),
            smramFixedBytes: 0x10000 + Int(MINIVMM_DEFAULT_SMRAM_SIZE)),
        .naive: StrategySpec(
            strategy: .naive, letter: "N", builtinFirmware: true, bootPresence: .bootCPUsOnly, hotAddAction: .reset,
            smramWindows: [.tseg], hotAddedRelocateAtDefaultSMBASE: true,
            expectations: [1: .holds, 2: .holds, 3: .fails, 4: .holds], compromisedBy: [.plant, .replant, .osIPIs],
            smramBytesPerPossibleCPU: Int(MINIVMM_SMM_TILE), smramFixedBytes: 0x10000),
    ]

    /// The verdict `attack` must get: compromised when the strategy is expected to lose it, or when hot-add RESETs
    /// the CPU (QEMU's behaviour, `--hotplug-reset`) so that it relocates at 0x38000 in ordinary RAM.
    public func expectedVerdict(_ attack: Attack, hotplugReset: Bool) -> AttackVerdict {
        if compromisedBy.contains(attack) { return .compromised }
        if hotplugReset && hotAddAction == .keepState && attack != .dma { return .compromised }
        return .safe
    }

    /// Strategies the built-in firmware implements, in table order.
    public static var implemented: [Strategy] { Strategy.allCases.filter { $0.spec.builtinFirmware } }
}
