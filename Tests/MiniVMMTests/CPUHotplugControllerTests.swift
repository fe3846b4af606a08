// SPDX-License-Identifier: MIT
import GuestFirmware
import Testing

@testable import MiniVMM

/// QEMU's modern ACPI CPU hotplug block, driven the way OVMF and QEMU's AML drive it.
@Suite struct CPUHotplugControllerTests {
    let sel = Int(CPUHP_W_CPU_SEL)
    let stat = Int(CPUHP_R_CPU_STAT)
    let cmd = Int(CPUHP_W_CMD)
    let data = Int(CPUHP_RW_CMD_DATA)
    let data2 = Int(CPUHP_R_CMD_DATA2)
    let getNext = UInt32(CPUHP_CMD_GET_NEXT_CPU_WITH_EVENT)
    let getID = UInt32(CPUHP_CMD_GET_CPU_ID)
    let vendorSMBASE = UInt32(CPUHP_CMD_MINIVMM_SMBASE)

    func select(_ hp: CPUHotplugController, _ cpu: UInt32) {
        #expect(hp.write(offset: sel, size: 4, value: cpu, inSMM: false) == nil)
    }

    func status(_ hp: CPUHotplugController) -> UInt32 {
        hp.read(offset: stat, size: 1, inSMM: false).value
    }

    @Test func modernInterfaceDetection() {
        // OVMF: select 0, command 0, then command data 2 must read 0 (the legacy block reads all-ones).
        let hp = CPUHotplugController(possibleCPUs: 4, present: [0, 1])
        select(hp, 0)
        #expect(hp.write(offset: cmd, size: 1, value: getNext, inSMM: false) == nil)
        #expect(hp.read(offset: data2, size: 4, inSMM: false).value == 0)
        #expect(hp.read(offset: data, size: 4, inSMM: false).value == 0)
        #expect(status(hp) == UInt32(CPUHP_STAT_ENABLED))
    }

    @Test func coldPluggedCPUsHaveNoEvents() {
        let hp = CPUHotplugController(possibleCPUs: 8, present: [0, 1, 2])
        #expect(hp.pendingEventCount == 0)
        #expect(hp.isPresent(2))
        #expect(!hp.isPresent(3))
        #expect(!hp.isPresent(8))
        select(hp, 3)
        #expect(status(hp) == 0)
    }

    @Test func plugSetsPresentAndInsert() {
        let hp = CPUHotplugController(possibleCPUs: 4, present: [0])
        #expect(hp.plug(cpu: 2))
        #expect(!hp.plug(cpu: 2))
        #expect(!hp.plug(cpu: 4))
        #expect(hp.isPresent(2))
        #expect(hp.pendingEventCount == 1)
        select(hp, 2)
        #expect(status(hp) == UInt32(CPUHP_STAT_ENABLED | CPUHP_STAT_INSERT))
    }

    @Test func getNextWrapsAroundFromNonzeroSelector() {
        let hp = CPUHotplugController(possibleCPUs: 8, present: [0])
        #expect(hp.plug(cpu: 1))
        #expect(hp.plug(cpu: 6))
        // From 3 the scan finds 6 first.
        select(hp, 3)
        _ = hp.write(offset: cmd, size: 1, value: getNext, inSMM: false)
        #expect(hp.read(offset: data, size: 4, inSMM: false).value == 6)
        #expect(hp.selector == 6)
        // From 7 it wraps to 1.
        select(hp, 7)
        _ = hp.write(offset: cmd, size: 1, value: getNext, inSMM: false)
        #expect(hp.read(offset: data, size: 4, inSMM: false).value == 1)
        // A CPU's own event stops the scan at the start.
        _ = hp.write(offset: cmd, size: 1, value: getNext, inSMM: false)
        #expect(hp.selector == 1)
    }

    @Test func getNextWithoutEventsKeepsSelector() {
        let hp = CPUHotplugController(possibleCPUs: 4, present: [0, 1])
        select(hp, 2)
        _ = hp.write(offset: cmd, size: 1, value: getNext, inSMM: false)
        #expect(hp.read(offset: data, size: 4, inSMM: false).value == 2)
    }

