// SPDX-License-Identifier: MIT
import GuestFirmware

/// A per-CPU userspace model of the local APIC's registers (Intel SDM Vol. 3A ch. 11), for machines where
/// minivmm runs the irqchip itself. Two views of the same registers:
///
/// - the xAPIC MMIO page at `APIC_MMIO_BASE` (0xFEE00000), 32-bit aligned accesses only;
/// - the x2APIC MSRs 0x800–0x8FF (SDM 11.12), reached only in x2APIC mode (`IA32_APIC_BASE` EXTD|EN).
///
/// What it models: ID (fixed: minivmm's APIC ID is the CPU index, so xAPIC ID writes are ignored), version
/// (KVM's 0x00050014), TPR/PPR, EOI, LDR/DFR, SVR, ISR/TMR/IRR, ESR, ICR (a write returns the decoded IPI for
/// the machine to deliver), the six LVTs and the timer registers (stored only: no timer runs). `IA32_APIC_BASE`
/// itself lives with the vCPU; see `resetAPICBase(isBSP:)`.
///
/// Not thread-safe: the machine serializes access to each CPU's APIC.
public final class LocalAPIC {
    /// The APIC ID (x2APIC: all 32 bits; xAPIC: the low 8 bits, in ID bits 31:24).
    public let apicID: UInt32
    /// Whether this is the bootstrap processor's APIC (sets `IA32_APIC_BASE.BSP` at reset).
    public let isBSP: Bool

    /// xAPIC register offsets in the MMIO page (SDM Table 11-1); the x2APIC MSR is `0x800 + offset >> 4`.
    public enum Register {
        public static let id: UInt32 = 0x20
        public static let version: UInt32 = 0x30
        public static let tpr: UInt32 = 0x80
        public static let apr: UInt32 = 0x90
        public static let ppr: UInt32 = 0xA0
        public static let eoi: UInt32 = 0xB0
        public static let ldr: UInt32 = 0xD0
        public static let dfr: UInt32 = 0xE0
        public static let svr: UInt32 = 0xF0
        public static let isrBase: UInt32 = 0x100
        public static let tmrBase: UInt32 = 0x180
        public static let irrBase: UInt32 = 0x200
        public static let esr: UInt32 = 0x280
        public static let icrLow: UInt32 = 0x300
        public static let icrHigh: UInt32 = 0x310
        public static let lvtTimer: UInt32 = 0x320
        public static let lvtError: UInt32 = 0x370
        public static let timerInitialCount: UInt32 = 0x380
        public static let timerCurrentCount: UInt32 = 0x390
        public static let timerDivide: UInt32 = 0x3E0
        /// x2APIC only (MSR 0x83F).
        public static let selfIPI: UInt32 = 0x3F0
    }

    /// KVM's version register: version 0x14, max LVT entry 5 (six LVTs) in bits 23:16.
    public static let versionValue: UInt32 = 0x0005_0014
    public static let svrResetValue: UInt32 = 0xFF
    public static let lvtMasked: UInt32 = 1 << 16
    /// SVR bit 8: APIC software enable.
    public static let svrSoftwareEnable: UInt32 = 1 << 8
    /// ESR bit 6: received illegal vector.
    public static let esrReceivedIllegalVector: UInt32 = 1 << 6
    /// x2APIC ICR bits that must be zero (KVM `X2APIC_ICR_RESERVED_BITS`): 31:20, 17:16, 13.
    public static let x2APICICRReservedBits: UInt64 = 0xFFF0_0000 | 0x3_0000 | 0x2000

    /// The value of `IA32_APIC_BASE` after RESET: base 0xFEE00000, enabled, xAPIC mode, BSP flag per CPU.
    public static func resetAPICBase(isBSP: Bool) -> UInt64 {
        UInt64(APIC_MMIO_BASE) | UInt64(APIC_BASE_EN) | (isBSP ? UInt64(APIC_BASE_BSP) : 0)
    }

