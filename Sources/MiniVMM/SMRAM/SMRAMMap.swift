// SPDX-License-Identifier: MIT
import GuestFirmware

/// One SMRAM window of the Q35 machine: a guest-physical range that becomes invisible to non-SMM code when the
/// MCH closes it (QEMU's `tseg_blackhole` and `smbase_blackhole` regions over system memory, and the `smram`
/// address space where SMM CPUs still see the RAM).
public struct SMRAMWindow: Sendable, Equatable {
    public let kind: SMRAMWindowKind
    public let base: UInt64
    public let size: UInt64
    /// The memslot that backs the window in the normal view (deleted while the window is closed).
    let slot: Slot
    /// Non-SMM code cannot see the window now (TSEG: ESMRAMC.T_EN with G_SMRAME; default SMBASE: 0x9C locked).
    public var closed = false
    /// The closing cannot be undone before reset (SMRAM.D_LCK; 0x9C LCK).
    public var locked = false

    public var end: UInt64 { base + size }

    /// Whether [gpa, gpa + count) overlaps the window. Wrapping-safe for any guest value.
    public func overlaps(_ gpa: UInt64, count: Int) -> Bool {
        guard count > 0 else { return false }
        let last = gpa.addingReportingOverflow(UInt64(count) - 1)
        let hi = last.overflow ? UInt64.max : last.partialValue
        return gpa < end && hi >= base
    }

    /// Whether [gpa, gpa + count) lies entirely inside the window. Wrapping-safe.
    public func contains(_ gpa: UInt64, count: UInt64) -> Bool {
        let e = gpa.addingReportingOverflow(count)
        return !e.overflow && gpa >= base && e.partialValue <= end
    }
}

/// A change of an SMRAM window's state, with the run time it happened at (the report's "when").
public struct SMRAMWindowEvent: Codable, Sendable, Equatable {
    public var kind: SMRAMWindowKind
    /// Seconds since the machine started.
    public var at: Double
    public var closed: Bool
    public var locked: Bool
}

/// The machine's SMRAM as a list of windows (TSEG, 0x30000–0x4FFFF once MCH 0x9C is locked, the A-segment while
/// 0x9D makes it SMRAM): what the memslot
/// maps, the non-SMM access counters, the DMA black hole and "SMI entry inside SMRAM" all consult. Lock held.
final class SMRAMMap {
    private(set) var windows: [SMRAMWindow]
    var accesses = SMRAMAccessCounters()

    init(tsegBase: UInt64, tsegBytes: UInt64) {
        windows = [
            SMRAMWindow(kind: .tseg, base: tsegBase, size: tsegBytes, slot: .tseg),
            SMRAMWindow(
                kind: .defaultSMBASE, base: UInt64(MINIVMM_DEFAULT_SMRAM_BASE),
                size: UInt64(MINIVMM_DEFAULT_SMRAM_SIZE), slot: .defaultSMRAM),
            SMRAMWindow(
                kind: .aSegment, base: Layout.vgaHoleStart, size: Layout.vgaHoleEnd - Layout.vgaHoleStart,
                slot: .aSegment),
        ]
    }

    /// Every change of a window's closed/locked state, in order (at most `maxEvents`; later ones are counted).
    private(set) var events: [SMRAMWindowEvent] = []
    private(set) var droppedEvents = 0
    static let maxEvents = 64

    subscript(kind: SMRAMWindowKind) -> SMRAMWindow { windows.first { $0.kind == kind }! }

    var tseg: SMRAMWindow { self[.tseg] }

    /// Whether a non-SMM access to [gpa, gpa + count) hits a closed window.
    func isClosed(_ gpa: UInt64, count: Int) -> Bool {
        windows.contains { $0.closed && $0.overlaps(gpa, count: count) }
    }

    /// The closed window that holds all of SMM code's entry page [SMBASE+0x8000, SMBASE+0x10000), if any.
    func window(holdingEntryOf smbase: UInt32) -> SMRAMWindowKind? {
        let lo = UInt64(smbase) + UInt64(SMM_HANDLER_OFFSET)
        return windows.first { $0.closed && $0.contains(lo, count: 0x10000 - UInt64(SMM_HANDLER_OFFSET)) }?.kind
    }

    /// A memslot change the machine must make in the normal view.
    struct SlotChange: Equatable {
        let slot: Slot
        let mapped: Bool
    }

    /// Applies a new MCH SMRAM decode (QEMU `mch_update_smram`, `mch_update_smbase_smram`). Returns the memslot
    /// changes for the normal view: a closed window loses its slot, so non-SMM accesses exit and hit the black hole.
    ///
    /// The A-segment's slot is not among the changes: it is absent from the normal view by default (the VGA hole) and
    /// its SMM-view mapping changes too, so the machine maps it itself from the decode (`applyASegment`).
    func apply(_ c: SMRAMControl, at seconds: Double = 0) -> [SlotChange] {
        var changes: [SlotChange] = []
        for i in windows.indices {
            let closed: Bool
            let locked: Bool
            switch windows[i].kind {
            case .tseg:
                closed = c.tsegEnabled
                locked = c.locked
            case .defaultSMBASE:
                closed = c.defaultSMBASEState == .locked
                locked = closed
            case .aSegment:
                closed = c.aSegmentClosed
                locked = c.locked
            }
            if closed != windows[i].closed || locked != windows[i].locked {
                if events.count < Self.maxEvents {
                    events.append(SMRAMWindowEvent(kind: windows[i].kind, at: seconds, closed: closed, locked: locked))
                } else {
                    droppedEvents += 1
                }
            }
            windows[i].locked = locked
            if closed != windows[i].closed {
                windows[i].closed = closed
                if windows[i].kind != .aSegment {
                    changes.append(SlotChange(slot: windows[i].slot, mapped: !closed))
                }
            }
        }
        return changes
    }

    /// Counts a non-SMM access that the black hole answered.
    func countBlocked(_ gpa: UInt64, write: Bool) {
        if write { accesses.writes += 1 } else { accesses.reads += 1 }
        if accesses.firstAddresses.count < 8 { accesses.firstAddresses.append(gpa) }
    }
}