    @Test func insertAndRemoveClear() {
        let hp = CPUHotplugController(possibleCPUs: 4, present: [0, 1])
        #expect(hp.plug(cpu: 2))
        #expect(hp.requestUnplug(cpu: 1))
        #expect(!hp.requestUnplug(cpu: 0))
        #expect(!hp.requestUnplug(cpu: 3))
        #expect(hp.pendingEventCount == 2)
        select(hp, 1)
        #expect(status(hp) == UInt32(CPUHP_STAT_ENABLED | CPUHP_STAT_REMOVE))
        // One action per control write: bit1 wins over bit2, so a write of 6 clears only insert.
        _ = hp.write(offset: stat, size: 1, value: 6, inSMM: false)
        #expect(status(hp) == UInt32(CPUHP_STAT_ENABLED | CPUHP_STAT_REMOVE))
        _ = hp.write(offset: stat, size: 1, value: UInt32(CPUHP_STAT_REMOVE), inSMM: false)
        #expect(status(hp) == UInt32(CPUHP_STAT_ENABLED))
        select(hp, 2)
        _ = hp.write(offset: stat, size: 1, value: UInt32(CPUHP_STAT_INSERT), inSMM: false)
        #expect(status(hp) == UInt32(CPUHP_STAT_ENABLED))
        #expect(hp.pendingEventCount == 0)
    }

    @Test func ejectRefusedForCPU0AndAbsentCPUs() {
        let hp = CPUHotplugController(possibleCPUs: 4, present: [0, 1])
        select(hp, 0)
        let refused = hp.write(offset: stat, size: 1, value: UInt32(CPUHP_STAT_EJECT), inSMM: false)
        guard case .ignored = refused else {
            Issue.record("eject of CPU 0 was not refused: \(String(describing: refused))")
            return
        }
        #expect(hp.isPresent(0))
        select(hp, 3)
        guard case .ignored = hp.write(offset: stat, size: 1, value: UInt32(CPUHP_STAT_EJECT), inSMM: false) else {
            Issue.record("eject of an absent CPU was not refused")
            return
        }
    }

    @Test func ejectReturnsEffectAndClearsFwRemove() {
        let hp = CPUHotplugController(possibleCPUs: 4, present: [0, 1, 2])
        #expect(hp.requestUnplug(cpu: 2))
        select(hp, 2)
        _ = hp.write(offset: stat, size: 1, value: UInt32(CPUHP_STAT_FW_REMOVE), inSMM: false)
        #expect(status(hp) & UInt32(CPUHP_STAT_FW_REMOVE) != 0)
        _ = hp.write(offset: stat, size: 1, value: UInt32(CPUHP_STAT_REMOVE), inSMM: false)
        // fw_remove alone is still an event for GET_NEXT.
        select(hp, 0)
        _ = hp.write(offset: cmd, size: 1, value: getNext, inSMM: false)
        #expect(hp.selector == 2)
        let effect = hp.write(offset: stat, size: 1, value: UInt32(CPUHP_STAT_EJECT), inSMM: true)
        #expect(effect == .eject(cpu: 2))
        #expect(!hp.isPresent(2))
        #expect(status(hp) == 0)
        #expect(hp.pendingEventCount == 0)
        // A second eject finds no CPU.
        #expect(hp.write(offset: stat, size: 1, value: UInt32(CPUHP_STAT_EJECT), inSMM: true) != .eject(cpu: 2))
        // The slot can be plugged again.
        #expect(hp.plug(cpu: 2))
    }

    @Test func getCPUIDFor300() {
        let hp = CPUHotplugController(possibleCPUs: 512, present: [0])
        select(hp, 300)
        _ = hp.write(offset: cmd, size: 1, value: getID, inSMM: false)
        #expect(hp.read(offset: data, size: 4, inSMM: false).value == 300)
        #expect(hp.read(offset: data2, size: 4, inSMM: false).value == 0)
        // Narrow reads are masked to their width, as QEMU's memory core does.
        #expect(hp.read(offset: data, size: 1, inSMM: false).value == 300 & 0xFF)
    }

