// SPDX-License-Identifier: MIT
import GuestFirmware

/// What the built-in firmware's "OS" loop does to a CPU it is about to hot-add (`--attack`, DESIGN.md §5). The raw
/// value is the CLI spelling; `firmwareID` is what the firmware reads from fw_cfg `opt/org.minivmm/attack`.
public enum Attack: String, Codable, CaseIterable, Sendable {
    /// SMM code planted at 0x38000 before the hot-add.
    case plant
    /// The same code re-planted after every step of the hot-add, right up to the new CPU's first SMI.
    case replant
    /// The OS sends the new CPU its own INIT, SIPI and SMI IPIs (with the code planted) before the firmware does.
    case osIPIs = "os-ipis"
    /// fw_cfg DMA transfers aimed at SMRAM (TSEG's canary, and for C the default-SMBASE window).
    case dma

    public var firmwareID: UInt32 {
        switch self {
        case .plant: UInt32(MINIVMM_ATTACK_PLANT)
        case .replant: UInt32(MINIVMM_ATTACK_REPLANT)
        case .osIPIs: UInt32(MINIVMM_ATTACK_OS_IPIS)
        case .dma: UInt32(MINIVMM_ATTACK_DMA)
        }
    }

    /// One line for the matrix legend.
    public var summary: String {
        switch self {
        case .plant: "SMM code planted at 0x38000 before the hot-add"
        case .replant: "the code re-planted between the firmware's preparation and the new CPU's first SMI"
        case .osIPIs: "the OS sends INIT/SIPI/SMI to the new CPU before the firmware does"
        case .dma: "fw_cfg DMA aimed at SMRAM"
        }
    }
}

/// The verdict on one attack, from the VMM's own observations.
public enum AttackVerdict: String, Codable, Sendable {
    /// Code the OS controls ran in SMM: the VMM's SMRAM canary was overwritten.
    case compromised
    /// The canary survived the whole run.
    case safe
}
