// SPDX-License-Identifier: MIT
import GuestFirmware
import Testing

@testable import MiniVMM

/// Flat guest RAM from 0 for DMA tests.
final class FakeGuestMemory: GuestMemoryAccess {
    var bytes: [UInt8]

    init(size: Int) { bytes = [UInt8](repeating: 0xCC, count: size) }

    func readBytes(at gpa: UInt64, count: Int) -> [UInt8]? {
        guard gpa <= UInt64(bytes.count), UInt64(count) <= UInt64(bytes.count) - gpa else { return nil }
        return Array(bytes[Int(gpa)..<(Int(gpa) + count)])
    }

    func writeBytes(_ data: [UInt8], at gpa: UInt64) -> Bool {
        guard gpa <= UInt64(bytes.count), UInt64(data.count) <= UInt64(bytes.count) - gpa else { return false }
        bytes.replaceSubrange(Int(gpa)..<(Int(gpa) + data.count), with: data)
        return true
    }
}

/// A fw_cfg on a bus with guest memory, driven through ports like firmware would.
struct FwCfgRig {
    let bus = PortIOBus()
    let memory = FakeGuestMemory(size: 0x10000)
    let fwCfg: FwCfg
    static let descriptor: UInt64 = 0x9000
    static let buffer: UInt64 = 0x9100

    init() throws {
        fwCfg = FwCfg(ramSize: 0x8000_0000, bootCPUs: 2, maxCPUs: 1024)
        fwCfg.memory = memory
        try bus.register(fwCfg, base: FwCfg.port, length: FwCfg.length)
    }

    func select(_ key: UInt16) {
        _ = bus.write(port: 0x510, size: 2, value: UInt32(key), context: cpu0)
    }

    func readBytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8(bus.read(port: 0x511, size: 1, context: cpu0)) }
    }

    /// Writes a descriptor and starts the transfer the way OVMF/SeaBIOS do (`outl(bswap32(addr), 0x518)`);
    /// returns the control word the device wrote back.
    @discardableResult
    func dma(control: UInt32, length: UInt32, address: UInt64 = buffer) -> UInt32 {
        let descriptor = bigEndianBytes(control) + bigEndianBytes(length) + bigEndianBytes(address)
        #expect(memory.writeBytes(descriptor, at: Self.descriptor))
        _ = bus.write(port: 0x514, size: 4, value: UInt32(Self.descriptor >> 32).byteSwapped, context: cpu0)
        _ = bus.write(
            port: 0x518, size: 4, value: UInt32(truncatingIfNeeded: Self.descriptor).byteSwapped, context: cpu0)
        return UInt32(bigEndian: memory.bytes, at: Int(Self.descriptor))
    }

    func memoryBytes(at gpa: UInt64, count: Int) -> [UInt8] { memory.readBytes(at: gpa, count: count) ?? [] }

    struct DirectoryEntry: Equatable {
        var size: UInt32
        var select: UInt16
        var name: String
    }

    func directory() -> [DirectoryEntry] {
        select(UInt16(FW_CFG_FILE_DIR))
        let count = Int(UInt32(bigEndian: readBytes(4), at: 0))
        return (0..<count).map { _ in
            let raw = readBytes(64)
            let name = String(decoding: raw[8..<64].prefix { $0 != 0 }, as: UTF8.self)
            #expect(raw[6] == 0 && raw[7] == 0)
            return DirectoryEntry(
                size: UInt32(bigEndian: raw, at: 0), select: UInt16(bigEndian: raw, at: 4), name: name)
        }
    }
}

let dmaRead = UInt32(FW_CFG_DMA_CTL_READ)
let dmaWrite = UInt32(FW_CFG_DMA_CTL_WRITE)
let dmaSkip = UInt32(FW_CFG_DMA_CTL_SKIP)
let dmaSelect = UInt32(FW_CFG_DMA_CTL_SELECT)
let dmaError = UInt32(FW_CFG_DMA_CTL_ERROR)

