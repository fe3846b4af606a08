// SPDX-License-Identifier: MIT
import GuestFirmware
import Testing

@testable import MiniVMM

/// The q35 pieces stock firmware needs (QEMU semantics), as pure models: PAM, A-segment SMRAM, PCIEXBAR/ECAM, the
/// ICH9 LPC bridge and its PM block (PM timer, SMI_EN and its gating of APM SMIs), CMOS, fw_cfg's e820 table.
@Suite struct StockChipsetTests {
    @Test func pamRegistersDecodeQEMUsThirteenRegions() throws {
        let rig = try PCIRig()
        #expect(rig.mch.pam.mode(0) == .pci)
        // SeaBIOS's make_bios_writable: PAM0 high nibble (0xF0000) and every 16 KiB region RW.
        let effects = rig.write(0x90, size: 4, value: 0x3333_3330)
        #expect(effects == [.pamChanged(PAMState(registers: [0x30, 0x33, 0x33, 0x33, 0, 0, 0]))])
        #expect(
            rig.mch.pam.mode(0) == .readWrite && rig.mch.pam.mode(1) == .readWrite && rig.mch.pam.mode(6) == .readWrite)
        #expect(rig.mch.pam.mode(7) == .pci)
        // make_bios_readonly: 0x11 is read-only DRAM; 0x2 in a low nibble is write-only.
        rig.write(0x90, size: 4, value: 0x1111_1110)
        rig.write(0x94, size: 1, value: 0x12)
        #expect(rig.mch.pam.mode(0) == .readOnly && rig.mch.pam.mode(2) == .readOnly)
        #expect(rig.mch.pam.mode(7) == .writeOnly && rig.mch.pam.mode(8) == .readOnly)
        // A write that changes nothing emits nothing.
        #expect(rig.write(0x94, size: 1, value: 0x12).isEmpty)
        #expect(PAMState.range(0) == 0xF0000..<0x10_0000)
        #expect(PAMState.range(1) == 0xC0000..<0xC4000)
        #expect(PAMState.range(12) == 0xEC000..<0xF0000)
        #expect(PAMState.region(holding: 0xC3FFF) == 1)
        #expect(PAMState.region(holding: 0xEFFFF) == 12)
        #expect(PAMState.region(holding: 0xFFFFF) == 0)
        #expect(PAMState.region(holding: 0xBFFFF) == nil && PAMState.region(holding: 0x10_0000) == nil)
        #expect(PAMState(registers: [1]).mode(0) == .pci)  // malformed state: no trap
    }

    @Test func aSegmentFollowsD_OPENAndG_SMRAME() throws {
        let rig = try PCIRig()
        #expect(!rig.mch.smramControl.aSegmentOpen && !rig.mch.smramControl.aSegmentInSMM)
        rig.write8(MCH_SMRAM, 0x4A)  // SeaBIOS: D_OPEN | G_SMRAME | C_BASE_SEG
        var c = rig.mch.smramControl
        #expect(c.aSegmentOpen && c.aSegmentInSMM && !c.aSegmentClosed)
        rig.write8(MCH_SMRAM, 0x0A)  // then G_SMRAME only: SMRAM for SMM code alone
        c = rig.mch.smramControl
        #expect(!c.aSegmentOpen && c.aSegmentInSMM && c.aSegmentClosed)
        rig.write8(MCH_ESMRAMC, Int32(MCH_ESMRAMC_H_SMRAME))  // H_SMRAME hides the low SMRAM
        c = rig.mch.smramControl
        #expect(!c.aSegmentInSMM && !c.aSegmentClosed)
        rig.write8(MCH_ESMRAMC, 0)
        rig.write8(MCH_SMRAM, 0x1A)  // D_LCK: D_OPEN can no longer be set
        rig.write8(MCH_SMRAM, 0x4A)
        c = rig.mch.smramControl
        #expect(c.locked && c.aSegmentClosed && !c.aSegmentOpen)
    }

    @Test func subsystemIDAndPCIEXBARDecode() throws {
        let rig = try PCIRig()
        #expect(rig.read(0x2C, size: 4) == 0x1100_1AF4)
        #expect(rig.mch.ecam == nil)
        rig.write(0x60, size: 4, value: 0xB000_0001)
        rig.write(0x64, size: 4, value: 0)
        #expect(rig.mch.ecam == 0xB000_0000..<0xC000_0000)
        #expect(rig.mch.ecamRead(address: 0xB000_0000, size: 4) == 0x29C0_8086)
        #expect(rig.mch.ecamRead(address: 0xAFFF_FFFF, size: 4) == nil)
        #expect(rig.mch.ecamRead(address: 0xB000_8000, size: 4) == 0xFFFF_FFFF)  // 00:01.0 absent
        #expect(rig.mch.ecamRead(address: 0xB010_0000, size: 2) == 0xFFFF)  // bus 1 absent
        // A config write through ECAM reaches the MCH (SeaBIOS closes the A-segment this way).
        let effects = try #require(rig.mch.ecamWrite(address: 0xB000_009D, size: 1, value: 0x4A))
        #expect(effects.contains { if case .smramControlChanged = $0 { true } else { false } })
        rig.write(0x60, size: 4, value: 0xE000_0005)  // 64 MiB at 0xE0000000
        #expect(rig.mch.ecam == 0xE000_0000..<0xE400_0000)
        rig.write(0x60, size: 4, value: 0xE000_0007)  // reserved length: QEMU aborts, minivmm disables
        #expect(rig.mch.ecam == nil)
    }

    /// The host bridge, the LPC at 00:1f.0 and its PM block on one bus, with a clock the test drives.
    struct LPCRig {
        let pci: PCIRig
        let lpc: ICH9LPC
        var nanoseconds: UInt64 = 1_000

        init(clock: @escaping () -> UInt64) throws {
            pci = try PCIRig()
            lpc = ICH9LPC(bus: pci.bus, pm: ICH9PMIO(clock: clock))
            pci.mch.attach(lpc, devfn: ICH9LPC.devfn)
        }

        func lpcRead(_ r: Int, size: Int) -> UInt32 { pci.read(r, size: size, device: 31) }
        @discardableResult func lpcWrite(_ r: Int, size: Int, _ v: UInt32) -> [DeviceEffect] {
            pci.write(r, size: size, value: v, device: 31)
        }
        func inl(_ port: UInt16) -> UInt32 { pci.bus.read(port: port, size: 4, context: cpu0) }
        func outl(_ port: UInt16, _ v: UInt32) { _ = pci.bus.write(port: port, size: 4, value: v, context: cpu0) }
    }

    final class FakeClock: @unchecked Sendable {
        var ns: UInt64 = 5_000_000
    }

    @Test func lpcPlacesThePMBlockAtPMBASEOnlyWithACPI_EN() throws {
        let clock = FakeClock()
        let rig = try LPCRig { clock.ns }
        #expect(rig.lpcRead(0, size: 4) == 0x2918_8086)
        #expect(rig.lpcRead(0x08, size: 4) == 0x0601_0002)  // class 0601, revision 2
        #expect(rig.lpcRead(0x40, size: 4) == 1)  // RTE (OVMF reads it before programming)
        rig.lpcWrite(0x40, size: 4, 0x601)
        #expect(rig.lpc.pmBase == nil)  // ACPI_EN still clear
        #expect(rig.inl(0x608) == 0xFFFF_FFFF)
        rig.lpcWrite(0x44, size: 1, 0x80)
        #expect(rig.lpc.pmBase == 0x600)
        #expect(rig.lpcRead(0x40, size: 4) == 0x601)
        // The PM timer: 3.579545 MHz from the clock, 24 bits.
        let t0 = rig.inl(0x608)
        clock.ns += 1_000_000_000
        #expect(rig.inl(0x608) &- t0 & 0xFF_FFFF == 3_579_545)
        clock.ns += 10 * 1_000_000_000
        #expect(rig.inl(0x608) <= 0xFF_FFFF)
        // Moving PMBASE moves the block; clearing ACPI_EN removes it.
        rig.lpcWrite(0x40, size: 4, 0xB001)
        #expect(rig.lpc.pmBase == 0xB000 && rig.inl(0x608) == 0xFFFF_FFFF && rig.inl(0xB030) == 0)
        for _ in 0..<1000 { rig.lpcWrite(0x40, size: 4, 0x601); rig.lpcWrite(0x40, size: 4, 0xB001) }
        #expect(rig.pci.bus.registrations.count == 2)  // relocations reuse the entry
        rig.lpcWrite(0x44, size: 1, 0)
        #expect(rig.lpc.pmBase == nil && rig.inl(0xB030) == 0xFFFF_FFFF)
    }

    @Test func smiEnableAndSMI_LOCKFollowQEMU() throws {
        let rig = try LPCRig { 0 }
        rig.lpcWrite(0x40, size: 4, 0x601)
        rig.lpcWrite(0x44, size: 1, 0x80)
        #expect(rig.inl(0x630) == 0)  // OVMF: APMC_EN must read 0 first
        rig.outl(0x630, 0x21)
        #expect(rig.inl(0x630) == 0x21)
        rig.lpcWrite(0xA0, size: 1, 0x10)  // SMI_LOCK
        #expect(rig.lpc.smiLocked)
        rig.outl(0x630, 0x20)  // GBL_SMI_EN is now read-only
        #expect(rig.inl(0x630) == 0x21)
        rig.lpcWrite(0xA0, size: 1, 0)  // and SMI_LOCK stays set
        #expect(rig.lpc.smiLocked)
        rig.outl(0x630, 0x01)  // APMC_EN stays writable
        #expect(rig.inl(0x630) == 0x01)
        rig.outl(0x634, 0xFFFF_FFFF)
        #expect(rig.inl(0x634) == 0)  // SMI_STS read-only (QEMU 7.2)
        // 16-bit accesses to SMI_EN are not valid: ignored.
        _ = rig.pci.bus.write(port: 0x630, size: 2, value: 0x20, context: cpu0)
        #expect(rig.inl(0x630) == 0x01)
    }

    @Test func apmSMIsAreGatedBySMI_ENWhenTheLPCIsTheGate() {
        let pm = ICH9PMIO(clock: { 0 })
        let apm = APMControl()
        apm.gate = pm
        #expect(apm.write(offset: 0, size: 1, value: 0x00, context: cpu0).isEmpty)
        #expect(apm.gatedWrites == 1)
        _ = pm.write(offset: 0x30, size: 4, value: ICH9PMIO.apmcEnable, context: cpu0)
        #expect(apm.write(offset: 0, size: 1, value: 0x00, context: cpu0) == [.broadcastSMI(command: 0)])
        // ACPI enable/disable (0x02/0x03) toggle SCI_EN and raise no SMI.
        #expect(apm.write(offset: 0, size: 1, value: 0x02, context: cpu0).isEmpty)
        #expect(pm.read(offset: 4, size: 2, context: cpu0) & 1 == 1)
        #expect(apm.write(offset: 0, size: 1, value: 0x03, context: cpu0).isEmpty)
        #expect(pm.read(offset: 4, size: 2, context: cpu0) & 1 == 0)
        // Without a gate (the built-in firmwares) every write raises one.
        #expect(APMControl().write(offset: 0, size: 1, value: 0x00, context: cpu0) == [.broadcastSMI(command: 0)])
    }

    @Test func port92KeepsA20AndRequestsResetOnARisingBit0() {
        let p = Port92()
        #expect(p.read(offset: 0, size: 1, context: cpu0) == 0)
        #expect(p.write(offset: 0, size: 1, value: 0x02, context: cpu0).isEmpty)  // SeaBIOS's set_a20
        #expect(p.read(offset: 0, size: 1, context: cpu0) == 0x02)
        #expect(p.write(offset: 0, size: 1, value: 0x03, context: cpu0).count == 1)
        #expect(p.write(offset: 0, size: 1, value: 0x03, context: cpu0).isEmpty)  // no new rising edge
        p.reset()
        #expect(p.read(offset: 0, size: 1, context: cpu0) == 0x02)
    }

    @Test func pic8259KeepsWhatSeaBIOSProgramsAndELCRItsMask() {
        let pic = I8259(master: true)
        func out(_ port: UInt16, _ v: UInt32) { _ = pic.write(offset: port, size: 1, value: v, context: cpu0) }
        func inb(_ port: UInt16) -> UInt32 { pic.read(offset: port, size: 1, context: cpu0) }
        // SeaBIOS pic_setup: ICW1 0x11, ICW2 0x08, ICW3 0x04, ICW4 0x01, then the mask.
        out(0, 0x11)
        #expect(pic.initState == 1)
        out(1, 0x08)
        out(1, 0x04)
        out(1, 0x01)
        #expect(pic.initState == 0 && pic.irqBase == 0x08 && !pic.autoEOI)
        out(1, 0xFB)
        #expect(inb(1) == 0xFB)
        out(0, 0x0B)  // OCW3: read ISR
        #expect(inb(0) == 0)
        out(0, 0x0C)  // OCW3: poll, nothing pending
        #expect(inb(0) == 0 && inb(1) == 0xFB)
        out(0, 0xC3)  // OCW2: set priority, lowest IRQ 3
        #expect(pic.priorityAdd == 4)
        out(0, 0x12)  // ICW1 without ICW4, single: ICW2 ends the sequence
        out(1, 0x70)
        #expect(pic.initState == 0 && pic.imr == 0 && pic.irqBase == 0x70)
        let elcr = ELCR()
        _ = elcr.write(offset: 0, size: 2, value: 0xFFFF, context: cpu0)
        #expect(elcr.read(offset: 0, size: 2, context: cpu0) == 0xDEF8)
    }

    @Test func e820TableIsQEMUsOneRAMEntry() {
        let t = MachineDevices.e820Table(ramBytes: 128 << 20)
        #expect(t == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 1, 0, 0, 0])
    }

    @Test func cmosHoldsPCCMOSInitBytesAndLiveTime() {
        let b = CMOS.initialBytes(ramBytes: 128 << 20, bootCPUs: 2)
        #expect(b[0x15] == 0x80 && b[0x16] == 0x02)  // 640 KiB
        #expect(b[0x17] == 0xFF && b[0x18] == 0xFF && b[0x30] == 0xFF && b[0x31] == 0xFF)  // capped at 65535 KiB
        #expect(b[0x34] == 0x00 && b[0x35] == 0x07)  // (128 - 16) MiB / 64 KiB = 0x700
        #expect(b[0x5B] == 0 && b[0x5C] == 0 && b[0x5D] == 0)
        #expect(b[0x5F] == 1)
        #expect(b[0x0A] == 0x26 && b[0x0B] == 0x02 && b[0x0D] == 0x80)
        let small = CMOS.initialBytes(ramBytes: 8 << 20, bootCPUs: 1)
        #expect(small[0x34] == 0 && small[0x17] == 0x00 && small[0x18] == 0x1C)  // 7 MiB above 1 MiB
        // 2026-12-03 07:32:56 UTC (a Thursday), BCD.
        let cmos = CMOS(ramBytes: 128 << 20, bootCPUs: 2, now: { 1_796_283_176 })
        func rd(_ i: UInt32) -> UInt32 {
            _ = cmos.write(offset: 0, size: 1, value: i | 0x80, context: cpu0)
            return cmos.read(offset: 1, size: 1, context: cpu0)
        }
        #expect(rd(0x00) == 0x56 && rd(0x02) == 0x32 && rd(0x04) == 0x07)
        #expect(rd(0x07) == 0x03 && rd(0x08) == 0x12 && rd(0x09) == 0x26 && rd(0x32) == 0x20 && rd(0x06) == 0x05)
        #expect(cmos.read(offset: 0, size: 1, context: cpu0) == 0xFF)
        // Setting the hour moves the clock; binary mode reads the same time in binary.
        _ = cmos.write(offset: 0, size: 1, value: 0x04, context: cpu0)
        _ = cmos.write(offset: 1, size: 1, value: 0x23, context: cpu0)
        #expect(rd(0x04) == 0x23 && cmos.offsetSeconds == 16 * 3600)
        _ = cmos.write(offset: 0, size: 1, value: 0x0B, context: cpu0)
        _ = cmos.write(offset: 1, size: 1, value: 0x06, context: cpu0)
        #expect(rd(0x04) == 23 && rd(0x02) == 32)
        // Garbage never traps.
        _ = cmos.write(offset: 0, size: 1, value: 0x08, context: cpu0)
        _ = cmos.write(offset: 1, size: 1, value: 0xFF, context: cpu0)
        #expect(rd(0x08) == 12)
    }

    @Test func findingsNameWhoWasRelocatedWhereAndTheLocks() {
        var boot = CPUObservation(apicID: 0)
        boot.smbaseHistory = [
            SMBASEEvent(cause: .reset, phase: .boot, smbase: 0x30000),
            SMBASEEvent(cause: .rsm, phase: .boot, smbase: 0xA0000),
        ]
        boot.smiEntries = [
            SMIEntryRecord(phase: .boot, smbase: 0x30000, entry: 0x38000, inSMRAM: false, savedCS: 8, savedRIP: 0x1000)
        ]
        var ap = CPUObservation(apicID: 1)
        ap.smbaseHistory = [SMBASEEvent(cause: .reset, phase: .boot, smbase: 0x30000)]
        let map = SMRAMMap(tsegBase: 0x7F0_0000, tsegBytes: 1 << 20)
        _ = map.apply(
            SMRAMControl(
                tsegEnabled: false, tsegBytes: 0, gSMRAME: true, dOpen: false, locked: false,
                defaultSMBASEState: .absent), at: 0.5)
        let f = FirmwareFindings.observe(cpus: [boot, ap], windows: map.windows, events: map.events, accesses: .init())
        #expect(
            f.lines[0] == "boot CPU relocated to 0xA0000; CPU 1 never relocated (SMBASE 0x30000); SMRAM never locked")
        #expect(f.cpus[0].region == .aSegment && f.cpus[0].relocated && f.cpus[0].firstEntryInSMRAM == false)
        #expect(f.cpus[1].region == .ordinaryRAM && !f.cpus[1].relocated && f.cpus[1].smis == 0)
        #expect(f.windows.first { $0.kind == .aSegment }?.firstClosedAt == 0.5)
        #expect(!f.smramLocked)
        // A range the firmware never made SMRAM is named as what it stayed, not as open SMRAM.
        #expect(f.lines.contains { $0.hasPrefix("TSEG (0x7F00000-0x7FFFFFF): never enabled") })
        #expect(f.lines.contains { $0.hasPrefix("A-segment SMRAM (0xA0000-0xBFFFF): closed at 0.500 s") })
        // Locking shows.
        _ = map.apply(
            SMRAMControl(
                tsegEnabled: false, tsegBytes: 0, gSMRAME: true, dOpen: false, locked: true,
                defaultSMBASEState: .absent), at: 0.75)
        let g = FirmwareFindings.observe(cpus: [boot, ap], windows: map.windows, events: map.events, accesses: .init())
        #expect(g.smramLocked && g.lines[0].hasSuffix("SMRAM locked"))
        #expect(g.windows.first { $0.kind == .aSegment }?.lockedAt == 0.75)
    }
}
