// SPDX-License-Identifier: MIT
import Foundation

/// A PCI function behind the Q35 host bridge's configuration mechanisms (0xCF8/0xCFC and ECAM): QEMU's
/// `PCIDevice` `config_read`/`config_write` on its 256-byte configuration space.
public protocol PCIFunction: AnyObject {
    /// Reads `size` (1, 2 or 4) bytes at `register`; the caller keeps `register + size` within 256.
    func readConfig(register: Int, size: Int) -> UInt32
    /// Writes the low `size` bytes of `value` at `register` (QEMU `pci_default_write_config` through the write mask,
    /// then the device's hooks); the caller keeps `register + size` within 256.
    func writeConfig(register: Int, size: Int, value: UInt32) -> [DeviceEffect]
}

/// The ICH9 LPC bridge at 00:1f.0 (QEMU `ICH9-LPC`, hw/isa/lpc_ich9.c, 8086:2918): the configuration registers
/// firmware programs for power management and SMIs, and the PM I/O block they place (hw/acpi/ich9.c).
///
/// | register | name | semantics (QEMU) |
/// |----------|------|------------------|
/// | `0x40` | PMBASE | bits 15:7 the PM I/O base (`ICH9_LPC_PMBASE_BASE_ADDRESS_MASK`), bit 0 RTE reads 1 at reset; QEMU's write mask of byte 0x40 is `0x87` (`ich9_lpc_realize` sets the ACPI_CTRL mask there) |
/// | `0x44` | ACPI_CNTL | ACPI_EN 0x80: the PM I/O block decodes at PMBASE only while set (`ich9_lpc_pmbase_sci_update`) |
/// | `0x60`–`0x63`, `0x68`–`0x6B` | PIRQx_ROUT | 0x80 (routing disabled) at reset; storage |
/// | `0xA0` | GEN_PMCON_1 | SMI_LOCK 0x10: once set it stays set and SMI_EN's GBL_SMI_EN (bit 0) becomes read-only (`ich9_lpc_pmcon_update`) |
/// | `0xF0` | RCBA | base 31:14 and enable bit 0 (write mask `0xFFFFC001`) |
///
/// The rest of 0x40–0xFF is writable storage, as QEMU's `pci_init_wmask` leaves it; the 64-byte header is read-only.
public final class ICH9LPC: PCIFunction {
    /// `PCI_DEVICE_ID_INTEL_ICH9_8`.
    public static let deviceID: UInt16 = 0x2918
    /// `ICH9_A2_LPC_REVISION`.
    public static let revision: UInt8 = 0x02
    /// `PCI_CLASS_BRIDGE_ISA`.
    public static let classCode: UInt32 = 0x06_0100
    /// Device 31, function 0 on bus 0 (`ICH9_LPC_DEV`, `ICH9_LPC_FUNC`): devfn 0xF8.
    public static let devfn = 0xF8

    static let regPMBASE = 0x40
    static let regACPICNTL = 0x44
    static let regGENPMCON1 = 0xA0
    static let regRCBA = 0xF0
    /// `ICH9_LPC_PMBASE_BASE_ADDRESS_MASK`.
    static let pmbaseMask: UInt32 = 0xFF80
    /// `ICH9_LPC_ACPI_CTRL_ACPI_EN`.
    static let acpiEnable: UInt8 = 0x80
    /// `ICH9_LPC_ACPI_CTRL_SCI_IRQ_SEL_MASK`.
    static let sciIRQSelMask: UInt8 = 0x07
    /// `ICH9_LPC_GEN_PMCON_1_SMI_LOCK`.
    static let smiLock: UInt8 = 0x10
    /// `ICH9_LPC_RCBA_BA_MASK | ICH9_LPC_RCBA_EN`.
    static let rcbaWMask: UInt32 = 0xFFFF_C001
    /// `ICH9_LPC_PIRQ_ROUT_DEFAULT`.
    static let pirqDefault: UInt8 = 0x80