    // Registers.
    private var tpr: UInt32 = 0
    private var ldr: UInt32 = 0
    private var dfr: UInt32 = 0xFFFF_FFFF
    private var svr: UInt32 = LocalAPIC.svrResetValue
    private var esr: UInt32 = 0
    /// Errors detected since the last ESR write; a write to ESR moves them into ESR (SDM 11.5.3).
    private var pendingErrors: UInt32 = 0
    private var icrLow: UInt32 = 0
    private var icrHigh: UInt32 = 0
    private var lvt = [UInt32](repeating: LocalAPIC.lvtMasked, count: 6)
    private var timerInitialCount: UInt32 = 0
    private var timerDivide: UInt32 = 0
    private var isr = [UInt32](repeating: 0, count: 8)
    private var tmr = [UInt32](repeating: 0, count: 8)
    private var irr = [UInt32](repeating: 0, count: 8)

    /// Accesses the model ignored (bad width or alignment, writes to read-only xAPIC registers), with the
    /// reason of the last one, for the machine's report.
    public private(set) var ignoredAccessCount = 0
    public private(set) var lastIgnoredAccess: String?

    public init(apicID: UInt32, isBSP: Bool) {
        self.apicID = apicID
        self.isBSP = isBSP
    }

    // MARK: - RESET and INIT

    /// RESET: every register to its power-up value (SDM 11.4.7.1). The ID is fixed in minivmm.
    public func reset() {
        tpr = 0
        ldr = 0
        dfr = 0xFFFF_FFFF
        svr = Self.svrResetValue
        esr = 0
        pendingErrors = 0
        icrLow = 0
        icrHigh = 0
        lvt = [UInt32](repeating: Self.lvtMasked, count: 6)
        timerInitialCount = 0
        timerDivide = 0
        isr = [UInt32](repeating: 0, count: 8)
        tmr = isr
        irr = isr
    }

    /// INIT: the APIC registers go back to their reset values except the APIC ID (SDM 11.4.7.3). The x2APIC
    /// mode bit of `IA32_APIC_BASE` is kept too, but that MSR lives outside this model.
    public func initSignal() {
        reset()
    }

    // MARK: - Derived registers

    /// LDR as x2APIC mode defines it (SDM 11.12.10.2): cluster ID (ID bits 31:4) in bits 31:16, a one-hot
    /// logical ID (ID bits 3:0) in bits 15:0.
    public var x2APICLogicalID: UInt32 {
        ((apicID >> 4) << 16) | (1 << (apicID & 0xF))
    }

    /// The highest vector set in a 256-bit register, if any.
    private static func highest(_ bits: [UInt32]) -> UInt8? {
        for word in stride(from: 7, through: 0, by: -1) where bits[word] != 0 {
            return UInt8(word * 32 + 31 - bits[word].leadingZeroBitCount)
        }
        return nil
    }

    /// PPR (SDM 11.8.3.1): TPR if its priority class is at least that of the highest in-service vector,
    /// otherwise that vector's class.
    public var processorPriority: UInt32 {
        let isrv = UInt32(Self.highest(isr) ?? 0)
        return (tpr & 0xF0) >= (isrv & 0xF0) ? tpr & 0xFF : isrv & 0xF0
    }

    // MARK: - Fixed-interrupt bookkeeping

    /// Accepts a fixed interrupt: sets its IRR bit. Vectors 0–15 are illegal and latch "received illegal
    /// vector" instead (SDM 11.5.3).
    public func acceptFixed(vector: UInt8) {
        guard vector >= 16 else {
            pendingErrors |= Self.esrReceivedIllegalVector
            return
        }
        irr[Int(vector) / 32] |= 1 << (UInt32(vector) % 32)
    }

    /// The vector to inject next: the highest IRR vector whose priority class is above PPR's (which covers
    /// both TPR and the highest in-service vector), or nil.
    public func nextInjectable() -> UInt8? {
        guard let vector = Self.highest(irr) else { return nil }
        return UInt32(vector) & 0xF0 > processorPriority & 0xF0 ? vector : nil
    }

    /// The CPU took `vector`: it moves from IRR to ISR.
    public func didInject(vector: UInt8) {
        let word = Int(vector) / 32
        let bit: UInt32 = 1 << (UInt32(vector) % 32)
        irr[word] &= ~bit
        isr[word] |= bit
    }

    /// EOI: clears the highest in-service vector (and its TMR bit).
    public func endOfInterrupt() {
        guard let vector = Self.highest(isr) else { return }
        let word = Int(vector) / 32
        let bit: UInt32 = 1 << (UInt32(vector) % 32)
        isr[word] &= ~bit
        tmr[word] &= ~bit
    }

