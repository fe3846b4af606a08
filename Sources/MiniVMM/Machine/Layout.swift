// SPDX-License-Identifier: MIT
import GuestFirmware

/// Guest-physical addresses of the machine minivmm builds (Firecracker's `layout.rs`): everything the VMM
/// itself places. Addresses the firmware relies on live in guest/include/minivmm_contract.h.
public enum Layout {
    /// Start of the legacy VGA hole (not RAM, as on QEMU's PC machines).
    public static let vgaHoleStart: UInt64 = 0xA0000
    /// End of the legacy VGA hole.
    public static let vgaHoleEnd: UInt64 = 0xC0000
    /// 1 MiB: the isa-bios alias of the firmware ends here.
    public static let oneMiB: UInt64 = 0x10_0000
    /// 4 GiB: the firmware image ends here; RAM must end below the 32-bit hole.
    public static let fourGiB: UInt64 = 0x1_0000_0000
    /// Start of the 32-bit MMIO hole: RAM may not reach it.
    public static let pciHoleStart: UInt64 = 0xE000_0000
    /// The xAPIC MMIO page (`APIC_MMIO_BASE`).
    public static let apicBase = UInt64(APIC_MMIO_BASE)
    /// Size of the xAPIC page.
    public static let apicSize: UInt64 = 0x1000
    /// KVM_SET_TSS_ADDR (three pages), as QEMU does on Intel hosts.
    public static let tssAddress: UInt64 = 0xFFFB_D000
    /// KVM_SET_IDENTITY_MAP_ADDR (one page).
    public static let identityMapAddress: UInt64 = 0xFFFB_C000

    /// Emulated SMM backend only: the page holding the interrupt vector table the SMM vCPU runs with while
    /// it is in SMM. It exists only in the SMRAM view (the second VM), never in the guest's normal view.
    public static let smmTrapIVT: UInt64 = 0xFEF0_0000
    /// Emulated SMM backend only: IVT entry v points to `smmTrapSegment:v`, i.e. linear `smmTrapBase + v`,
    /// inside the VGA hole where nothing is mapped; fetching there stops the vCPU with RIP = vector.
    public static let smmTrapSegment: UInt16 = 0xBFF0
    /// Linear base of the trap targets (`smmTrapSegment << 4`).
    public static let smmTrapBase: UInt64 = UInt64(smmTrapSegment) << 4
    /// Real-mode IDT limit used in SMM by the emulated backend (256 four-byte vectors). KVM loads limit 0 on
    /// SMM entry, but a real-mode IDT limit of 0 makes this host's vCPU hang inside KVM_RUN on any exception.
    public static let smmTrapIVTLimit: UInt16 = 0x3FF

    /// The default SMBASE after RESET and the first-SMI entry point 3000:8000.
    public static let defaultSMBASE = UInt64(SMM_DEFAULT_SMBASE)
    public static let defaultSMIEntry = UInt64(SMM_DEFAULT_SMBASE) + UInt64(SMM_HANDLER_OFFSET)
    /// SMI entry point relative to SMBASE (SDM 34.5: SMBASE + 0x8000).
    public static let smiHandlerOffset = UInt64(SMM_HANDLER_OFFSET)
    /// The window MCH 0x9C turns into SMRAM (QEMU `MCH_HOST_BRIDGE_SMBASE_ADDR`, `_SIZE`).
    public static let defaultSMRAMBase = UInt64(MINIVMM_DEFAULT_SMRAM_BASE)
    public static let defaultSMRAMEnd = UInt64(MINIVMM_DEFAULT_SMRAM_BASE) + UInt64(MINIVMM_DEFAULT_SMRAM_SIZE)
}

/// The memslot ids minivmm uses; the same ids are used in the normal view and in the SMRAM view.
public enum Slot: UInt16, CaseIterable, Sendable {
    case lowRAM = 0  // 0 .. 0x30000
    case upperRAM = 1  // unused since the PAM regions (pam0-pam12) map 0xC0000 .. 1 MiB
    case highRAM = 2  // 1 MiB .. TSEG base
    case tseg = 3  // TSEG (top of RAM): absent from the normal view once T_EN closes it
    case rom = 4  // firmware ending at 4 GiB, read-only
    case romAlias = 5  // unused: the isa-bios alias is mapped by the PAM regions in their PCI mode
    case smmTrap = 6  // SMRAM view only: the trap IVT page
    case defaultSMRAM = 7  // 0x30000 .. 0x50000: absent from the normal view once MCH 0x9C locks it
    case lowRAMAbove = 8  // 0x50000 .. 0xA0000
    case aSegment = 9  // 0xA0000 .. 0xC0000: RAM in a view only while MCH 0x9D shows it there
    // 0xC0000 .. 0x100000 in the 13 PAM regions (0: 0xF0000 .. 0x100000; 1-12: 16 KiB each from 0xC0000): RAM,
    // read-only RAM, the isa-bios ROM alias or pc.rom, or nothing, as MCH 0x90-0x96 select.
    case pam0 = 10, pam1, pam2, pam3, pam4, pam5, pam6, pam7, pam8, pam9, pam10, pam11, pam12
    // `--pflash`: the variable store (QEMU `system.flash1`) below the code flash (which uses `rom`), read-only while
    // the flash is in read-array (ROMD) mode, absent in command mode so that reads exit as MMIO.
    case pflashVars = 23
}