    public private(set) var config = [UInt8](repeating: 0, count: 256)
    private var wmask = [UInt8](repeating: 0, count: 256)
    /// The PM I/O block this bridge places on the port bus.
    public let pm: ICH9PMIO
    private unowned let bus: PortIOBus
    /// Where the PM block decodes now (nil: disabled), and why a placement was refused.
    public private(set) var pmBase: UInt16?
    public private(set) var refusedPlacements = 0

    public init(bus: PortIOBus, pm: ICH9PMIO) {
        self.bus = bus
        self.pm = pm
        reset()
    }

    /// QEMU `ich9_lpc_reset` (and the constant part of `pci_qdev_realize`): IDs, defaults, PM block unmapped.
    public func reset() {
        config = [UInt8](repeating: 0, count: 256)
        wmask = [UInt8](repeating: 0, count: 256)
        config.storeLittleEndian(Q35HostBridge.vendorID, at: 0x00)
        config.storeLittleEndian(Self.deviceID, at: 0x02)
        config[0x08] = Self.revision
        config[0x09] = UInt8(truncatingIfNeeded: Self.classCode)
        config[0x0A] = UInt8(truncatingIfNeeded: Self.classCode >> 8)
        config[0x0B] = UInt8(truncatingIfNeeded: Self.classCode >> 16)
        config[0x0E] = 0x80  // multi-function (QEMU sets it for function 0 of a multi-function slot)
        config.storeLittleEndian(Q35HostBridge.subsystemVendorID, at: 0x2C)
        config.storeLittleEndian(Q35HostBridge.subsystemID, at: 0x2E)
        for offset in 0x40..<0x100 { wmask[offset] = 0xFF }
        // ich9_lpc_realize: pci_set_long(wmask + PMBASE, mask), then pci_set_byte(wmask + PMBASE, ACPI_EN|SCI_SEL).
        wmask.storeLittleEndian(Self.pmbaseMask, at: Self.regPMBASE)
        wmask[Self.regPMBASE] = Self.acpiEnable | Self.sciIRQSelMask
        wmask.storeLittleEndian(Self.rcbaWMask, at: Self.regRCBA)
        for i in 0..<4 {
            config[0x60 + i] = Self.pirqDefault
            config[0x68 + i] = Self.pirqDefault
        }
        config[Self.regPMBASE] = 0x01  // ICH9_LPC_PMBASE_DEFAULT: RTE
        pm.reset()
        updatePMBase()
    }

    public func readConfig(register: Int, size: Int) -> UInt32 {
        config.littleEndianUInt32(at: register, count: size)
    }

    /// QEMU `ich9_lpc_config_write`.
    public func writeConfig(register: Int, size: Int, value: UInt32) -> [DeviceEffect] {
        let length = min(size, 256 - register)
        guard register >= 0, length > 0 else { return [] }
        for i in 0..<length {
            let at = register + i
            let byte = UInt8(truncatingIfNeeded: value >> UInt32(8 * i))
            config[at] = (config[at] & ~wmask[at]) | (byte & wmask[at])
        }
        let written = register..<(register + length)
        var effects: [DeviceEffect] = []
        if written.overlaps(Self.regPMBASE..<(Self.regPMBASE + 4)) || written.contains(Self.regACPICNTL) {
            if let why = updatePMBase() { effects.append(.ignored(why)) }
        }
        if written.overlaps(Self.regGENPMCON1..<(Self.regGENPMCON1 + 8)) {
            updatePMCON()
        }
        return effects
    }

    /// Whether GEN_PMCON_1.SMI_LOCK is set.
    public var smiLocked: Bool { config[Self.regGENPMCON1] & Self.smiLock != 0 }
    /// The RCBA register (base and enable).
    public var rcba: UInt32 { UInt32(littleEndian: config, at: Self.regRCBA) }

