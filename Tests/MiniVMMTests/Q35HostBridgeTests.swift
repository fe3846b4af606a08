// SPDX-License-Identifier: MIT
import GuestFirmware
import Testing

@testable import MiniVMM

/// A Q35 host bridge on a bus, driven through 0xCF8/0xCFC like firmware.
struct PCIRig {
    let bus = PortIOBus()
    let mch: Q35HostBridge

    init(extTSEGMiB: UInt16 = 16) throws {
        mch = try Q35HostBridge(extTSEGMiB: extTSEGMiB)
        try bus.register(mch, base: UInt16(MINIVMM_PORT_PCI_ADDR), length: 8)
    }

    static func address(bus: UInt32 = 0, device: UInt32 = 0, function: UInt32 = 0, register: Int) -> UInt32 {
        0x8000_0000 | bus << 16 | device << 11 | function << 8 | UInt32(register & 0xFC)
    }

    func read(_ register: Int, size: Int, device: UInt32 = 0) -> UInt32 {
        _ = bus.write(port: 0xCF8, size: 4, value: Self.address(device: device, register: register), context: cpu0)
        return bus.read(port: 0xCFC + UInt16(register & 3), size: size, context: cpu0)
    }

    @discardableResult
    func write(_ register: Int, size: Int, value: UInt32, device: UInt32 = 0) -> [DeviceEffect] {
        _ = bus.write(port: 0xCF8, size: 4, value: Self.address(device: device, register: register), context: cpu0)
        return bus.write(port: 0xCFC + UInt16(register & 3), size: size, value: value, context: cpu0)
    }

    func read8(_ register: Int32) -> UInt8 { UInt8(read(Int(register), size: 1)) }

    @discardableResult
    func write8(_ register: Int32, _ value: Int32) -> [DeviceEffect] {
        write(Int(register), size: 1, value: UInt32(value))
    }
}

let smramOpen = MCH_SMRAM_G_SMRAME | MCH_SMRAM_D_OPEN
let smramLock = MCH_SMRAM_G_SMRAME | MCH_SMRAM_D_LCK

@Suite struct Q35HostBridgeTests {
    @Test func identityAndConfigMechanism() throws {
        let rig = try PCIRig()
        #expect(rig.read(0x00, size: 4) == 0x29C0_8086)
        #expect(rig.read(0x00, size: 2) == 0x8086)
        #expect(rig.read(0x02, size: 2) == 0x29C0)
        #expect(rig.read(0x08, size: 4) >> 8 == 0x06_0000)
        #expect(rig.read(0x00, size: 4, device: 1) == 0xFFFF_FFFF, "no other device exists")
        #expect(rig.write(0x9C, size: 1, value: 0xFF, device: 1).isEmpty)
        #expect(rig.read8(MCH_F_SMBASE) == 0, "the write to 00:01.0 did not reach the MCH")
        // Enable bit clear: data reads all-ones.
        _ = rig.bus.write(port: 0xCF8, size: 4, value: 0x0000_0000, context: cpu0)
        #expect(rig.bus.read(port: 0xCFC, size: 4, context: cpu0) == 0xFFFF_FFFF)
        #expect(rig.bus.read(port: 0xCF8, size: 4, context: cpu0) == 0)
        // Only a 32-bit write sets CONFIG_ADDRESS.
        _ = rig.bus.write(port: 0xCF8, size: 2, value: 0x1234, context: cpu0)
        #expect(rig.mch.configAddress == 0)
        // The header is read-only; the device-specific area is writable (QEMU pci_init_wmask).
        rig.write(0x00, size: 4, value: 0)
        #expect(rig.read(0x00, size: 4) == 0x29C0_8086)
        rig.write(0x60, size: 4, value: 0xB000_0001)
        #expect(rig.read(0x60, size: 4) == 0xB000_0001)
    }

    @Test func smramDefaultsMatchQEMU() throws {
        let rig = try PCIRig()
        #expect(rig.read8(MCH_SMRAM) == 0x02)
        #expect(rig.read8(MCH_ESMRAMC) == 0x38)
        #expect(rig.read8(MCH_F_SMBASE) == 0)
        #expect(rig.read(Int(MCH_EXT_TSEG_MBYTES), size: 2) == 16, "mch_reset + mch_update already resolve the query")
        #expect(rig.mch.smramControl.defaultSMBASEState == .absent)
        #expect(!rig.mch.smramControl.tsegEnabled && !rig.mch.smramControl.gSMRAME)
    }

