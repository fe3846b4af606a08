// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge

#if canImport(Glibc)
    import Glibc
#endif

/// 0xA0000–0xFFFFF as the Q35 MCH decodes it: the A-segment (MCH 0x9D) and the 13 PAM regions (0x90–0x96), in both
/// views. What each PAM region maps (QEMU `init_pam`): mode 3 RAM; mode 1 RAM read-only (writes exit and are
/// dropped); modes 0 and 2 the PCI side — the isa-bios alias of the ROM where it lies, QEMU's 128 KiB `pc.rom`
/// (zeros, read-only) at 0xC0000–0xDFFFF, nothing elsewhere — with mode 2's writes going to RAM through the VMM.
/// The lock guards it.
final class LegacyMemoryMap {
    /// QEMU `pc.rom` (`PC_ROM_MIN_VGA`…`PC_ROM_MAX`): read-only and empty without option ROMs.
    static let pcROMBase: UInt64 = 0xC0000
    static let pcROMSize: UInt64 = 0x20000
    let pcROM: UnsafeMutableRawPointer
    /// The PAM decode now, and which regions have a slot in the views.
    var pam = PAMState()
    var mapped = [Bool](repeating: false, count: PAMState.regions)
    /// Whether the A-segment's RAM is in the normal view and in the SMM view.
    var aSegmentNormal = false
    var aSegmentSMM = false
    /// Writes dropped by read-only or PCI-mode regions, and writes sent to RAM by write-only ones.
    var droppedWrites = 0
    var writeOnlyWrites = 0

    init() throws {
        guard
            let p = mmap(nil, Int(Self.pcROMSize), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            p != MAP_FAILED
        else { throw MachineError.hostResources("cannot map pc.rom") }
        pcROM = p
    }

    deinit { munmap(pcROM, Int(Self.pcROMSize)) }
}

extension Machine {
    static func pamSlot(_ i: Int) -> Slot { Slot(rawValue: Slot.pam0.rawValue + UInt16(i)) ?? .pam0 }

    /// What PAM region `i` maps in `mode` (nil: nothing, accesses exit as MMIO).
    func pamRegion(_ i: Int, mode: PAMState.Mode) -> MemoryRegion? {
        let r = PAMState.range(i)
        let slot = Self.pamSlot(i).rawValue
        switch mode {
        case .readWrite, .readOnly:
            return MemoryRegion(
                slot: slot, guestPhysicalAddress: r.lowerBound, size: UInt64(r.count),
                hostAddress: memory.hostAddress(ofRAM: r.lowerBound), readOnly: mode == .readOnly)
        case .pci, .writeOnly:
            let aliasBase = Layout.oneMiB - memory.romAliasSize
            let lo = max(r.lowerBound, aliasBase)
            if lo < r.upperBound {
                return MemoryRegion(
                    slot: slot, guestPhysicalAddress: lo, size: r.upperBound - lo,
                    hostAddress: memory.romAliasHost + (lo - aliasBase), readOnly: true)
            }
            let pcROM = LegacyMemoryMap.pcROMBase..<(LegacyMemoryMap.pcROMBase + LegacyMemoryMap.pcROMSize)
            if pcROM.contains(r.lowerBound) {
                return MemoryRegion(
                    slot: slot, guestPhysicalAddress: r.lowerBound, size: UInt64(r.count),
                    hostAddress: UInt64(UInt(bitPattern: legacy.pcROM)) + (r.lowerBound - pcROM.lowerBound),
                    readOnly: true)
            }
            return nil
        }
    }

    /// Maps every PAM region in its reset mode (PCI) into both views (machine construction).
    func mapLegacyMemory() throws {
        for i in 0..<PAMState.regions {
            if let r = pamRegion(i, mode: .pci) {
                try mapIntoNormalView(r)
                try backend.mapIntoSMMView(r)
                legacy.mapped[i] = true
            }
        }
    }