    /// QEMU `ich9_lpc_pmbase_sci_update` → `ich9_pm_iospace_update`: the block decodes at PMBASE & 0xFF80 while
    /// ACPI_EN is set and the base is not 0. Returns why a placement was refused (it would overlap another device:
    /// QEMU would let one shadow the other; minivmm refuses and counts it).
    @discardableResult
    func updatePMBase() -> String? {
        let raw = UInt32(littleEndian: config, at: Self.regPMBASE) & Self.pmbaseMask
        let wanted: UInt16? = config[Self.regACPICNTL] & Self.acpiEnable != 0 && raw != 0 ? UInt16(raw) : nil
        guard wanted != pmBase else { return nil }
        bus.unregister(pm)
        pmBase = nil
        guard let base = wanted else { return nil }
        do {
            try bus.register(pm, base: base, length: ICH9PMIO.length)
            pmBase = base
            return nil
        } catch {
            refusedPlacements += 1
            return "ICH9 PM I/O block not placed: \(error)"
        }
    }

    /// QEMU `ich9_lpc_pmcon_update`: SMI_LOCK makes itself and GBL_SMI_EN read-only.
    private func updatePMCON() {
        if smiLocked {
            wmask[Self.regGENPMCON1] &= ~Self.smiLock
            pm.lockGlobalSMIEnable()
        }
    }
}

/// The ICH9 PM I/O block (QEMU `ich9_pm_init`, hw/acpi/ich9.c, ACPI 3.0 §4.7), 128 bytes at PMBASE:
///
/// | offset | register | semantics (QEMU 7.2) |
/// |--------|----------|------------------|
/// | `0x00` | PM1_STS (16) | write 1 to clear; TMR_STS is not raised (no timer overflow interrupt is modelled) |
/// | `0x02` | PM1_EN (16) | storage |
/// | `0x04` | PM1_CNT (16) | SCI_EN bit 0 (also set/cleared by APM commands 0x02/0x03); SLP_EN (bit 13) reads 0 |
/// | `0x08` | PM_TMR (32, 4-byte reads only) | 24-bit counter at 3.579545 MHz from host monotonic time (`acpi_pm_tmr_get`) |
/// | `0x20` | GPE0_STS (8 bytes, write 1 to clear), `0x28` GPE0_EN (8 bytes) | storage |
/// | `0x30` | SMI_EN (32, 4-byte accesses only) | reads 0 at reset; APMC_EN (bit 5) gates APM SMIs; GBL_SMI_EN (bit 0) read-only after SMI_LOCK |
/// | `0x34` | SMI_STS (32, 4-byte accesses only) | read-only, 0 (QEMU 7.2 sets bits only for TCO, which minivmm lacks) |
///
/// Other offsets read 0 and ignore writes (the TCO block at 0x60 is not modelled).
public final class ICH9PMIO: PortIODevice {
    /// `ICH9_PMIO_SIZE`.
    public static let length: UInt16 = 128
    /// `PM_TIMER_FREQUENCY`.
    public static let timerHz: UInt64 = 3_579_545
    /// `ICH9_PMIO_SMI_EN_APMC_EN`.
    public static let apmcEnable: UInt32 = 1 << 5
    /// `ACPI_BITMASK_SCI_ENABLE`.
    static let sciEnable: UInt16 = 0x0001
    /// `ACPI_BITMASK_SLEEP_ENABLE`.
    static let sleepEnable: UInt16 = 0x2000

    public let name = "ich9-pm"
    public private(set) var pm1Status: UInt16 = 0
    public private(set) var pm1Enable: UInt16 = 0
    public private(set) var pm1Control: UInt16 = 0
    public private(set) var gpe0 = [UInt8](repeating: 0, count: 16)
    public private(set) var smiEnable: UInt32 = 0
    public private(set) var smiStatus: UInt32 = 0
    /// QEMU `smi_en_wmask`.
    public private(set) var smiEnableWMask: UInt32 = 0xFFFF_FFFF
    /// The timer's clock in nanoseconds (host monotonic time; a test passes its own).
    let clock: () -> UInt64
    private let epoch: UInt64

    public init(clock: @escaping () -> UInt64 = ICH9PMIO.monotonicNanoseconds) {
        self.clock = clock
        epoch = clock()
    }

