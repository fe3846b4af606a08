// SPDX-License-Identifier: MIT
import GuestFirmware

/// What the SMRAM at the default SMBASE (0x30000-0x4FFFF) looks like, decoded from MCH register 0x9C
/// (QEMU `MCH_HOST_BRIDGE_F_SMBASE`, commit f404220e27).
public enum DefaultSMBASEWindow: Sendable, Equatable {
    /// Register reads 0: firmware has not asked; 0x30000 is ordinary RAM.
    case absent
    /// Register reads `MCH_F_SMBASE_IN_RAM` (0x01): the feature exists, RAM at 0x30000 is still open.
    case open
    /// Register reads `MCH_F_SMBASE_LCK` (0x02): 0x30000-0x4FFFF is SMRAM until reset (QEMU enables
    /// `smbase_blackhole` for non-SMM code and `smbase_window` in the SMRAM address space).
    case locked
}

/// The SMRAM decode of the Q35 MCH, as QEMU's `mch_update_smram` and `mch_update_smbase_smram` compute it.
public struct SMRAMControl: Sendable, Equatable {
    /// TSEG is decoded: ESMRAMC.T_EN and SMRAM.G_SMRAME are set and the size is not zero.
    public var tsegEnabled: Bool
    /// TSEG size in bytes (1, 2, 8 MiB or the extended size), 0 when TSEG is not decoded. TSEG is the top
    /// `tsegBytes` of RAM below 4 GiB.
    public var tsegBytes: UInt64
    /// SMRAM.G_SMRAME: SMRAM is enabled at all.
    public var gSMRAME: Bool
    /// SMRAM.D_OPEN: SMRAM is visible to non-SMM code (always false once locked).
    public var dOpen: Bool
    /// SMRAM.D_LCK: SMRAM and ESMRAMC are locked until reset.
    public var locked: Bool
    /// The state of the SMRAM at the default SMBASE (register 0x9C).
    public var defaultSMBASEState: DefaultSMBASEWindow
    /// ESMRAMC.H_SMRAME: SMRAM is remapped high (0xFEDA0000), which hides the A-segment SMRAM.
    public var hSMRAME: Bool

    public init(
        tsegEnabled: Bool, tsegBytes: UInt64, gSMRAME: Bool, dOpen: Bool, locked: Bool,
        defaultSMBASEState: DefaultSMBASEWindow, hSMRAME: Bool = false
    ) {
        self.tsegEnabled = tsegEnabled
        self.tsegBytes = tsegBytes
        self.gSMRAME = gSMRAME
        self.dOpen = dOpen
        self.locked = locked
        self.defaultSMBASEState = defaultSMBASEState
        self.hSMRAME = hSMRAME
    }

    /// 0xA0000–0xBFFFF is RAM for non-SMM code (QEMU `mch_update_smram`: `smram_region`, the VGA window over
    /// RAM, is disabled exactly when D_OPEN is set and H_SMRAME is not).
    public var aSegmentOpen: Bool { dOpen && !hSMRAME }
    /// 0xA0000–0xBFFFF is RAM for SMM code: QEMU's `low_smram` (G_SMRAME without H_SMRAME) in the SMRAM address
    /// space, or the open RAM of the normal view beneath it.
    public var aSegmentInSMM: Bool { aSegmentOpen || (gSMRAME && !hSMRAME) }
    /// The A-segment is SMRAM now: RAM for SMM code, the VGA hole for everyone else.
    public var aSegmentClosed: Bool { aSegmentInSMM && !aSegmentOpen }
}

/// The Q35 MCH's PAM registers 0x90–0x96 (QEMU `mch_update_pam`, hw/pci-host/pam.c): 13 regions of
/// 0xC0000–0xFFFFF, each in one of four modes.
public struct PAMState: Sendable, Equatable {
    /// What a region shows (QEMU `PAMMemoryRegion.alias[mode]`).
    public enum Mode: UInt8, Sendable {
        /// 0: DRAM disabled: reads and writes go to PCI (the isa-bios ROM alias, `pc.rom`, or nothing).
        case pci = 0
        /// 1: read-only DRAM (QEMU `pam-rom`: RAM made read-only, writes dropped).
        case readOnly = 1
        /// 2: write-only DRAM: reads go to PCI, writes to RAM.
        case writeOnly = 2
        /// 3: RAM.
        case readWrite = 3
    }

