// SPDX-License-Identifier: MIT
import GuestFirmware

/// The VMM's marker in SMRAM (`MINIVMM_SMRAM_CANARY_OFFSET` bytes into TSEG, 8 bytes the built-in firmware never
/// touches): planted with a random value when TSEG closes, checked at every RSM and at the end of the run. Code the
/// OS planted that gets to run in SMM overwrites it (the attack payload writes `MINIVMM_ATTACK_MARKER`); a DMA or
/// non-SMM write that reached SMRAM would too. The verdict rests on this observation, never on the firmware's word.
/// Lock held.
final class SMRAMCanary {
    let address: UInt64
    private(set) var planted: UInt64?
    /// The first breach seen: evidence for the report.
    private(set) var breach: String?

    init(tsegBase: UInt64) { address = tsegBase + UInt64(MINIVMM_SMRAM_CANARY_OFFSET) }

    /// The planted value: fixed, so that two backends' reports of the same run agree to the letter, and unlike
    /// anything the firmware or the attack payload writes.
    static let value: UInt64 = 0x216D_6D76_696E_696D  // "minivmm!" as little-endian bytes

    /// Plants the value (once: when TSEG first closes).
    func plant(in memory: GuestMemory) {
        guard planted == nil else { return }
        let v = Self.value
        let bytes = withUnsafeBytes(of: v.littleEndian) { Array($0) }
        if memory.write(bytes, at: address) { planted = v }
    }

    /// Compares the canary with what was planted; on the first difference records `context` as the evidence.
    @discardableResult
    func check(in memory: GuestMemory, context: @autoclosure () -> String) -> Bool {
        guard let want = planted, breach == nil, let b = memory.read(address, count: 8) else { return breach == nil }
        let got = b.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        if got != want {
            breach =
                "SMRAM canary at 0x\(String(address, radix: 16)) overwritten (0x\(String(want, radix: 16)) → 0x\(String(got, radix: 16))) \(context())"
        }
        return breach == nil
    }
}