@Suite struct FwCfgTests {
    @Test func signatureIDAndFixedItemsThroughIOPorts() throws {
        let rig = try FwCfgRig()
        // After reset the signature is selected.
        #expect(rig.readBytes(4) == Array("QEMU".utf8))
        #expect(rig.readBytes(2) == [0, 0], "reads past the end return 0")
        rig.select(UInt16(FW_CFG_SIGNATURE))
        #expect(rig.readBytes(4) == Array("QEMU".utf8), "selecting rewinds")
        rig.select(UInt16(FW_CFG_ID))
        #expect(rig.readBytes(4) == [3, 0, 0, 0])
        rig.select(UInt16(FW_CFG_RAM_SIZE))
        #expect(UInt64(littleEndian: rig.readBytes(8), at: 0) == 0x8000_0000)
        rig.select(UInt16(FW_CFG_NB_CPUS))
        #expect(rig.readBytes(2) == [2, 0])
        rig.select(UInt16(FW_CFG_MAX_CPUS))
        #expect(rig.readBytes(2) == [0x00, 0x04])
        rig.select(0x0002)
        #expect(rig.readBytes(2) == [0, 0], "an unassigned key reads 0")
        rig.select(0x3FFF)
        #expect(rig.fwCfg.currentKey == nil)
        #expect(rig.readBytes(1) == [0])
    }

    @Test func dataPortWritesAreIgnored() throws {
        let rig = try FwCfgRig()
        try rig.fwCfg.addFile(name: "opt/org.minivmm/strategy", data: [2, 0, 0, 0], writable: true)
        let selector = try #require(rig.fwCfg.selector(ofFile: "opt/org.minivmm/strategy"))
        rig.select(selector)
        #expect(rig.bus.write(port: 0x511, size: 1, value: 0x77, context: cpu0).isEmpty)
        #expect(rig.fwCfg.fileData(named: "opt/org.minivmm/strategy") == [2, 0, 0, 0])
        #expect(rig.readBytes(4) == [2, 0, 0, 0], "the write did not advance or modify")
    }

