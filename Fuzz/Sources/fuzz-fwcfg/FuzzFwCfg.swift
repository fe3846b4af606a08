// SPDX-License-Identifier: MIT
import FuzzSupport
import MiniVMM

/// fw_cfg as the machine sets it up (SMI feature files, a strategy file), on a bus of its own, with DMA against 64 KiB
/// of fake guest RAM. Each operation is a port access, a DMA request with a descriptor the input builds, a memory
/// poke or a reset. Invariants: reads fit their size; a DMA status word written back is 0 or has only the error bit;
/// the negotiated SMI features are always an acceptable subset of the host's.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFwCfg(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let memory = FakeGuestMemory(size: 0x1_0000)
    let fwCfg = FwCfg(ramSize: 128 << 20, bootCPUs: 2, maxCPUs: 8, memory: memory)
    guard let smi = try? SMIFeatures(), (try? smi.install(on: fwCfg)) != nil,
        (try? fwCfg.addFile(name: "opt/org.minivmm/strategy", data: [1, 0, 0, 0])) != nil,
        (try? fwCfg.addFile(name: "opt/fuzz/writable", data: [UInt8](repeating: 0xAA, count: 16), writable: true))
            != nil
    else { fatalError("fw_cfg set-up failed") }
    let bus = PortIOBus()
    guard (try? bus.register(fwCfg, base: FwCfg.port, length: FwCfg.length)) != nil else { fatalError("bus") }
    let context = AccessContext(cpu: 0, inSMM: false)

    var steps = 0
    while !input.isEmpty && steps < 256 {
        steps += 1
        switch input.u8() % 7 {
        case 0:
            _ = bus.write(port: FwCfg.port, size: 2, value: UInt32(input.u16()), context: context)
        case 1:
            for _ in 0..<(Int(input.u8()) % 16) {
                let v = bus.read(port: FwCfg.port + UInt16(input.u8() & 1), size: 1, context: context)
                fuzzCheck(v <= 0xFF, "fw_cfg data read returned \(v)")
            }
        case 2:
            let port = FwCfg.port + UInt16(input.u8() % 14)
            let size = input.accessSize()
            if input.bool() {
                let v = bus.read(port: port, size: size, context: context)
                if [1, 2, 4].contains(size) { fuzzCheck(v <= fuzzMask(size: size), "read wider than \(size)") }
            } else {
                _ = bus.write(port: port, size: size, value: input.u32(), context: context)
            }
        case 3:
            // A DMA request: descriptor {be32 control, be32 length, be64 address} at an address the input picks.
            let inside = input.bool()
            let at = inside ? UInt64(input.u16() & 0xFFF0) : input.u64()
            let control = input.u32()
            let length = input.bool() ? UInt32(input.u16()) : input.u32()
            let target = input.bool() ? UInt64(input.u16()) : input.u64()
            var descriptor: [UInt8] = []
            for shift in stride(from: 24, through: 0, by: -8) {
                descriptor.append(UInt8(truncatingIfNeeded: control >> shift))
            }
            for shift in stride(from: 24, through: 0, by: -8) {
                descriptor.append(UInt8(truncatingIfNeeded: length >> shift))
            }
            for shift in stride(from: 56, through: 0, by: -8) {
                descriptor.append(UInt8(truncatingIfNeeded: target >> UInt64(shift)))
            }
            let placed = memory.writeBytes(descriptor, at: at)
            _ = bus.write(
                port: FwCfg.port + 4, size: 4, value: UInt32(truncatingIfNeeded: at >> 32).byteSwapped, context: context
            )
            _ = bus.write(
                port: FwCfg.port + 8, size: 4, value: UInt32(truncatingIfNeeded: at).byteSwapped, context: context)
            if placed, let status = memory.readBytes(at: at, count: 4) {
                let word = status.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                fuzzCheck(word == 0 || word == 1, "DMA status word \(word)")
            }
        case 4:
            let at = UInt64(input.u16())
            _ = memory.writeBytes(input.bytes(Int(input.u8() % 32)), at: at)
        case 5:
            fwCfg.reset()
            smi.reset(fwCfg: fwCfg)
        default:
            if let s = fwCfg.selector(ofFile: SMIFeatures.featuresOKFile) {
                _ = bus.write(port: FwCfg.port, size: 2, value: UInt32(s), context: context)
            }
        }
        fuzzCheck(
            SMIFeatures.isAcceptable(smi.negotiatedFeatures, host: smi.hostFeatures),
            "negotiated \(smi.negotiatedFeatures) not acceptable")
    }
    return 0
}

runFuzzer(fuzzFwCfg)
