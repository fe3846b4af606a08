// SPDX-License-Identifier: MIT
import FuzzSupport
import MiniVMM

/// The ACPI CPU hotplug block: guest reads and writes (any offset, size, value, in or out of SMM) mixed with the VMM's
/// plug and unplug requests. Invariants: reads fit their size; a selector write is stored as written; GET_NEXT lands
/// on a CPU with an event when there is one and leaves the selector alone otherwise; an eject names a CPU other than
/// 0 that is then absent; CPU 0 never leaves; the SMBASE register changes only by a 32-bit write in SMM.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHotplug(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let possible = 1 + Int(input.u8() % 16)
    let presentMask = input.u16() | 1
    let present = Set((0..<possible).filter { presentMask & (1 << UInt16($0)) != 0 })
    let hp = CPUHotplugController(possibleCPUs: possible, present: present)

    var steps = 0
    while !input.isEmpty && steps < 512 {
        steps += 1
        let op = input.u8()
        let inSMM = op & 0x80 != 0
        switch op % 6 {
        case 0:
            let offset = Int(input.u8() % 16)
            let size = Int(input.u8() % 6)
            let (value, _) = hp.read(offset: offset, size: size, inSMM: inSMM)
            if (1...4).contains(size) { fuzzCheck(value <= fuzzMask(size: size), "read wider than \(size)") }
        case 1, 2:
            let offset = op % 6 == 1 ? [0, 4, 5, 8][Int(input.u8() % 4)] : Int(input.u8() % 16)
            let size = op % 6 == 1 ? [4, 1, 1, 4][[0, 4, 5, 8].firstIndex(of: offset)!] : Int(input.u8() % 6)
            let value = input.bool() ? UInt32(input.u8()) : input.u32()
            let selectorBefore = hp.selector
            let smbases = (0..<possible).map { hp.smbaseRegister(cpu: $0) }
            let effect = hp.write(offset: offset, size: size, value: value, inSMM: inSMM)
            let aligned = (1...4).contains(size) && offset + size <= 12 && offset & (size - 1) == 0
            if aligned && offset == 0 {
                fuzzCheck(hp.selector == value, "selector \(hp.selector) after writing \(value)")
            }
            if aligned && offset == 5 && value == 0 && Int(selectorBefore) < possible {
                let sel = Int(hp.selector)
                if hp.pendingEventCount > 0 {
                    let s = hp.status(cpu: sel)
                    fuzzCheck(s.map { $0.isInserting || $0.isRemoving || $0.fwRemove } ?? false, "GET_NEXT on no event")
                } else {
                    fuzzCheck(hp.selector == selectorBefore, "GET_NEXT moved without events")
                }
            }
            if case .eject(let cpu) = effect {
                fuzzCheck(cpu != 0 && !hp.isPresent(cpu), "eject of \(cpu)")
            }
            for cpu in 0..<possible where hp.smbaseRegister(cpu: cpu) != smbases[cpu] {
                fuzzCheck(inSMM && size == 4 && offset == 8, "SMBASE of \(cpu) changed outside a 32-bit SMM write")
            }
        case 3:
            _ = hp.plug(cpu: Int(input.u8()) - 8)
        case 4:
            _ = hp.requestUnplug(cpu: Int(input.u8()) - 8)
        default:
            _ = hp.status(cpu: Int(input.u8()))
        }
        if present.contains(0) { fuzzCheck(hp.isPresent(0), "CPU 0 left") }
    }
    return 0
}

runFuzzer(fuzzHotplug)