    /// `PAM_BIOS_BASE`, `PAM_BIOS_SIZE`: region 0 is 0xF0000–0xFFFFF; regions 1–12 are 16 KiB each from 0xC0000
    /// (`PAM_EXPAN_BASE`, `PAM_EXPAN_SIZE`).
    public static let regions = 13
    /// The seven register bytes 0x90–0x96.
    public var registers: [UInt8]

    public init(registers: [UInt8] = [UInt8](repeating: 0, count: 7)) {
        self.registers = registers
    }

    /// Region `i`'s guest-physical range.
    public static func range(_ i: Int) -> Range<UInt64> {
        i == 0 ? 0xF0000..<0x10_0000 : (0xC0000 + UInt64(i - 1) * 0x4000)..<(0xC0000 + UInt64(i) * 0x4000)
    }

    /// QEMU `pam_update(idx, config[PAM0 + DIV_ROUND_UP(idx, 2)])`: even regions use the high nibble.
    public func mode(_ i: Int) -> Mode {
        guard i >= 0, i < Self.regions, registers.count == 7 else { return .pci }
        let byte = registers[(i + 1) / 2]
        return Mode(rawValue: (byte >> (i & 1 == 0 ? 4 : 0)) & 0x3) ?? .pci
    }

    /// The region holding `gpa`, if any.
    public static func region(holding gpa: UInt64) -> Int? {
        if (0xF0000..<0x10_0000).contains(gpa) { return 0 }
        guard gpa >= 0xC0000, gpa < 0xF0000 else { return nil }
        return Int((gpa - 0xC0000) / 0x4000) + 1
    }
}

/// The Q35 host bridge at 00:00.0 (QEMU `mch` in `hw/pci-host/q35.c`) behind PCI configuration
/// mechanism #1 (QEMU `pci_host_conf_le_ops`/`pci_host_data_le_ops`): register it at port 0xCF8 with
/// length 8. Offsets 0-3 are CONFIG_ADDRESS (0xCF8), offsets 4-7 CONFIG_DATA (0xCFC-0xCFF).
///
/// Bus 0 holds the MCH at 00:00.0 and the functions `attach` adds (the ICH9 LPC bridge at 00:1f.0); every other
/// function reads all-ones and ignores writes. The same configuration space is reachable through ECAM once PCIEXBAR
/// enables it (`ecamRead`, `ecamWrite`). The MCH models QEMU's SMRAM registers exactly: `0x50` EXT_TSEG_MBYTES,
/// `0x9C` F_SMBASE, `0x9D` SMRAM (with the A-segment), `0x9E` ESMRAMC, and the PAM registers `0x90`-`0x96` and
/// PCIEXBAR `0x60` whose decode the machine applies. As in QEMU (`pci_init_wmask`), the rest of the device-specific
/// area 0x40-0xFF is plain writable storage, and the 64-byte header is read-only.
public final class Q35HostBridge: PortIODevice {
    public enum ConfigError: Error, Equatable, CustomStringConvertible {
        /// QEMU `mch_realize`: "invalid extended-tseg-mbytes value".
        case invalidExtTSEG(UInt16)

        public var description: String {
            switch self {
            case .invalidExtTSEG(let mib):
                return "Invalid extended TSEG size \(mib) MiB: at most \(Q35HostBridge.maxExtTSEGMiB) MiB"
            }
        }
    }