    /// The host's monotonic clock in nanoseconds (`CLOCK_MONOTONIC`).
    public static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(max(ts.tv_sec, 0)) &* 1_000_000_000 &+ UInt64(max(ts.tv_nsec, 0))
    }

    /// QEMU `ich9_pm_reset` and the LPC reset: everything 0, SMI_EN fully writable again.
    public func reset() {
        pm1Status = 0
        pm1Enable = 0
        pm1Control = 0
        gpe0 = [UInt8](repeating: 0, count: 16)
        smiEnable = 0
        smiStatus = 0
        smiEnableWMask = 0xFFFF_FFFF
    }

    /// GEN_PMCON_1.SMI_LOCK: `smi_en_wmask &= ~1`.
    func lockGlobalSMIEnable() { smiEnableWMask &= ~1 }

    /// Whether an APM_CNT write raises an SMI now (QEMU `ich9_apm_ctrl_changed`).
    public var apmSMIEnabled: Bool { smiEnable & Self.apmcEnable != 0 }

    /// APM commands 0x02/0x03 set/clear SCI_EN (`acpi_pm1_cnt_update`); they raise no SMI.
    func apmACPICommand(enable: Bool) {
        if enable { pm1Control |= Self.sciEnable } else { pm1Control &= ~Self.sciEnable }
    }

    /// The 24-bit PM timer (`acpi_pm_tmr_get`): ticks = elapsed ns × 3.579545 MHz / 1e9, without overflow.
    public var timer: UInt32 {
        let ns = clock() &- epoch
        let ticks = ns.multipliedFullWidth(by: Self.timerHz)
        let (q, _) = Self.divide(high: ticks.high, low: ticks.low, by: 1_000_000_000)
        return UInt32(truncatingIfNeeded: q) & 0xFF_FFFF
    }

    private static func divide(high: UInt64, low: UInt64, by d: UInt64) -> (UInt64, UInt64) {
        // high < d always holds here (ns < 2^64 and 3579545 < 1e9), so the quotient fits.
        guard high < d else { return (UInt64.max, 0) }
        return d.dividingFullWidth((high, low))
    }

    public func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        switch (offset, size) {
        case (0x08, 4): return timer
        case (0x30, 4): return smiEnable
        case (0x34, 4): return smiStatus
        case (0x08...0x0B, _), (0x30...0x37, _): return 0
        default: break
        }
        var value: UInt32 = 0
        for i in 0..<size {
            value |= UInt32(byte(at: Int(offset) + i)) << UInt32(8 * i)
        }
        return value
    }

    public func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        switch (offset, size) {
        case (0x30, 4):
            smiEnable = (smiEnable & ~smiEnableWMask) | (value & smiEnableWMask)
            return []
        case (0x34, 4), (0x08...0x0B, _):
            return []
        case (0x30...0x37, _):
            return [.ignored("ICH9 SMI_EN/SMI_STS accept only 32-bit accesses (\(size) bytes at +\(hex(offset)))")]
        default: break
        }
        for i in 0..<size {
            setByte(at: Int(offset) + i, UInt8(truncatingIfNeeded: value >> UInt32(8 * i)))
        }
        return []
    }

    private func byte(at o: Int) -> UInt8 {
        switch o {
        case 0...1: return UInt8(truncatingIfNeeded: pm1Status >> UInt16(8 * o))
        case 2...3: return UInt8(truncatingIfNeeded: pm1Enable >> UInt16(8 * (o - 2)))
        case 4...5: return UInt8(truncatingIfNeeded: pm1Control >> UInt16(8 * (o - 4)))
        case 0x20..<0x30: return gpe0[o - 0x20]
        default: return 0
        }
    }

    private func setByte(at o: Int, _ b: UInt8) {
        switch o {
        case 0...1: pm1Status &= ~(UInt16(b) << UInt16(8 * o))  // write 1 to clear
        case 2...3:
            let shift = UInt16(8 * (o - 2))
            pm1Enable = (pm1Enable & ~(0xFF << shift)) | UInt16(b) << shift
        case 4...5:
            let shift = UInt16(8 * (o - 4))
            pm1Control = ((pm1Control & ~(0xFF << shift)) | UInt16(b) << shift) & ~Self.sleepEnable
        case 0x20..<0x28: gpe0[o - 0x20] &= ~b  // GPE0_STS: write 1 to clear
        case 0x28..<0x30: gpe0[o - 0x20] = b
        default: break
        }
    }
}