    @Test func defaultSMBASEQueryThenLock() throws {
        let rig = try PCIRig()
        // Default state: any value other than the query is discarded.
        #expect(rig.write8(MCH_F_SMBASE, MCH_F_SMBASE_LCK).isEmpty)
        #expect(rig.read8(MCH_F_SMBASE) == 0)
        #expect(rig.write8(MCH_F_SMBASE, 0x01).isEmpty)
        #expect(rig.read8(MCH_F_SMBASE) == 0)
        // Query: reads 0x01, RAM at 0x30000 still open.
        let queried = rig.write8(MCH_F_SMBASE, MCH_F_SMBASE_QUERY)
        #expect(rig.read8(MCH_F_SMBASE) == UInt8(MCH_F_SMBASE_IN_RAM))
        #expect(queried.count == 1)
        #expect(rig.mch.smramControl.defaultSMBASEState == .open)
        // Bits outside LCK are not writable now; 0 keeps it open.
        #expect(rig.write8(MCH_F_SMBASE, 0x00).isEmpty)
        #expect(rig.read8(MCH_F_SMBASE) == 0x01)
        // Lock.
        let locked = rig.write8(MCH_F_SMBASE, MCH_F_SMBASE_LCK)
        #expect(rig.read8(MCH_F_SMBASE) == UInt8(MCH_F_SMBASE_LCK))
        guard case .smramControlChanged(let control)? = locked.first else {
            Issue.record("no effect on lock: \(locked)")
            return
        }
        #expect(control.defaultSMBASEState == .locked)
        // Read-only until reset.
        for value in [Int32(0x00), 0x01, 0xFF] {
            #expect(rig.write8(MCH_F_SMBASE, value).isEmpty)
            #expect(rig.read8(MCH_F_SMBASE) == 0x02)
        }
        rig.mch.reset()
        #expect(rig.read8(MCH_F_SMBASE) == 0)
        #expect(rig.mch.smramControl.defaultSMBASEState == .absent)
    }