    /// Whether `vector` is pending (IRR) or in service (ISR); for tests and the report.
    public func isPending(_ vector: UInt8) -> Bool { irr[Int(vector) / 32] & (1 << (UInt32(vector) % 32)) != 0 }
    public func isInService(_ vector: UInt8) -> Bool { isr[Int(vector) / 32] & (1 << (UInt32(vector) % 32)) != 0 }

    // MARK: - Register file shared by both views

    private static func lvtIndex(_ offset: UInt32) -> Int? {
        (Register.lvtTimer...Register.lvtError).contains(offset) && offset & 0xF == 0
            ? Int((offset - Register.lvtTimer) >> 4) : nil
    }

    private static func bankIndex(_ offset: UInt32, base: UInt32) -> Int? {
        (base..<base + 0x80).contains(offset) && offset & 0xF == 0 ? Int((offset - base) >> 4) : nil
    }

    /// Reads a register common to both modes; nil when the offset is not readable in that mode.
    private func readRegister(_ offset: UInt32, x2APIC: Bool) -> UInt32? {
        if let i = Self.bankIndex(offset, base: Register.isrBase) { return isr[i] }
        if let i = Self.bankIndex(offset, base: Register.tmrBase) { return tmr[i] }
        if let i = Self.bankIndex(offset, base: Register.irrBase) { return irr[i] }
        if let i = Self.lvtIndex(offset) { return lvt[i] }
        switch offset {
        case Register.id: return x2APIC ? apicID : (apicID & 0xFF) << 24
        case Register.version: return Self.versionValue
        case Register.tpr: return tpr
        case Register.apr: return x2APIC ? nil : 0
        case Register.ppr: return processorPriority
        case Register.ldr: return x2APIC ? x2APICLogicalID : ldr
        case Register.dfr: return x2APIC ? nil : dfr
        case Register.svr: return svr
        case Register.esr: return esr
        case Register.icrLow: return icrLow & ~InterruptCommand.deliveryStatusBit
        case Register.icrHigh: return x2APIC ? nil : icrHigh
        case Register.timerInitialCount: return timerInitialCount
        case Register.timerCurrentCount: return 0
        case Register.timerDivide: return timerDivide
        default: return nil
        }
    }

    private func writeSVR(_ value: UInt32) {
        svr = value & 0x3FF
        // A software-disabled APIC masks every LVT (SDM 11.4.7.2; KVM does the same).
        if svr & Self.svrSoftwareEnable == 0 {
            for i in lvt.indices { lvt[i] |= Self.lvtMasked }
        }
    }

    private func writeLVT(_ index: Int, _ value: UInt32) {
        var v = value & ~InterruptCommand.deliveryStatusBit
        if svr & Self.svrSoftwareEnable == 0 { v |= Self.lvtMasked }
        lvt[index] = v
    }

    private func writeESR() {
        esr = pendingErrors
        pendingErrors = 0
    }

    private func ignore(_ reason: String) {
        ignoredAccessCount += 1
        lastIgnoredAccess = reason
    }

    // MARK: - xAPIC MMIO

    /// Reads the xAPIC page at `offset` (0...0xFFF). Only aligned 32-bit reads are modelled; others read 0 and
    /// count as ignored. Write-only and reserved registers read 0.
    public func readMMIO(offset: UInt32, size: Int = 4) -> UInt32 {
        guard size == 4, offset & 0xF == 0, offset < 0x1000 else {
            ignore("xAPIC read of \(size) bytes at offset 0x\(String(offset, radix: 16))")
            return 0
        }
        return readRegister(offset, x2APIC: false) ?? 0
    }

