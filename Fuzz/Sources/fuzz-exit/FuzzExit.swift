// SPDX-License-Identifier: MIT
import CKVM
import FuzzSupport
import KVMBridge

/// `VCPUExit.decode` on an arbitrary `kvm_run` mapping: the input fills a two-page buffer (the exit reason is taken
/// from the first bytes modulo a small range so every decoded case is reached). Invariants: every payload buffer lies
/// inside the mapping (its bytes are then read, so ASan sees any stray pointer); MMIO data is at most 8 bytes; the
/// internal-error data has at most 16 words; `summary` never traps.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzExit(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let mappingSize = 2 * 4096
    let reason = input.u8() % 40
    let page = UnsafeMutableRawPointer.allocate(byteCount: mappingSize, alignment: 4096)
    defer { page.deallocate() }
    // SAFETY: `page` holds `mappingSize` bytes; they are initialized here before any use.
    page.initializeMemory(as: UInt8.self, repeating: 0, count: mappingSize)
    let bytes = input.rest()
    // SAFETY: at most `mappingSize` bytes are copied into the allocation.
    page.copyMemory(from: bytes, byteCount: min(bytes.count, mappingSize))
    // SAFETY: the allocation is page-aligned and larger than `struct kvm_run`, which is plain C data.
    let run = page.bindMemory(to: kvm_run.self, capacity: 1)
    run.pointee.exit_reason = UInt32(reason)
    let exit = VCPUExit.decode(run, mappingSize: mappingSize)
    let start = UInt(bitPattern: page)
    func inside(_ p: UnsafeRawPointer?, _ count: Int) -> Bool {
        guard let p else { return count == 0 }
        let a = UInt(bitPattern: p)
        return a >= start && a - start <= UInt(mappingSize) && UInt(count) <= UInt(mappingSize) - (a - start)
    }
    var sum: UInt8 = 0
    switch exit {
    case .ioIn(_, _, _, let d):
        fuzzCheck(inside(UnsafeRawPointer(d.baseAddress), d.count), "io-in data outside kvm_run")
        for b in d { sum &+= b }
    case .ioOut(_, _, _, let d):
        fuzzCheck(inside(d.baseAddress, d.count), "io-out data outside kvm_run")
        for b in d { sum &+= b }
    case .mmioRead(_, let d):
        fuzzCheck(d.count <= 8 && inside(UnsafeRawPointer(d.baseAddress), d.count), "mmio-read data")
        for b in d { sum &+= b }
    case .mmioWrite(_, let d):
        fuzzCheck(d.count <= 8 && inside(d.baseAddress, d.count), "mmio-write data")
        for b in d { sum &+= b }
    case .internalError(_, let words):
        fuzzCheck(words.count <= 16, "internal-error with \(words.count) words")
    default:
        break
    }
    _ = exit.summary
    return CInt(sum & 0)
}

runFuzzer(fuzzExit)