    @Test func invalidSelector() {
        let hp = CPUHotplugController(possibleCPUs: 4, present: [0, 1])
        #expect(hp.plug(cpu: 3))
        select(hp, 4)
        let read = hp.read(offset: stat, size: 1, inSMM: false)
        #expect(read.value == 0)
        #expect(read.effect != nil)
        #expect(hp.read(offset: data, size: 4, inSMM: false).value == 0)
        // Writes other than the selector are ignored: GET_NEXT does not scan, command stays.
        _ = hp.write(offset: cmd, size: 1, value: getID, inSMM: false)
        #expect(hp.command == UInt8(getNext))
        #expect(hp.selector == 4)
        guard case .ignored = hp.write(offset: stat, size: 1, value: UInt32(CPUHP_STAT_INSERT), inSMM: false) else {
            Issue.record("control write with an invalid selector was not ignored")
            return
        }
        #expect(hp.pendingEventCount == 1)
        // The selector itself can always be rewritten.
        select(hp, 3)
        #expect(status(hp) == UInt32(CPUHP_STAT_ENABLED | CPUHP_STAT_INSERT))
    }

    @Test func accessWidths() {
        let hp = CPUHotplugController(possibleCPUs: 300, present: [0])
        // A byte write at offset 0 replaces the whole selector.
        select(hp, 0x123)
        _ = hp.write(offset: sel, size: 1, value: 0x05, inSMM: false)
        #expect(hp.selector == 5)
        // Unaligned and out-of-block accesses are invalid.
        #expect(hp.write(offset: 2, size: 4, value: 0, inSMM: false) != nil)
        #expect(hp.read(offset: 5, size: 2, inSMM: false).effect != nil)
        #expect(hp.read(offset: 12, size: 1, inSMM: false).effect != nil)
        #expect(hp.read(offset: 0, size: 8, inSMM: false).effect != nil)
        // A dword write at the control offset does not reach the command byte.
        _ = hp.write(offset: stat, size: 4, value: UInt32(getID) << 8, inSMM: false)
        #expect(hp.command == UInt8(getNext))
    }

    @Test func unknownCommandIsIgnored() {
        let hp = CPUHotplugController(possibleCPUs: 2, present: [0])
        _ = hp.write(offset: cmd, size: 1, value: getID, inSMM: false)
        #expect(hp.write(offset: cmd, size: 1, value: 4, inSMM: false) != nil)
        #expect(hp.command == UInt8(getID))
    }

    @Test func ostEventAndStatusAreRecorded() {
        let hp = CPUHotplugController(possibleCPUs: 4, present: [0, 1])
        select(hp, 1)
        _ = hp.write(offset: cmd, size: 1, value: UInt32(CPUHP_CMD_OST_EVENT), inSMM: false)
        #expect(hp.write(offset: data, size: 4, value: 0x103, inSMM: false) == nil)
        _ = hp.write(offset: cmd, size: 1, value: UInt32(CPUHP_CMD_OST_STATUS), inSMM: false)
        #expect(hp.write(offset: data, size: 4, value: 0x80, inSMM: false) == nil)
        #expect(hp.status(cpu: 1)?.ostEvent == 0x103)
        #expect(hp.status(cpu: 1)?.ostStatus == 0x80)
        #expect(hp.ostStatusWrites == 1)
    }

    @Test func vendorSMBASERegisterIsSMMOnly() {
        let hp = CPUHotplugController(possibleCPUs: 4, present: [0])
        select(hp, 2)
        _ = hp.write(offset: cmd, size: 1, value: vendorSMBASE, inSMM: false)
        // Outside SMM: the write is dropped and counted, the read returns 0 and is counted.
        #expect(hp.write(offset: data, size: 4, value: 0x7F00_0000, inSMM: false) != nil)
        #expect(hp.deniedSMBASEWrites == 1)
        #expect(hp.smbaseRegister(cpu: 2) == nil)
        // In SMM: the register is programmed and reads back.
        #expect(hp.write(offset: data, size: 4, value: 0x7F00_8000, inSMM: true) == nil)
        #expect(hp.smbaseRegister(cpu: 2) == 0x7F00_8000)
        #expect(hp.read(offset: data, size: 4, inSMM: true).value == 0x7F00_8000)
        let outside = hp.read(offset: data, size: 4, inSMM: false)
        #expect(outside.value == 0)
        #expect(hp.deniedSMBASEReads == 1)
        #expect(hp.smbaseRegister(cpu: 1) == nil)
        #expect(hp.smbaseRegister(cpu: 9) == nil)
        #expect(hp.read(offset: data2, size: 4, inSMM: true).value == 0)
    }
}
