// SPDX-License-Identifier: MIT
import KVMBridge

/// `--pflash CODE,VARS` in the machine: the two `cfi.pflash01` units of `PFlashBank`, each backed by a read-only
/// memslot while it is in ROMD (read-array) mode and by MMIO exits while it is in command mode, as QEMU maps a ROM
/// device into KVM (`memory_region_rom_device_set_romd` adds or removes the KVM slot). Unit 0 is the ROM mapping
/// itself (`GuestMemory.rom`, slot `rom`, also the source of the isa-bios alias); unit 1 has its own storage and
/// slot `pflashVars`. The lock guards the flashes.
extension Machine {
    static func makePFlash(_ config: MachineConfig, memory: GuestMemory) throws -> (PFlashBank?, PFlashFileWriter?) {
        guard let vars = config.pflashVars else { return (nil, nil) }
        let code = PFlashCFI01(
            name: "system.flash0", storage: memory.rom, size: Int(memory.romSize), readOnly: true,
            secure: config.pflashSecure)
        let store = try PFlashCFI01(name: "system.flash1", image: vars, readOnly: false, secure: config.pflashSecure)
        let bank = try PFlashBank([code, store])
        var writer: PFlashFileWriter?
        if config.pflashPersist, let path = config.pflashVarsPath {
            let w = try PFlashFileWriter(path: path, flash: store)
            store.onUpdate = { [unowned w] offset, count in w.update(offset: offset, count: count) }
            writer = w
        }
        return (bank, writer)
    }

    /// The slot of pflash unit `i`: unit 0 is the ROM.
    static func pflashSlot(_ i: Int) -> Slot { i == 0 ? .rom : .pflashVars }

    /// The read-only memslot of pflash unit `i` in ROMD mode.
    func pflashRegion(_ i: Int) -> MemoryRegion? {
        guard let bank = pflash, bank.units.indices.contains(i) else { return nil }
        let u = bank.units[i]
        return MemoryRegion(
            slot: Self.pflashSlot(i).rawValue, guestPhysicalAddress: u.base, size: UInt64(u.flash.size),
            hostAddress: u.flash.hostAddress, readOnly: true)
    }

    /// The variable store's slot at boot (nil without `--pflash`).
    func pflashVarsRegion() -> MemoryRegion? { pflashRegion(1) }

    /// An MMIO read inside the flashes (lock held); nil when `address` is not flash.
    func pflashRead(address: UInt64, size: Int, ctx: AccessContext) -> UInt64? {
        guard let bank = pflash, bank.contains(address) else { return nil }
        counters.pflashReads += 1
        return bank.read(address: address, size: size, fromSMM: ctx.inSMM)
    }

    /// An MMIO write inside the flashes (lock held): the command state machine, then the memslots of the units whose
    /// ROMD mode changed, in both views. False when `address` is not flash.
    func pflashWrite(address: UInt64, size: Int, value: UInt64, ctx: AccessContext) -> Bool {
        guard let bank = pflash, bank.contains(address) else { return false }
        let r = bank.write(address: address, size: size, value: value, fromSMM: ctx.inSMM)
        counters.pflashWrites += 1
        if r.refused { counters.pflashWritesRefused += 1 }
        for i in r.romdChanged { applyROMD(unit: i) }
        return true
    }

    /// Maps unit `i` read-only (ROMD) or unmaps it (command mode) in the normal and the SMM view.
    private func applyROMD(unit i: Int) {
        guard let bank = pflash, let region = pflashRegion(i) else { return }
        do {
            if bank.units[i].flash.romd {
                try mapIntoNormalView(region)
                try backend.mapIntoSMMView(region)
            } else {
                try unmapFromNormalView(slot: region.slot)
                try backend.unmapFromSMMView(slot: region.slot)
            }
        } catch {
            noteFailure("switching \(bank.units[i].flash.name) ROMD mode failed: \(error)")
        }
    }
}