    @Test func smramLockIsStickyUntilReset() throws {
        let rig = try PCIRig()
        rig.write8(MCH_ESMRAMC, MCH_ESMRAMC_T_EN | MCH_ESMRAMC_TSEG_SZ_EXT)
        let opened = rig.write8(MCH_SMRAM, smramOpen)
        #expect(rig.read8(MCH_SMRAM) == UInt8(smramOpen | MCH_SMRAM_C_BASE_SEG))
        #expect(
            opened == [
                .smramControlChanged(
                    SMRAMControl(
                        tsegEnabled: true, tsegBytes: 16 << 20, gSMRAME: true, dOpen: true, locked: false,
                        defaultSMBASEState: .absent))
            ])
        // D_LCK (even written together with D_OPEN) closes SMRAM and locks it.
        let locked = rig.write8(MCH_SMRAM, smramLock | MCH_SMRAM_D_OPEN)
        #expect(rig.read8(MCH_SMRAM) == UInt8(smramLock | MCH_SMRAM_C_BASE_SEG))
        #expect(
            locked == [
                .smramControlChanged(
                    SMRAMControl(
                        tsegEnabled: true, tsegBytes: 16 << 20, gSMRAME: true, dOpen: false, locked: true,
                        defaultSMBASEState: .absent))
            ])
        // Nothing but D_CLS can change now: not D_OPEN, G_SMRAME, D_LCK, nor ESMRAMC.
        #expect(rig.write8(MCH_SMRAM, MCH_SMRAM_D_OPEN).isEmpty)
        #expect(rig.write8(MCH_SMRAM, 0).isEmpty)
        #expect(rig.read8(MCH_SMRAM) == UInt8(smramLock | MCH_SMRAM_C_BASE_SEG))
        rig.write8(MCH_SMRAM, smramLock | MCH_SMRAM_D_CLS)
        #expect(rig.read8(MCH_SMRAM) & UInt8(MCH_SMRAM_D_CLS) != 0)
        #expect(rig.write8(MCH_ESMRAMC, 0).isEmpty)
        #expect(rig.read8(MCH_ESMRAMC) == UInt8(0x38 | MCH_ESMRAMC_T_EN | MCH_ESMRAMC_TSEG_SZ_EXT))
        #expect(rig.mch.smramControl.locked && rig.mch.smramControl.tsegEnabled)
        #expect(rig.mch.lockedRegisterWrites == 3, "D_OPEN, 0 and the ESMRAMC write were refused and counted")
        rig.mch.reset()
        #expect(rig.read8(MCH_SMRAM) == 0x02 && rig.read8(MCH_ESMRAMC) == 0x38)
        #expect(!rig.mch.smramControl.locked)
        rig.write8(MCH_SMRAM, smramOpen)
        #expect(rig.mch.smramControl.dOpen, "writable again after reset")
    }

    @Test(arguments: [
        (MCH_ESMRAMC_TSEG_SZ_1MB, UInt64(1) << 20), (MCH_ESMRAMC_TSEG_SZ_2MB, 2 << 20),
        (MCH_ESMRAMC_TSEG_SZ_8MB, 8 << 20), (MCH_ESMRAMC_TSEG_SZ_EXT, 48 << 20),
    ])
    func tsegSizeDecoding(size: Int32, bytes: UInt64) throws {
        let rig = try PCIRig(extTSEGMiB: 48)
        #expect(Q35HostBridge.tsegBytes(esmramc: UInt8(size), extTSEGMiB: 48) == bytes)
        // T_EN alone does not decode TSEG (QEMU requires G_SMRAME too).
        #expect(rig.write8(MCH_ESMRAMC, MCH_ESMRAMC_T_EN | size).isEmpty)
        #expect(!rig.mch.smramControl.tsegEnabled)
        let effects = rig.write8(MCH_SMRAM, MCH_SMRAM_G_SMRAME)
        #expect(effects.count == 1)
        #expect(rig.mch.smramControl.tsegEnabled)
        #expect(rig.mch.smramControl.tsegBytes == bytes)
    }

    @Test func extendedTSEGRegister() throws {
        let rig = try PCIRig(extTSEGMiB: 32)
        let register = Int(MCH_EXT_TSEG_MBYTES)
        #expect(rig.write(register, size: 2, value: UInt32(MCH_EXT_TSEG_MBYTES_QUERY)).isEmpty)
        #expect(rig.read(register, size: 2) == 32)
        // Without extended TSEG the query reads back unchanged: "feature absent" to OVMF.
        let plain = try PCIRig(extTSEGMiB: 0)
        #expect(plain.read(register, size: 2) == 0)
        plain.write(register, size: 2, value: 0xFFFF)
        #expect(plain.read(register, size: 2) == 0xFFFF)
        plain.write8(MCH_ESMRAMC, MCH_ESMRAMC_T_EN | MCH_ESMRAMC_TSEG_SZ_EXT)
        plain.write8(MCH_SMRAM, MCH_SMRAM_G_SMRAME)
        #expect(!plain.mch.smramControl.tsegEnabled && plain.mch.smramControl.tsegBytes == 0)
        #expect(throws: Q35HostBridge.ConfigError.invalidExtTSEG(0x1000)) {
            try Q35HostBridge(extTSEGMiB: 0x1000)
        }
    }

    @Test func dwordWriteAcrossSMRAMRegisters() throws {
        let rig = try PCIRig()
        // One 32-bit write at 0x9C covers F_SMBASE, SMRAM and ESMRAMC; all hooks run, one effect.
        let value = UInt32(MCH_F_SMBASE_QUERY) | UInt32(smramOpen) << 8 | UInt32(MCH_ESMRAMC_T_EN) << 16
        let effects = rig.write(0x9C, size: 4, value: value)
        #expect(effects.count == 1)
        #expect(rig.read8(MCH_F_SMBASE) == 0x01)
        #expect(
            rig.mch.smramControl
                == SMRAMControl(
                    tsegEnabled: true, tsegBytes: 1 << 20, gSMRAME: true, dOpen: true, locked: false,
                    defaultSMBASEState: .open))
    }
}