    // QEMU include/hw/pci-host/q35.h values. The ESMRAMC cache bits are spelled out here because QEMU's
    // are SM_CACHE 0x20, SM_L1 0x10, SM_L2 0x08 (the contract header's MCH_ESMRAMC_SM_* differ).
    /// `PCI_VENDOR_ID_INTEL`.
    public static let vendorID: UInt16 = 0x8086
    /// `PCI_DEVICE_ID_INTEL_Q35_MCH`.
    public static let deviceID: UInt16 = 0x29C0
    /// `PCI_CLASS_BRIDGE_HOST` (class 06, subclass 00, prog-if 00).
    public static let classCode: UInt32 = 0x06_0000
    /// `PCI_SUBVENDOR_ID_REDHAT_QUMRANET`, `PCI_SUBDEVICE_ID_QEMU`: the subsystem ID QEMU gives every PCI device
    /// (SeaBIOS tells "QEMU" from "KVM" by it).
    public static let subsystemVendorID: UInt16 = 0x1AF4
    public static let subsystemID: UInt16 = 0x1100
    /// `MCH_HOST_BRIDGE_PAM0` and `MCH_HOST_BRIDGE_PAM_SIZE`.
    static let regPAM0 = 0x90
    static let pamSize = 7
    /// `MCH_HOST_BRIDGE_PCIEXBAR` (u64), `MCH_HOST_BRIDGE_PCIEXBAR_DEFAULT`.
    static let regPCIEXBAR = 0x60
    static let pciexbarDefault: UInt64 = 0xB000_0000
    /// `MCH_HOST_BRIDGE_EXT_TSEG_MBYTES_MAX`.
    public static let maxExtTSEGMiB: UInt16 = 0xFFF
    /// `MCH_HOST_BRIDGE_SMRAM_DEFAULT`: C_BASE_SEG hard-wired to 010b.
    static let smramDefault = UInt8(MCH_SMRAM_C_BASE_SEG)
    /// `MCH_HOST_BRIDGE_SMRAM_WMASK`: D_OPEN | D_CLS | D_LCK | G_SMRAME.
    static let smramWMask = UInt8(MCH_SMRAM_D_OPEN | MCH_SMRAM_D_CLS | MCH_SMRAM_D_LCK | MCH_SMRAM_G_SMRAME)
    /// `MCH_HOST_BRIDGE_SMRAM_WMASK_LCK`: only D_CLS stays writable after D_LCK.
    static let smramWMaskLocked = UInt8(MCH_SMRAM_D_CLS)
    /// `MCH_HOST_BRIDGE_ESMRAMC_DEFAULT`: SM_CACHE | SM_L1 | SM_L2.
    static let esmramcDefault: UInt8 = 0x38
    /// `MCH_HOST_BRIDGE_ESMRAMC_WMASK`: H_SMRAME | TSEG_SZ | T_EN.
    static let esmramcWMask = UInt8(MCH_ESMRAMC_H_SMRAME | MCH_ESMRAMC_TSEG_SZ_MASK | MCH_ESMRAMC_T_EN)

    static let regExtTSEG = Int(MCH_EXT_TSEG_MBYTES)
    static let regFSMBASE = Int(MCH_F_SMBASE)
    static let regSMRAM = Int(MCH_SMRAM)
    static let regESMRAMC = Int(MCH_ESMRAMC)

    public let name = "q35-pci-host"
    /// QEMU `extended-tseg-mbytes`: the TSEG size in MiB selected by ESMRAMC.TSEG_SZ = 11b.
    public let extTSEGMiB: UInt16
    /// QEMU `mch.smbase-smram`: whether register 0x9C implements SMRAM at the default SMBASE.
    public let hasSMRAMAtSMBASE: Bool