    /// Writes the xAPIC page. A write to ICR low sends the IPI: the decoded command is returned (nil for the
    /// reserved delivery mode). Only aligned 32-bit writes are modelled; others are ignored and counted.
    @discardableResult
    public func writeMMIO(offset: UInt32, value: UInt32, size: Int = 4) -> InterruptCommand? {
        guard size == 4, offset & 0xF == 0, offset < 0x1000 else {
            ignore("xAPIC write of \(size) bytes at offset 0x\(String(offset, radix: 16))")
            return nil
        }
        if let i = Self.lvtIndex(offset) {
            writeLVT(i, value)
            return nil
        }
        switch offset {
        case Register.tpr: tpr = value & 0xFF
        case Register.eoi: endOfInterrupt()
        case Register.ldr: ldr = value & 0xFF00_0000
        case Register.dfr: dfr = value | 0x0FFF_FFFF
        case Register.svr: writeSVR(value)
        case Register.esr: writeESR()
        case Register.icrHigh: icrHigh = value & 0xFF00_0000
        case Register.icrLow:
            icrLow = value & ~InterruptCommand.deliveryStatusBit
            return InterruptCommand.decodeXAPIC(low: icrLow, high: icrHigh)
        case Register.timerInitialCount: timerInitialCount = value
        case Register.timerDivide: timerDivide = value & 0xB
        default:
            ignore("xAPIC write to read-only or reserved offset 0x\(String(offset, radix: 16))")
        }
        return nil
    }

    // MARK: - x2APIC MSRs

    /// The outcome of an x2APIC `RDMSR`: the value, or #GP(0).
    public enum MSRResult: Equatable {
        case value(UInt64)
        case generalProtection
    }

    /// The MSR range of the x2APIC registers.
    public static let x2APICMSRs: ClosedRange<UInt32> = UInt32(MSR_X2APIC_BASE)...0x8FF

    /// `RDMSR` of an x2APIC register. #GP when x2APIC mode is off (as on hardware and KVM), for MSRs outside
    /// 0x800–0x8FF, for write-only registers (EOI, SELF_IPI) and for xAPIC-only or reserved ones.
    public func readMSR(_ msr: UInt32, x2APICEnabled: Bool) -> MSRResult {
        guard x2APICEnabled, Self.x2APICMSRs.contains(msr) else { return .generalProtection }
        let offset = (msr - UInt32(MSR_X2APIC_BASE)) << 4
        guard let low = readRegister(offset, x2APIC: true) else { return .generalProtection }
        if offset == Register.icrLow { return .value(UInt64(icrHigh) << 32 | UInt64(low)) }
        return .value(UInt64(low))
    }

    /// `WRMSR` of an x2APIC register. A write to ICR (0x830) or SELF_IPI (0x83F) sends: the IPI is returned.
    /// #GP when x2APIC mode is off, for read-only (ID, version, PPR, LDR, ISR/TMR/IRR, current count) and
    /// reserved registers, for bits 63:32 set outside ICR, for reserved ICR bits, for a non-zero EOI or ESR
    /// write and for SELF_IPI bits 31:8 (SDM 11.12.1.2; KVM does the same).
    public func writeMSR(_ msr: UInt32, value: UInt64, x2APICEnabled: Bool) -> (gp: Bool, ipi: InterruptCommand?) {
        guard x2APICEnabled, Self.x2APICMSRs.contains(msr) else { return (true, nil) }
        let offset = (msr - UInt32(MSR_X2APIC_BASE)) << 4
        if offset == Register.icrLow {
            guard value & Self.x2APICICRReservedBits == 0 else { return (true, nil) }
            icrLow = UInt32(truncatingIfNeeded: value) & ~InterruptCommand.deliveryStatusBit
            icrHigh = UInt32(value >> 32)
            return (false, InterruptCommand.decodeX2APIC(UInt64(icrHigh) << 32 | UInt64(icrLow)))
        }
        guard value >> 32 == 0 else { return (true, nil) }
        let v = UInt32(value)
        if let i = Self.lvtIndex(offset) {
            writeLVT(i, v)
            return (false, nil)
        }
        switch offset {
        case Register.tpr: tpr = v & 0xFF
        case Register.eoi:
            guard v == 0 else { return (true, nil) }
            endOfInterrupt()
        case Register.svr: writeSVR(v)
        case Register.esr:
            guard v == 0 else { return (true, nil) }
            writeESR()
        case Register.timerInitialCount: timerInitialCount = v
        case Register.timerDivide: timerDivide = v & 0xB
        case Register.selfIPI:
            guard v & ~0xFF == 0 else { return (true, nil) }
            let ipi = InterruptCommand(
                vector: UInt8(v), mode: .fixed, level: true, triggerLevel: false, destination: .selfOnly)
            return (false, ipi)
        default:
            return (true, nil)
        }
        return (false, nil)
    }
}