    @Test func fileDirectoryIsBigEndianAndSortedLikeQEMU() throws {
        let rig = try FwCfgRig()
        try rig.fwCfg.addFile(name: "opt/org.minivmm/strategy", data: [2, 0, 0, 0])
        try rig.fwCfg.addFile(name: "etc/smi/supported-features", data: [UInt8](repeating: 0, count: 8))
        try rig.fwCfg.addFile(name: "opt/org.minivmm/tseg-size", data: [UInt8](repeating: 1, count: 0x104))
        #expect(
            rig.directory() == [
                .init(size: 8, select: 0x20, name: "etc/smi/supported-features"),
                .init(size: 4, select: 0x21, name: "opt/org.minivmm/strategy"),
                .init(size: 0x104, select: 0x22, name: "opt/org.minivmm/tseg-size"),
            ])
        rig.select(0x21)
        #expect(rig.readBytes(4) == [2, 0, 0, 0], "the selector moved with the sorted insert")
        #expect(throws: FwCfg.FileError.duplicate("opt/org.minivmm/strategy")) {
            try rig.fwCfg.addFile(name: "opt/org.minivmm/strategy", data: [])
        }
        #expect(throws: FwCfg.FileError.self) {
            try rig.fwCfg.addFile(name: String(repeating: "x", count: 56), data: [])
        }
    }

    @Test func dmaSignatureReadsQEMUCFG() throws {
        let rig = try FwCfgRig()
        let bytes = (0x514...0x51B).map { UInt8(rig.bus.read(port: UInt16($0), size: 1, context: cpu0)) }
        #expect(bytes == Array("QEMU CFG".utf8))
        // A 32-bit IN of the high half, compared big-endian as the contract states.
        #expect(rig.bus.read(port: 0x514, size: 4, context: cpu0).byteSwapped == UInt32(FW_CFG_DMA_SIGNATURE_HI))
    }

    @Test func dmaSelectReadAndSkip() throws {
        let rig = try FwCfgRig()
        try rig.fwCfg.addFile(name: "opt/org.minivmm/data", data: Array(0..<16))
        let selector = UInt32(try #require(rig.fwCfg.selector(ofFile: "opt/org.minivmm/data")))
        #expect(rig.dma(control: selector << 16 | dmaSelect | dmaRead, length: 4) == 0)
        #expect(rig.memoryBytes(at: FwCfgRig.buffer, count: 4) == [0, 1, 2, 3])
        #expect(rig.dma(control: dmaSkip, length: 4) == 0)
        #expect(rig.dma(control: dmaRead, length: 4, address: FwCfgRig.buffer + 4) == 0)
        #expect(rig.memoryBytes(at: FwCfgRig.buffer + 4, count: 4) == [8, 9, 10, 11])
        // Reading past the end zero-fills the rest of the buffer.
        #expect(rig.dma(control: dmaRead, length: 8, address: FwCfgRig.buffer + 8) == 0)
        #expect(rig.memoryBytes(at: FwCfgRig.buffer + 8, count: 8) == [12, 13, 14, 15, 0, 0, 0, 0])
        // The byte interface shares the offset with DMA.
        #expect(rig.dma(control: selector << 16 | dmaSelect | dmaSkip, length: 15) == 0)
        #expect(rig.readBytes(2) == [15, 0])
        // A descriptor outside RAM cannot even be read: nothing written, the request is reported.
        let effects = rig.bus.write(port: 0x518, size: 4, value: UInt32(0x00F0_0000).byteSwapped, context: cpu0)
        if case .ignored? = effects.first {} else { Issue.record("expected .ignored, got \(effects)") }
        #expect(rig.fwCfg.dmaTransfers == 6)
    }

    @Test func dmaWriteToReadOnlyItemSetsError() throws {
        let rig = try FwCfgRig()
        _ = rig.memory.writeBytes([9, 9, 9, 9], at: FwCfgRig.buffer)
        let signature = UInt32(FW_CFG_SIGNATURE)
        #expect(rig.dma(control: signature << 16 | dmaSelect | dmaWrite, length: 4) == dmaError)
        rig.select(UInt16(FW_CFG_SIGNATURE))
        #expect(rig.readBytes(4) == Array("QEMU".utf8))
        // Writing to no item at all is an error too; a bare control word does nothing and succeeds.
        #expect(rig.dma(control: 0x3FFF << 16 | dmaSelect | dmaWrite, length: 1) == dmaError)
        #expect(rig.dma(control: 0, length: 100) == 0)
    }

    @Test func dmaWriteToWritableFileRunsCallbackAndRejectsOverrun() throws {
        let rig = try FwCfgRig()
        var written: [(Int, Int)] = []
        try rig.fwCfg.addFile(
            name: "etc/test", data: [0, 0, 0, 0], writable: true,
            onWrite: { _, offset, length in written.append((offset, length)) })
        let selector = UInt32(try #require(rig.fwCfg.selector(ofFile: "etc/test")))
        _ = rig.memory.writeBytes([1, 2, 3, 4, 5, 6], at: FwCfgRig.buffer)
        #expect(rig.dma(control: selector << 16 | dmaSelect | dmaWrite, length: 4) == 0)
        #expect(rig.fwCfg.fileData(named: "etc/test") == [1, 2, 3, 4])
        #expect(written.count == 1 && written[0] == (0, 4))
        // QEMU: a write longer than what is left of the item fails as a whole.
        #expect(
            rig.dma(control: selector << 16 | dmaSelect | dmaWrite, length: 6, address: FwCfgRig.buffer + 2) == dmaError
        )
        #expect(rig.fwCfg.fileData(named: "etc/test") == [1, 2, 3, 4])
        #expect(written.count == 1)
    }
}

@Suite struct SMIFeatureNegotiationTests {
    struct Negotiation {
        let rig: FwCfgRig
        let smi: SMIFeatures

        init(host: UInt64 = SMIFeatures.allFeatures) throws {
            rig = try FwCfgRig()
            smi = try SMIFeatures(hostFeatures: host)
            try smi.install(on: rig.fwCfg)
        }

