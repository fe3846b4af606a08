// SPDX-License-Identifier: MIT
import GuestFirmware
import Testing

@testable import MiniVMM

@Suite struct DebugPortsTests {
    func machineBus() throws -> (PortIOBus, ReportPort) {
        let bus = PortIOBus()
        let report = ReportPort()
        try bus.register(DebugConsole(), base: DebugConsole.port, length: DebugConsole.length)
        try bus.register(DebugExit(), base: DebugExit.port, length: DebugExit.length)
        try bus.register(APMControl(), base: APMControl.port, length: APMControl.length)
        try bus.register(report, base: ReportPort.port, length: ReportPort.length)
        return (bus, report)
    }

    @Test func debugConsoleEmitsLowByteAndReadsBackE9() throws {
        let (bus, _) = try machineBus()
        #expect(bus.write(port: 0x402, size: 1, value: 0x41, context: cpu0) == [.console(0x41)])
        #expect(bus.write(port: 0x402, size: 2, value: 0x0A42, context: cpu0) == [.console(0x42)])
        #expect(bus.read(port: 0x402, size: 1, context: cpu0) == 0xE9)
    }

    @Test(arguments: [
        (1, UInt32(0x00), Int64(1)), (1, 0x01, 3), (1, 0x7F, 0xFF), (2, 0x1234, 0x2469), (4, 0x10, 0x21),
        (4, 0x8000_0000, 0x1_0000_0001),
    ])
    func debugExitStatusIsShiftedValueOrOne(size: Int, value: UInt32, status: Int64) throws {
        let (bus, _) = try machineBus()
        #expect(bus.write(port: 0xF4, size: size, value: value, context: cpu0) == [.debugExit(status: status)])
    }

    @Test func debugExitUsesOnlyTheAccessSize() {
        let device = DebugExit()
        // A byte OUT of AL with junk in the upper bits of EAX: only AL counts.
        #expect(device.write(offset: 0, size: 1, value: 0xFFFF_FF02, context: cpu0) == [.debugExit(status: 5)])
    }

    @Test func apmControlRaisesSMIAndKeepsCommand() throws {
        let (bus, _) = try machineBus()
        #expect(bus.write(port: 0xB2, size: 1, value: 0x04, context: cpu0) == [.broadcastSMI(command: 0x04)])
        #expect(bus.read(port: 0xB2, size: 1, context: cpu0) == 0x04)
        #expect(bus.write(port: 0xB3, size: 1, value: 0x5A, context: cpu0).isEmpty)
        #expect(bus.read(port: 0xB3, size: 1, context: cpu0) == 0x5A)
        #expect(bus.read(port: 0xB2, size: 1, context: cpu0) == 0x04)
        // A word write is split into APM_CNT and APM_STS and raises one SMI.
        #expect(bus.write(port: 0xB2, size: 2, value: 0x66_09, context: cpu0) == [.broadcastSMI(command: 0x09)])
        #expect(bus.read(port: 0xB2, size: 2, context: cpu0) == 0x6609)
    }

    @Test func reportChannelDecodesCodeAndArgument() throws {
        let (bus, report) = try machineBus()
        let value = UInt32(REPORT_FWCFG_OK) << 24 | 1024
        #expect(
            bus.write(port: 0x600, size: 4, value: value, context: cpu0) == [
                .report(code: UInt8(REPORT_FWCFG_OK), arg: 1024)
            ])
        #expect(bus.read(port: 0x600, size: 4, context: cpu0) == UInt32(MINIVMM_CMD_NONE))
        report.command = UInt32(MINIVMM_CMD_FINISH)
        #expect(bus.read(port: 0x600, size: 4, context: cpu0) == 1)
        let effects = bus.write(port: 0x600, size: 1, value: 7, context: cpu0)
        if case .ignored? = effects.first {} else { Issue.record("byte write to 0x600 was not ignored: \(effects)") }
    }
}