    /// CONFIG_ADDRESS (0xCF8): bit 31 enable, bus 23:16, device 15:11, function 10:8, register 7:2.
    public private(set) var configAddress: UInt32 = 0
    /// The 256-byte configuration space of 00:00.0 and its write mask (QEMU `PCIDevice.config`/`wmask`).
    public private(set) var config = [UInt8](repeating: 0, count: 256)
    private var wmask = [UInt8](repeating: 0, count: 256)
    /// The current decode; `.smramControlChanged` is emitted whenever a write changes it.
    public private(set) var smramControl: SMRAMControl
    /// PCI functions other than 00:00.0 on bus 0, by devfn (the ICH9 LPC bridge at 0xF8).
    private var functions: [Int: any PCIFunction] = [:]
    /// The PAM decode; `.pamChanged` is emitted whenever a write changes it.
    public private(set) var pam = PAMState()
    /// The ECAM window PCIEXBAR enables (QEMU `mch_update_pciexbar` → `pcie_host_mmcfg_update`), nil while
    /// PCIEXBAREN is clear or the length field is the reserved value (QEMU aborts there; minivmm disables).
    public private(set) var ecam: Range<UInt64>?
    /// Writes that tried to change a locked SMRAM register byte (0x9C after LCK, 0x9D/0x9E after D_LCK, except
    /// D_CLS): ignored, as in QEMU, and counted for the report.
    public private(set) var lockedRegisterWrites = 0

    public init(extTSEGMiB: UInt16, smramAtDefaultSMBASE: Bool = true) throws {
        guard extTSEGMiB <= Self.maxExtTSEGMiB else { throw ConfigError.invalidExtTSEG(extTSEGMiB) }
        self.extTSEGMiB = extTSEGMiB
        self.hasSMRAMAtSMBASE = smramAtDefaultSMBASE
        smramControl = SMRAMControl(
            tsegEnabled: false, tsegBytes: 0, gSMRAME: false, dOpen: false, locked: false,
            defaultSMBASEState: .absent)
        reset()
    }

    /// Machine reset (QEMU `mch_reset` followed by `mch_update`). Locks are released.
    public func reset() {
        configAddress = 0
        config = [UInt8](repeating: 0, count: 256)
        wmask = [UInt8](repeating: 0, count: 256)
        setWord(0x00, Self.vendorID)
        setWord(0x02, Self.deviceID)
        setWord(0x2C, Self.subsystemVendorID)
        setWord(0x2E, Self.subsystemID)
        config[0x09] = UInt8(truncatingIfNeeded: Self.classCode)
        config[0x0A] = UInt8(truncatingIfNeeded: Self.classCode >> 8)
        config[0x0B] = UInt8(truncatingIfNeeded: Self.classCode >> 16)
        for offset in 0x40..<0x100 {
            wmask[offset] = 0xFF
        }
        config[Self.regSMRAM] = Self.smramDefault
        config[Self.regESMRAMC] = Self.esmramcDefault
        wmask[Self.regSMRAM] = Self.smramWMask
        wmask[Self.regESMRAMC] = Self.esmramcWMask
        if extTSEGMiB > 0 {
            setWord(Self.regExtTSEG, UInt16(MCH_EXT_TSEG_MBYTES_QUERY))
        }
        config[Self.regFSMBASE] = 0
        wmask[Self.regFSMBASE] = 0xFF
        config.storeLittleEndian(Self.pciexbarDefault, at: Self.regPCIEXBAR)
        updatePCIEXBAR()
        pam = PAMState()
        updateSMRAM()
        updateExtTSEG()
        updateSMBASESMRAM()
        smramControl = decode()
    }