        /// OVMF SmiFeatures.c: read supported, DMA-write requested, select features-ok and read it.
        func negotiate(_ requested: UInt64) throws -> UInt8 {
            let requestedSelector = UInt32(try #require(rig.fwCfg.selector(ofFile: SMIFeatures.requestedFile)))
            _ = rig.memory.writeBytes(littleEndianBytes(requested), at: FwCfgRig.buffer)
            #expect(rig.dma(control: requestedSelector << 16 | dmaSelect | dmaWrite, length: 8) == 0)
            rig.select(try #require(rig.fwCfg.selector(ofFile: SMIFeatures.featuresOKFile)))
            return rig.readBytes(1)[0]
        }
    }

    @Test func supportedFeaturesAreReadOnlyLittleEndian() throws {
        let negotiation = try Negotiation()
        let selector = try #require(negotiation.rig.fwCfg.selector(ofFile: SMIFeatures.supportedFile))
        negotiation.rig.select(selector)
        #expect(negotiation.rig.readBytes(8) == [7, 0, 0, 0, 0, 0, 0, 0])
        #expect(negotiation.rig.dma(control: UInt32(selector) << 16 | dmaSelect | dmaWrite, length: 8) == dmaError)
    }

    @Test(arguments: [
        (UInt64(0b001), true), (0b011, true), (0b111, true), (0, true),
        (0b010, false),  // hotplug without broadcast
        (0b100, false),  // unplug without broadcast
        (0b101, false),  // unplug without hotplug
        (0b1000, false),  // not offered
    ])
    func featuresOKFollowsQEMURules(requested: UInt64, accepted: Bool) throws {
        let negotiation = try Negotiation()
        #expect(try negotiation.negotiate(requested) == (accepted ? 1 : 0))
        #expect(negotiation.smi.featuresOK == accepted)
        #expect(negotiation.smi.negotiatedFeatures == (accepted ? requested : 0))
    }

    @Test func requestOutsideHostFeaturesIsRejected() throws {
        let negotiation = try Negotiation(host: SMIFeatures.broadcast)
        #expect(try negotiation.negotiate(0b011) == 0)
        #expect(try negotiation.negotiate(0b001) == 1)
        #expect(negotiation.smi.rejectedNegotiations == 1)
    }

    @Test func negotiationLocksUntilReset() throws {
        let negotiation = try Negotiation()
        #expect(try negotiation.negotiate(SMIFeatures.broadcast) == 1)
        #expect(try negotiation.negotiate(SMIFeatures.allFeatures) == 1)
        #expect(negotiation.smi.negotiatedFeatures == SMIFeatures.broadcast, "locked")
        negotiation.smi.reset(fwCfg: negotiation.rig.fwCfg)
        #expect(negotiation.smi.featuresOK == false && negotiation.smi.negotiatedFeatures == 0)
        #expect(negotiation.rig.fwCfg.fileData(named: SMIFeatures.requestedFile) == [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(try negotiation.negotiate(SMIFeatures.allFeatures) == 1)
        #expect(negotiation.smi.negotiatedFeatures == SMIFeatures.allFeatures)
    }

    @Test func hotplugGateMatchesQEMU() throws {
        let broadcastOnly = try Negotiation()
        #expect(broadcastOnly.smi.hotplugAllowed, "nothing negotiated: no SMI gating")
        _ = try broadcastOnly.negotiate(SMIFeatures.broadcast)
        #expect(!broadcastOnly.smi.hotplugAllowed)
        #expect(broadcastOnly.smi.hotplugRefusal == "cpu hotplug with SMI wasn't enabled by firmware")
        #expect(broadcastOnly.smi.hotUnplugRefusal == "cpu hot-unplug with SMI wasn't enabled by firmware")

        let withHotplug = try Negotiation()
        _ = try withHotplug.negotiate(SMIFeatures.broadcast | SMIFeatures.cpuHotplug)
        #expect(withHotplug.smi.hotplugAllowed)
        #expect(!withHotplug.smi.hotUnplugAllowed)
    }

    @Test func hostConfigurationChecks() throws {
        #expect(throws: SMIFeatures.ConfigError.unplugWithoutPlug) {
            try SMIFeatures(hostFeatures: SMIFeatures.broadcast | SMIFeatures.cpuHotUnplug)
        }
        let rig = try FwCfgRig()
        try SMIFeatures(hostFeatures: 0).install(on: rig.fwCfg)
        #expect(rig.directory().isEmpty, "QEMU adds no etc/smi files without host features")
    }
}
