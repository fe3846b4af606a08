// SPDX-License-Identifier: MIT
import CKVM
import FuzzSupport
import MiniVMM

/// The SMM transitions: `enterSMM` from an arbitrary register state and SMBASE, then RSM (`leaveSMM`) from an
/// arbitrary 512-byte map (or the entry's own map with a few bytes changed) in the format the input picks.
/// Invariants: the entry map is 512 bytes, decodes to the SMBASE given, and the handler starts at SMBASE:0x8000 with
/// CR4 0; RSM either fails or returns a state whose SMBASE is the map's field, with a valid interrupt shadow, CR0.ET
/// set and no CR0/DR6/DR7 bits above 31.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSMM(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let format: SaveStateFormat = input.bool() ? .amd64 : .legacy32
    let smbase = input.u32()
    var state = ArchState()
    let regs = input.bytes(MemoryLayout<kvm_regs>.size)
    let sregs = input.bytes(MemoryLayout<kvm_sregs>.size)
    // SAFETY: kvm_regs and kvm_sregs are plain C structs of integers; any byte pattern is a valid value, and each
    // buffer is exactly the struct's size.
    withUnsafeMutableBytes(of: &state.regs) { $0.copyBytes(from: regs) }
    // SAFETY: as above.
    withUnsafeMutableBytes(of: &state.sregs) { $0.copyBytes(from: sregs) }
    state.dr6 = input.u64()
    state.dr7 = input.u64()
    state.interruptShadow = input.u8()
    state.nmiMasked = input.bool()

    let entry = enterSMM(from: state, smbase: smbase, format: format)
    fuzzCheck(entry.map.count == SaveStateMap.size, "map of \(entry.map.count) bytes")
    fuzzCheck(SaveStateMap.decode(entry.map, format: format).smbase == smbase, "entry map SMBASE")
    fuzzCheck(entry.state.regs.rip == 0x8000 && entry.state.sregs.cs.base == UInt64(smbase), "handler entry")
    fuzzCheck(entry.state.sregs.cr4 == 0 && entry.state.nmiMasked, "entry CR4 / NMI mask")
    fuzzCheck(entry.insideNMI == state.nmiMasked, "insideNMI")

    var map = entry.map
    if input.bool() {
        map = input.bytes(SaveStateMap.size)
    } else {
        for _ in 0..<(Int(input.u8()) % 16) {
            map[Int(input.u16()) % SaveStateMap.size] = input.u8()
        }
    }
    let rsmFormat: SaveStateFormat = input.bool() ? format : (format == .amd64 ? .legacy32 : .amd64)
    let insideNMI = input.bool()
    let field = SaveStateMap.decode(map, format: rsmFormat).smbase
    switch leaveSMM(map: map, format: rsmFormat, current: entry.state, insideNMI: insideNMI) {
    case .success(let exit):
        fuzzCheck(exit.smbase == field, "RSM SMBASE \(exit.smbase) != map field \(field)")
        fuzzCheck(exit.state.interruptShadow & ~3 == 0, "interrupt shadow \(exit.state.interruptShadow)")
        fuzzCheck(exit.state.sregs.cr0 & 0x10 != 0 && exit.state.sregs.cr0 >> 32 == 0, "CR0 after RSM")
        fuzzCheck(exit.state.dr6 >> 32 == 0 && exit.state.dr7 >> 32 == 0, "DR6/DR7 after RSM")
        if !insideNMI { fuzzCheck(!exit.state.nmiMasked, "NMIs still masked after RSM") }
    case .failure:
        break
    }
    return 0
}

runFuzzer(fuzzSMM)