    // MARK: PortIODevice

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        if offset < 4 {
            // QEMU pci_host_config_read: the whole register, whatever the offset; the bus masks it to size.
            return configAddress
        }
        guard configAddress & 0x8000_0000 != 0 else { return allOnes(size: size) }
        let register = Int(configAddress & 0xFC) + Int(offset - 4)
        guard configAddress & 0x00FF_0000 == 0 else { return allOnes(size: size) }
        return readFunction(devfn: Int((configAddress >> 8) & 0xFF), register: register, size: size)
    }

    /// Puts another function on bus 0 (QEMU `pci_create_simple_multifunction` of the ICH9 LPC at 00:1f.0).
    public func attach(_ function: any PCIFunction, devfn: Int) {
        precondition(devfn > 0 && devfn < 256, "devfn \(devfn) is not a bus-0 function other than the MCH")
        functions[devfn] = function
    }

    /// A configuration read of bus 0 (QEMU `pci_host_config_read_common` with the 256-byte limit): absent
    /// functions and bytes past 0xFF read all-ones.
    func readFunction(devfn: Int, register: Int, size: Int) -> UInt32 {
        guard register >= 0, register < 256 else { return allOnes(size: size) }
        let n = min(size, 256 - register)
        var value: UInt32
        if devfn == 0 {
            value = config.littleEndianUInt32(at: register, count: n)
        } else if let f = functions[devfn] {
            value = f.readConfig(register: register, size: n)
        } else {
            return allOnes(size: size)
        }
        for index in n..<size { value |= 0xFF << UInt32(8 * index) }
        return value
    }

    /// A configuration write to bus 0 (QEMU `pci_host_config_write_common`).
    func writeFunction(devfn: Int, register: Int, size: Int, value: UInt32) -> [DeviceEffect] {
        guard register >= 0, register < 256 else { return [] }
        let n = min(size, 256 - register)
        if devfn == 0 { return writeConfig(register: register, size: n, value: value) }
        return functions[devfn]?.writeConfig(register: register, size: n, value: value) ?? []
    }

    /// An MMIO read inside the ECAM window (QEMU `pcie_mmcfg_data_read`): bus 27:20, devfn 19:12, register 11:0.
    /// Nil when `address` is outside the window. 8-byte accesses are split into two 4-byte ones, as QEMU's memory
    /// core does for the window's 4-byte maximum.
    public func ecamRead(address: UInt64, size: Int) -> UInt64? {
        guard let w = ecam, w.contains(address) else { return nil }
        if size == 8 {
            let lo = UInt64(ecamRead32(address - w.lowerBound, size: 4))
            let hi = UInt64(ecamRead32(address &+ 4 &- w.lowerBound, size: 4))
            return lo | hi << 32
        }
        return UInt64(ecamRead32(address - w.lowerBound, size: min(max(size, 1), 4)))
    }

    /// An MMIO write inside the ECAM window (QEMU `pcie_mmcfg_data_write`); nil when outside it.
    public func ecamWrite(address: UInt64, size: Int, value: UInt64) -> [DeviceEffect]? {
        guard let w = ecam, w.contains(address) else { return nil }
        if size == 8 {
            return ecamWrite32(address - w.lowerBound, size: 4, value: UInt32(truncatingIfNeeded: value))
                + ecamWrite32(address &+ 4 &- w.lowerBound, size: 4, value: UInt32(truncatingIfNeeded: value >> 32))
        }
        return ecamWrite32(address - w.lowerBound, size: min(max(size, 1), 4), value: UInt32(truncatingIfNeeded: value))
    }

    private func ecamRead32(_ offset: UInt64, size: Int) -> UInt32 {
        guard offset >> 20 == 0 else { return allOnes(size: size) }  // only bus 0 has devices
        return readFunction(devfn: Int((offset >> 12) & 0xFF), register: Int(offset & 0xFFF), size: size)
    }

    private func ecamWrite32(_ offset: UInt64, size: Int, value: UInt32) -> [DeviceEffect] {
        guard offset >> 20 == 0 else { return [] }
        return writeFunction(devfn: Int((offset >> 12) & 0xFF), register: Int(offset & 0xFFF), size: size, value: value)
    }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        if offset < 4 {
            // QEMU pci_host_config_write: only a 32-bit write at 0xCF8 sets CONFIG_ADDRESS.
            guard offset == 0, size == 4 else {
                return [.ignored("PCI CONFIG_ADDRESS write of \(size) bytes at \(hex(0xCF8 + Int(offset)))")]
            }
            configAddress = value
            return []
        }
        guard configAddress & 0x8000_0000 != 0, configAddress & 0x00FF_0000 == 0 else { return [] }
        let register = Int(configAddress & 0xFC) + Int(offset - 4)
        return writeFunction(devfn: Int((configAddress >> 8) & 0xFF), register: register, size: size, value: value)
    }

    /// A configuration write to 00:00.0 (QEMU `mch_write_config`): `pci_default_write_config` through the
    /// write mask, then the SMRAM hooks for the registers the write overlaps.
    func writeConfig(register: Int, size: Int, value: UInt32) -> [DeviceEffect] {
        let length = min(size, 256 - register)
        guard length > 0 else { return [] }
        var refused = false
        for index in 0..<length {
            let byte = UInt8(truncatingIfNeeded: value >> UInt32(8 * index))
            let at = register + index
            if let m = lockedSMRAMRegisterMask(at), (byte ^ config[at]) & m & ~wmask[at] != 0 { refused = true }
            config[at] = (config[at] & ~wmask[at]) | (byte & wmask[at])
        }
        if refused { lockedRegisterWrites += 1 }
        let written = register..<(register + length)
        if written.overlaps(Self.regSMRAM..<(Self.regSMRAM + 2)) {
            updateSMRAM()
        }
        if written.overlaps(Self.regExtTSEG..<(Self.regExtTSEG + 2)) {
            updateExtTSEG()
        }
        if written.contains(Self.regFSMBASE) {
            updateSMBASESMRAM()
        }
        if written.overlaps(Self.regPCIEXBAR..<(Self.regPCIEXBAR + 8)) {
            updatePCIEXBAR()
        }
        var effects: [DeviceEffect] = []
        if written.overlaps(Self.regPAM0..<(Self.regPAM0 + Self.pamSize)) {
            let p = PAMState(registers: Array(config[Self.regPAM0..<(Self.regPAM0 + Self.pamSize)]))
            if p != pam {
                pam = p
                effects.append(.pamChanged(p))
            }
        }
        let decoded = decode()
        guard decoded != smramControl else { return effects }
        smramControl = decoded
        return effects + [.smramControlChanged(decoded)]
    }

    /// TSEG size for an ESMRAMC value, as QEMU `mch_update_smram` computes it once T_EN and G_SMRAME are set.
    public static func tsegBytes(esmramc: UInt8, extTSEGMiB: UInt16) -> UInt64 {
        let mib: UInt64 = 1 << 20
        switch esmramc & UInt8(MCH_ESMRAMC_TSEG_SZ_MASK) {
        case UInt8(MCH_ESMRAMC_TSEG_SZ_1MB): return mib
        case UInt8(MCH_ESMRAMC_TSEG_SZ_2MB): return 2 * mib
        case UInt8(MCH_ESMRAMC_TSEG_SZ_8MB): return 8 * mib
        default: return UInt64(extTSEGMiB) * mib
        }
    }

    /// For an SMRAM register byte that a lock has frozen, the bits that were writable before the lock (the current
    /// write mask shows what stays writable); nil when `at` is not locked.
    private func lockedSMRAMRegisterMask(_ at: Int) -> UInt8? {
        let smramLocked = config[Self.regSMRAM] & UInt8(MCH_SMRAM_D_LCK) != 0
        switch at {
        case Self.regSMRAM: return smramLocked ? Self.smramWMask : nil
        case Self.regESMRAMC: return smramLocked ? Self.esmramcWMask : nil
        case Self.regFSMBASE:
            return hasSMRAMAtSMBASE && config[Self.regFSMBASE] == UInt8(MCH_F_SMBASE_LCK) ? 0xFF : nil
        default: return nil
        }
    }

    // MARK: QEMU update hooks

    /// QEMU `mch_update_pciexbar`: enable bit 0, length bits 2:1 (0 256 MiB, 1 128 MiB, 2 64 MiB, 3 reserved),
    /// base bits 35:28 (plus 27 for 128 MiB, 27:26 for 64 MiB).
    private func updatePCIEXBAR() {
        let bar = UInt64(littleEndian: config, at: Self.regPCIEXBAR)
        let admsk: UInt64 = 0xF_F000_0000
        let size: UInt64, mask: UInt64
        switch (bar >> 1) & 0x3 {
        case 0: (size, mask) = (256 << 20, admsk)
        case 1: (size, mask) = (128 << 20, admsk | 1 << 27)
        case 2: (size, mask) = (64 << 20, admsk | 1 << 27 | 1 << 26)
        default:
            ecam = nil
            return
        }
        let base = bar & mask
        ecam = bar & 1 != 0 ? base..<(base + size) : nil
    }

    /// QEMU `mch_update_smram`, register part: D_LCK clears D_OPEN and shrinks both write masks.
    private func updateSMRAM() {
        if config[Self.regSMRAM] & UInt8(MCH_SMRAM_D_LCK) != 0 {
            config[Self.regSMRAM] &= ~UInt8(MCH_SMRAM_D_OPEN)
            wmask[Self.regSMRAM] = Self.smramWMaskLocked
            wmask[Self.regESMRAMC] = 0
        }
    }

    /// QEMU `mch_update_ext_tseg_mbytes`: the query value 0xFFFF turns into the extended TSEG size.
    private func updateExtTSEG() {
        if extTSEGMiB > 0 && word(Self.regExtTSEG) == UInt16(MCH_EXT_TSEG_MBYTES_QUERY) {
            setWord(Self.regExtTSEG, extTSEGMiB)
        }
    }

    /// QEMU `mch_update_smbase_smram` (f404220e27): 0xFF queries, anything else is discarded in the default
    /// state, and LCK locks the register at 0x02 until reset.
    private func updateSMBASESMRAM() {
        guard hasSMRAMAtSMBASE else { return }
        let query = UInt8(MCH_F_SMBASE_QUERY)
        let lck = UInt8(MCH_F_SMBASE_LCK)
        if config[Self.regFSMBASE] == query {
            wmask[Self.regFSMBASE] = lck
            config[Self.regFSMBASE] = UInt8(MCH_F_SMBASE_IN_RAM)
            return
        }
        if wmask[Self.regFSMBASE] == 0xFF {
            config[Self.regFSMBASE] = 0
        }
        if config[Self.regFSMBASE] & lck != 0 {
            wmask[Self.regFSMBASE] &= ~lck
            config[Self.regFSMBASE] = lck
        }
    }

    private func decode() -> SMRAMControl {
        let smram = config[Self.regSMRAM]
        let esmramc = config[Self.regESMRAMC]
        let gSMRAME = smram & UInt8(MCH_SMRAM_G_SMRAME) != 0
        let tEN = esmramc & UInt8(MCH_ESMRAMC_T_EN) != 0
        let bytes = tEN && gSMRAME ? Self.tsegBytes(esmramc: esmramc, extTSEGMiB: extTSEGMiB) : 0
        let window: DefaultSMBASEWindow
        if !hasSMRAMAtSMBASE {
            window = .absent
        } else if config[Self.regFSMBASE] == UInt8(MCH_F_SMBASE_LCK) {
            window = .locked
        } else if config[Self.regFSMBASE] == UInt8(MCH_F_SMBASE_IN_RAM) {
            window = .open
        } else {
            window = .absent
        }
        return SMRAMControl(
            tsegEnabled: bytes > 0, tsegBytes: bytes, gSMRAME: gSMRAME,
            dOpen: smram & UInt8(MCH_SMRAM_D_OPEN) != 0, locked: smram & UInt8(MCH_SMRAM_D_LCK) != 0,
            defaultSMBASEState: window, hSMRAME: esmramc & UInt8(MCH_ESMRAMC_H_SMRAME) != 0)
    }

    private func word(_ offset: Int) -> UInt16 { UInt16(littleEndian: config, at: offset) }

    private func setWord(_ offset: Int, _ value: UInt16) { config.storeLittleEndian(value, at: offset) }
}
