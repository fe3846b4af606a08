// SPDX-License-Identifier: MIT
import Testing

@testable import MiniVMM

/// A device that records accesses and returns a fixed pattern.
final class RecordingDevice: PortIODevice {
    let name: String
    var reads: [(offset: UInt16, size: Int)] = []
    var writes: [(offset: UInt16, size: Int, value: UInt32)] = []

    init(name: String) { self.name = name }

    func read(offset: UInt16, size: Int, context: AccessContext) -> UInt32 {
        reads.append((offset, size))
        return 0xA1B2_C3D4
    }

    func write(offset: UInt16, size: Int, value: UInt32, context: AccessContext) -> [DeviceEffect] {
        writes.append((offset, size, value))
        return [.console(UInt8(truncatingIfNeeded: value))]
    }
}

let cpu0 = AccessContext(cpu: 0, inSMM: false)

@Suite struct PortIOBusTests {
    @Test func dispatchesByOffsetAndMasksReads() throws {
        let bus = PortIOBus()
        let device = RecordingDevice(name: "dev")
        try bus.register(device, base: 0x100, length: 8)
        #expect(bus.read(port: 0x103, size: 1, context: cpu0) == 0xD4)
        #expect(bus.read(port: 0x104, size: 2, context: cpu0) == 0xC3D4)
        #expect(bus.read(port: 0x100, size: 4, context: cpu0) == 0xA1B2_C3D4)
        #expect(device.reads.map(\.offset) == [3, 4, 0])
        #expect(bus.write(port: 0x107, size: 1, value: 0x1234_5678, context: cpu0) == [.console(0x78)])
        #expect(device.writes.first?.offset == 7)
        #expect(device.writes.first?.value == 0x78)
        #expect(bus.unknownAccessCount == 0)
    }

    @Test func unknownPortsReadAllOnesAndAreCounted() {
        let bus = PortIOBus()
        #expect(bus.read(port: 0x80, size: 1, context: cpu0) == 0xFF)
        #expect(bus.read(port: 0x80, size: 2, context: cpu0) == 0xFFFF)
        #expect(bus.read(port: 0x80, size: 4, context: cpu0) == 0xFFFF_FFFF)
        let effects = bus.write(port: 0x80, size: 1, value: 0, context: cpu0)
        guard case .ignored(let message)? = effects.first else {
            Issue.record("expected .ignored, got \(effects)")
            return
        }
        #expect(message.contains("0x80"))
        #expect(bus.unknownAccesses[.init(port: 0x80, direction: .read)] == 3)
        #expect(bus.unknownAccesses[.init(port: 0x80, direction: .write)] == 1)
        #expect(bus.unknownAccessCount == 4)
    }

    @Test func badSizesAreCountedAndNotDispatched() throws {
        let bus = PortIOBus()
        let device = RecordingDevice(name: "dev")
        try bus.register(device, base: 0x10, length: 4)
        #expect(bus.read(port: 0x10, size: 3, context: cpu0) == 0xFFFF_FFFF)
        #expect(bus.write(port: 0x10, size: 8, value: 1, context: cpu0).count == 1)
        #expect(device.reads.isEmpty && device.writes.isEmpty)
        #expect(bus.badAccessCount == 2)
        #expect(bus.unknownAccessCount == 0)
    }

    @Test func rejectsZeroLengthOverflowAndOverlap() throws {
        let bus = PortIOBus()
        let first = RecordingDevice(name: "first")
        try bus.register(first, base: 0x510, length: 12)
        #expect(throws: BusError.zeroLength(device: "zero", base: 0x20)) {
            try bus.register(RecordingDevice(name: "zero"), base: 0x20, length: 0)
        }
        #expect(throws: BusError.overflow(device: "high", base: 0xFFFF, length: 2)) {
            try bus.register(RecordingDevice(name: "high"), base: 0xFFFF, length: 2)
        }
        do {
            try bus.register(RecordingDevice(name: "second"), base: 0x51B, length: 1)
            Issue.record("overlap was accepted")
        } catch let error as BusError {
            #expect(error.description.contains("second"))
            #expect(error.description.contains("first"))
            #expect(error.description.contains("0x510-0x51B"))
        }
        // Adjacent ranges are fine, and the last port can be used.
        try bus.register(RecordingDevice(name: "after"), base: 0x51C, length: 1)
        try bus.register(RecordingDevice(name: "top"), base: 0xFFFF, length: 1)
        #expect(bus.device(at: 0x51C)?.device.name == "after")
        #expect(bus.device(at: 0xFFFF)?.device.name == "top")
        #expect(bus.device(at: 0x50F) == nil)
    }
}
