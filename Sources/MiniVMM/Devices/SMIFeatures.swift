// SPDX-License-Identifier: MIT
import GuestFirmware

/// ICH9 SMI feature negotiation over fw_cfg (QEMU `hw/isa/lpc_ich9.c`, commit 50de920b37):
/// `etc/smi/supported-features` (8 bytes LE, read-only), `etc/smi/requested-features` (8 bytes LE, written
/// by the guest through fw_cfg DMA) and `etc/smi/features-ok` (1 byte, read-only) whose *selection* runs
/// QEMU's `smi_features_ok_callback`. A valid request is locked in until reset.
///
/// The negotiated features gate CPU hotplug exactly as QEMU `hw/acpi/ich9.c` does: with BROADCAST but
/// without CPU_HOTPLUG, hot-add is refused.
public final class SMIFeatures {
    public static let supportedFile = "etc/smi/supported-features"
    public static let requestedFile = "etc/smi/requested-features"
    public static let featuresOKFile = "etc/smi/features-ok"

    /// `ICH9_LPC_SMI_F_BROADCAST`.
    public static let broadcast = UInt64(ICH9_LPC_SMI_F_BROADCAST)
    /// `ICH9_LPC_SMI_F_CPU_HOTPLUG`.
    public static let cpuHotplug = UInt64(ICH9_LPC_SMI_F_CPU_HOTPLUG)
    /// `ICH9_LPC_SMI_F_CPU_HOT_UNPLUG`.
    public static let cpuHotUnplug = UInt64(ICH9_LPC_SMI_F_CPU_HOT_UNPLUG)
    /// QEMU's default `x-smi-broadcast`, `x-smi-cpu-hotplug`, `x-smi-cpu-hotunplug` (all on).
    public static let allFeatures = broadcast | cpuHotplug | cpuHotUnplug

    /// Why a host feature set cannot be offered.
    public enum ConfigError: Error, Equatable, CustomStringConvertible {
        /// QEMU `ich9_lpc_realize`: "cpu hot-unplug requires cpu hot-plug".
        case unplugWithoutPlug

        public var description: String { "cpu hot-unplug requires cpu hot-plug" }
    }

    /// QEMU `smi_host_features`: what the VMM offers.
    public let hostFeatures: UInt64
    /// QEMU `smi_negotiated_features`: 0 until the guest's request is accepted.
    public private(set) var negotiatedFeatures: UInt64 = 0
    /// QEMU `smi_features_ok`: the negotiation succeeded and is locked until reset.
    public private(set) var featuresOK = false
    /// Selections of `etc/smi/features-ok` that rejected the request (for the report).
    public private(set) var rejectedNegotiations = 0

    public init(hostFeatures: UInt64 = SMIFeatures.allFeatures) throws {
        if hostFeatures & Self.cpuHotUnplug != 0 && hostFeatures & Self.cpuHotplug == 0 {
            throw ConfigError.unplugWithoutPlug
        }
        self.hostFeatures = hostFeatures
    }

    /// Adds the three files to `fwCfg`. As in QEMU, nothing is added when no feature is offered.
    public func install(on fwCfg: FwCfg) throws {
        guard hostFeatures != 0 else { return }
        try fwCfg.addFile(name: Self.supportedFile, data: littleEndianBytes(hostFeatures))
        try fwCfg.addFile(name: Self.requestedFile, data: [UInt8](repeating: 0, count: 8), writable: true)
        try fwCfg.addFile(
            name: Self.featuresOKFile, data: [0],
            onSelect: { [self] fwCfg in featuresOKSelected(fwCfg) })
    }

    /// Machine reset (QEMU `ich9_lpc_reset`): clears the request, features-ok and the negotiated set.
    public func reset(fwCfg: FwCfg) {
        negotiatedFeatures = 0
        featuresOK = false
        fwCfg.setFileData(named: Self.requestedFile, [UInt8](repeating: 0, count: 8))
        fwCfg.setFileData(named: Self.featuresOKFile, [0])
    }

    /// QEMU `smi_features_ok_callback`, run when the guest selects `etc/smi/features-ok`.
    func featuresOKSelected(_ fwCfg: FwCfg) {
        guard !featuresOK else { return }  // negotiation already complete, features locked
        guard let requested = fwCfg.fileData(named: Self.requestedFile), requested.count == 8 else { return }
        let guestFeatures = UInt64(littleEndian: requested, at: 0)
        guard Self.isAcceptable(guestFeatures, host: hostFeatures) else {
            rejectedNegotiations += 1
            return
        }
        negotiatedFeatures = guestFeatures
        featuresOK = true
        fwCfg.setFileData(named: Self.featuresOKFile, [1])
    }

    /// The checks of `smi_features_ok_callback`: a subset of the host's features; CPU hot(un)plug only
    /// with BROADCAST; hot-unplug only with hotplug.
    public static func isAcceptable(_ guest: UInt64, host: UInt64) -> Bool {
        guard guest & ~host == 0 else { return false }
        let hotplugBits = guest & (cpuHotplug | cpuHotUnplug)
        if guest & broadcast == 0 && hotplugBits != 0 { return false }
        if hotplugBits == cpuHotUnplug { return false }
        return true
    }

    /// Why a CPU hot-add must be refused now, or nil (QEMU `ich9_pm_device_pre_plug_cb`).
    public var hotplugRefusal: String? {
        negotiatedFeatures & Self.broadcast != 0 && negotiatedFeatures & Self.cpuHotplug == 0
            ? "cpu hotplug with SMI wasn't enabled by firmware" : nil
    }

    /// Why a CPU hot-unplug request must be refused now, or nil (QEMU `ich9_pm_device_unplug_request_cb`).
    public var hotUnplugRefusal: String? {
        negotiatedFeatures & Self.broadcast != 0 && negotiatedFeatures & Self.cpuHotUnplug == 0
            ? "cpu hot-unplug with SMI wasn't enabled by firmware" : nil
    }

    /// Whether CPU hot-add is allowed now.
    public var hotplugAllowed: Bool { hotplugRefusal == nil }
    /// Whether CPU hot-unplug is allowed now.
    public var hotUnplugAllowed: Bool { hotUnplugRefusal == nil }
}
