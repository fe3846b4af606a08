// SPDX-License-Identifier: MIT
import FuzzSupport
import GuestFirmware
import MiniVMM

/// The machine's port bus with every device registered as `MachineDevices` does, fw_cfg DMA against fake guest RAM.
/// Each operation is one IN or OUT (port biased to the decoded ranges, any size, value, CPU, in or out of SMM).
/// Invariants: a read of a valid size fits it; an eject names a CPU other than 0; a debug-exit status is odd.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPortBus(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    var config = MachineConfig()
    config.maxCPUs = 1 + Int(input.u8() % 8)
    config.bootCPUs = 1 + Int(input.u8()) % config.maxCPUs
    guard let devices = try? MachineDevices(config: config, present: Set(0..<config.bootCPUs)) else {
        fatalError("MachineDevices refused a valid config")
    }
    let memory = FakeGuestMemory(size: 0x1_0000)
    devices.fwCfg.memory = memory
    let bases: [UInt16] = [
        UInt16(MINIVMM_PORT_DEBUGCON), UInt16(MINIVMM_PORT_DEBUG_EXIT), UInt16(MINIVMM_PORT_APM_CNT),
        UInt16(MINIVMM_PORT_FWCFG_SEL), UInt16(MINIVMM_PORT_PCI_ADDR), UInt16(MINIVMM_PORT_CPUHP_BASE),
        UInt16(MINIVMM_PORT_REPORT), UInt16(MINIVMM_PORT_SMM_ENTRY),
    ]

    var steps = 0
    while !input.isEmpty && steps < 512 {
        steps += 1
        let op = input.u8()
        let port = op & 0x40 != 0 ? input.u16() : bases[Int(op % 8)] &+ UInt16(input.u8() % 13)
        let size = input.accessSize()
        let context = AccessContext(cpu: Int(input.u8() % 8), inSMM: op & 0x20 != 0)
        if op & 0x80 != 0 {
            let v = devices.bus.read(port: port, size: size, context: context)
            if [1, 2, 4].contains(size) { fuzzCheck(v <= fuzzMask(size: size), "read of \(size) at \(port): \(v)") }
        } else if op % 16 == 15 {
            _ = memory.writeBytes(input.bytes(Int(input.u8() % 32)), at: UInt64(input.u16()))
        } else {
            for effect in devices.bus.write(port: port, size: size, value: input.u32(), context: context) {
                switch effect {
                case .ejectCPU(let cpu): fuzzCheck(cpu != 0, "eject of CPU 0")
                case .debugExit(let status): fuzzCheck(status & 1 == 1, "debug-exit status \(status)")
                default: break
                }
            }
        }
    }
    return 0
}

runFuzzer(fuzzPortBus)
