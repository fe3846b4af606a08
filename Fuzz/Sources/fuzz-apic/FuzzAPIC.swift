// SPDX-License-Identifier: MIT
import FuzzSupport
import MiniVMM

/// The local APIC in both views (xAPIC MMIO, x2APIC MSRs) and ICR decoding: register reads and writes at any offset,
/// MSR and size, fixed interrupts accepted, injected and EOI'd, resets. Invariants: a decoded ICR carries the written
/// vector and a delivery mode other than 3, and decodes to nil exactly for mode 3; an x2APIC ICR write with reserved
/// bits is #GP; an IPI's targets are present CPUs; what is injectable has a priority class above PPR's.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAPIC(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let id = input.bool() ? UInt32(input.u8() % 16) : input.u32()
    let apic = LocalAPIC(apicID: id, isBSP: input.bool())
    let present = (0..<Int(input.u8() % 16)).map { $0 }
    let sender = Int(input.u8() % 16)

    func check(_ ipi: InterruptCommand?, low: UInt32) {
        let mode = (low >> 8) & 7
        fuzzCheck((ipi == nil) == (mode == 3), "ICR mode \(mode) decoded to \(String(describing: ipi))")
        guard let ipi else { return }
        fuzzCheck(ipi.vector == UInt8(truncatingIfNeeded: low), "vector")
        let targets = ipi.destination.targets(sender: sender, present: present)
        fuzzCheck(targets.allSatisfy { present.contains($0) || $0 == sender }, "target outside present CPUs")
        fuzzCheck(targets == targets.sorted(), "targets unsorted")
    }

    var steps = 0
    while !input.isEmpty && steps < 512 {
        steps += 1
        switch input.u8() % 9 {
        case 0:
            let offset = input.bool() ? UInt32(input.u8()) << 4 : UInt32(input.u16())
            _ = apic.readMMIO(offset: offset, size: input.accessSize())
        case 1:
            let offset = input.bool() ? UInt32(input.u8()) << 4 : UInt32(input.u16())
            let value = input.u32()
            let ipi = apic.writeMMIO(offset: offset, value: value, size: input.accessSize())
            if ipi != nil { check(ipi, low: value) }
        case 2:
            _ = apic.readMSR(0x7F0 + UInt32(input.u16() % 0x120), x2APICEnabled: input.bool())
        case 3:
            let msr = 0x7F0 + UInt32(input.u16() % 0x120)
            let value = input.bool() ? UInt64(input.u32()) : input.u64()
            let enabled = input.bool()
            let (gp, ipi) = apic.writeMSR(msr, value: value, x2APICEnabled: enabled)
            if msr == 0x830 && enabled {
                fuzzCheck(gp == (value & LocalAPIC.x2APICICRReservedBits != 0), "x2APIC ICR #GP")
                if !gp { check(ipi, low: UInt32(truncatingIfNeeded: value) & ~(1 << 12)) }
            }
        case 4:
            apic.acceptFixed(vector: input.u8())
        case 5:
            if let v = apic.nextInjectable() {
                fuzzCheck(UInt32(v) & 0xF0 > apic.processorPriority & 0xF0, "injectable at or below PPR")
                apic.didInject(vector: v)
                fuzzCheck(apic.isInService(v), "injected vector not in service")
            }
        case 6:
            apic.endOfInterrupt()
        case 7:
            let low = input.u32()
            check(InterruptCommand.decodeXAPIC(low: low, high: input.u32()), low: low)
            let icr = input.u64()
            check(InterruptCommand.decodeX2APIC(icr), low: UInt32(truncatingIfNeeded: icr))
        default:
            if input.bool() { apic.reset() } else { apic.initSignal() }
        }
    }
    return 0
}

runFuzzer(fuzzAPIC)
