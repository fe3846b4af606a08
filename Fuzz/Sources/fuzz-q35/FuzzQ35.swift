// SPDX-License-Identifier: MIT
import FuzzSupport
import MiniVMM

/// The Q35 host bridge behind 0xCF8/0xCFC: CONFIG_ADDRESS and CONFIG_DATA accesses of any size, plus resets.
/// Invariants: reads fit their size; the read-only header (vendor/device ID) never changes; once SMRAM.D_LCK is set,
/// D_OPEN stays clear and the decode's TSEG part stays as it was until reset; once 0x9C is locked the default SMBASE
/// window stays locked until reset; a TSEG size is 0, 1, 2, 8 MiB or the extended size.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQ35(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let ext = input.u16() % 0x1100
    guard let bridge = try? Q35HostBridge(extTSEGMiB: ext, smramAtDefaultSMBASE: input.bool()) else {
        fuzzCheck(ext > Q35HostBridge.maxExtTSEGMiB, "valid extended TSEG \(ext) refused")
        return 0
    }
    let bus = PortIOBus()
    guard (try? bus.register(bridge, base: 0xCF8, length: 8)) != nil else { fatalError("bus") }
    let context = AccessContext(cpu: 0, inSMM: false)
    var lockedDecode: SMRAMControl?
    var smbaseLocked = false

    var steps = 0
    while !input.isEmpty && steps < 256 {
        steps += 1
        switch input.u8() % 5 {
        case 0:
            // CONFIG_ADDRESS for 00:00.0 (or another function) at a register.
            let other = input.u8() & 0x0F == 0 ? UInt32(input.u16()) << 8 : 0
            let value = 0x8000_0000 | other | UInt32(input.u8() & 0xFC)
            _ = bus.write(port: 0xCF8, size: 4, value: value, context: context)
        case 1, 2:
            let port = 0xCF8 + UInt16(input.u8() % 9)
            let size = input.accessSize()
            if input.bool() {
                let v = bus.read(port: port, size: size, context: context)
                if [1, 2, 4].contains(size) { fuzzCheck(v <= fuzzMask(size: size), "read wider than \(size)") }
            } else {
                _ = bus.write(port: port, size: size, value: input.u32(), context: context)
            }
        case 3:
            _ = bus.write(port: 0xCF8, size: 4, value: input.u32(), context: context)
        default:
            if input.u8() == 0 {
                bridge.reset()
                lockedDecode = nil
                smbaseLocked = false
            }
        }
        let c = bridge.smramControl
        fuzzCheck(bridge.config[0] == 0x86 && bridge.config[1] == 0x80, "vendor ID changed")
        fuzzCheck(bridge.config[2] == 0xC0 && bridge.config[3] == 0x29, "device ID changed")
        let mib: UInt64 = 1 << 20
        fuzzCheck(
            [0, mib, 2 * mib, 8 * mib, UInt64(ext) * mib].contains(c.tsegBytes), "TSEG size \(c.tsegBytes)")
        if let l = lockedDecode {
            fuzzCheck(c.locked && !c.dOpen, "SMRAM unlocked or opened after D_LCK")
            fuzzCheck(
                c.tsegEnabled == l.tsegEnabled && c.tsegBytes == l.tsegBytes && c.gSMRAME == l.gSMRAME,
                "TSEG decode changed after D_LCK")
        } else if c.locked {
            fuzzCheck(!c.dOpen, "D_OPEN with D_LCK")
            lockedDecode = c
        }
        if smbaseLocked { fuzzCheck(c.defaultSMBASEState == .locked, "0x9C unlocked before reset") }
        smbaseLocked = c.defaultSMBASEState == .locked
    }
    return 0
}

runFuzzer(fuzzQ35)