    /// QEMU `mch_update_pam` (lock held): remaps the regions whose mode changed, in both views.
    func applyPAM(_ p: PAMState) {
        backend.beforeObservedStateChange()
        for i in 0..<PAMState.regions where p.mode(i) != legacy.pam.mode(i) {
            let slot = Self.pamSlot(i).rawValue
            do {
                if legacy.mapped[i] {
                    try unmapFromNormalView(slot: slot)
                    try backend.unmapFromSMMView(slot: slot)
                    legacy.mapped[i] = false
                }
                if let r = pamRegion(i, mode: p.mode(i)) {
                    try mapIntoNormalView(r)
                    try backend.mapIntoSMMView(r)
                    legacy.mapped[i] = true
                }
            } catch {
                noteFailure("remapping PAM region \(i) failed: \(error)")
            }
        }
        legacy.pam = p
    }

    /// A write that exited in 0xC0000–0xFFFFF (lock held): write-only regions take it into RAM, the others drop it
    /// (read-only RAM, the ROM alias, pc.rom, or nothing). Returns false when `address` is outside the PAM range.
    func pamWrite(address: UInt64, size: Int, value: UInt64) -> Bool {
        guard let i = PAMState.region(holding: address) else { return false }
        if legacy.pam.mode(i) == .writeOnly, size > 0, size <= 8,
            PAMState.region(holding: address &+ UInt64(size - 1)) == i
        {
            memory.write((0..<size).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }, at: address)
            legacy.writeOnlyWrites += 1
        } else {
            legacy.droppedWrites += 1
            counters.romWrites += 1
        }
        return true
    }

    /// The page of the emulated backend's exception trap targets (`Layout.smmTrapBase` + vector): it must stay
    /// unmapped in the SMRAM view, so the A-segment's SMM-view slot stops short of it and the VMM serves SMM data
    /// accesses to it from RAM itself (`aSegmentTrapPageAccess`). Code there cannot run in SMM on that backend.
    var aSegmentTrapPage: Range<UInt64> {
        let page = Layout.smmTrapBase & ~0xFFF
        return page..<(page + 0x1000)
    }

    /// The A-segment in both views from the MCH decode (lock held): normal view while D_OPEN shows RAM there, SMM view
    /// also while G_SMRAME makes it SMRAM (QEMU `smram_region`, `low_smram`).
    func applyASegment(_ c: SMRAMControl) {
        let slot = Slot.aSegment.rawValue
        let region = MemoryRegion(
            slot: slot, guestPhysicalAddress: Layout.vgaHoleStart, size: Layout.vgaHoleEnd - Layout.vgaHoleStart,
            hostAddress: memory.hostAddress(ofRAM: Layout.vgaHoleStart))
        var smmRegion = region
        if backend.kind == .emulated {
            smmRegion.size = aSegmentTrapPage.lowerBound - Layout.vgaHoleStart
        }
        do {
            if c.aSegmentOpen != legacy.aSegmentNormal {
                if c.aSegmentOpen { try mapIntoNormalView(region) } else { try unmapFromNormalView(slot: slot) }
                legacy.aSegmentNormal = c.aSegmentOpen
            }
            if c.aSegmentInSMM != legacy.aSegmentSMM {
                if c.aSegmentInSMM {
                    try backend.mapIntoSMMView(smmRegion)
                } else {
                    try backend.unmapFromSMMView(slot: slot)
                }
                legacy.aSegmentSMM = c.aSegmentInSMM
            }
        } catch {
            noteFailure("remapping the A-segment failed: \(error)")
        }
    }

    /// An SMM data access to the trap page while the A-segment is RAM for SMM code (emulated backend, lock held): served
    /// from RAM as the SMRAM view would. Returns the value read (reads) or 0 (writes); nil when this is not such an
    /// access.
    func aSegmentTrapPageAccess(address: UInt64, size: Int, write: UInt64?, inSMM: Bool) -> UInt64? {
        guard inSMM, legacy.aSegmentSMM, backend.kind == .emulated, size > 0, size <= 8,
            aSegmentTrapPage.contains(address), aSegmentTrapPage.contains(address &+ UInt64(size - 1))
        else { return nil }
        if let v = write {
            memory.write((0..<size).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) }, at: address)
            return 0
        }
        guard let bytes = memory.read(address, count: size) else { return nil }
        return bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }
}
