// SPDX-License-Identifier: MIT

/// What the VMM observed a `--firmware FILE --stock` image do with SMBASE and SMRAM, without assuming the built-in
/// firmware's protocol: the invariants of DESIGN.md §5 judge that protocol (relocation into TSEG, a locked TSEG, a
/// hot-add scenario), so for stock firmware the report states findings instead of passing or failing them. Every
/// finding comes from records the VMM made itself (SMI entries it performed or observed, SMBASE values RSM loaded,
/// MCH decode changes, black-holed accesses), never from the firmware's console.
public struct FirmwareFindings: Codable, Sendable, Equatable {
    /// Where an SMBASE puts the CPU's 64 KiB SMRAM image [SMBASE, SMBASE + 0x10000).
    public enum Region: String, Codable, Sendable {
        case tseg
        case aSegment = "a-segment"
        case defaultSMBASE = "default-smbase"
        case ordinaryRAM = "ordinary-ram"
    }

    public struct CPU: Codable, Sendable, Equatable {
        public var apicID: Int
        /// SMIs the CPU took.
        public var smis: Int
        /// An RSM loaded an SMBASE other than the one the CPU started with.
        public var relocated: Bool
        /// The SMBASE the CPU holds at the end of the run, and where that puts its SMRAM image.
        public var smbase: UInt32
        public var region: Region
        /// Where its first SMI entered (SMBASE + 0x8000), and whether that lay in closed SMRAM then.
        public var firstEntry: UInt32?
        public var firstEntryInSMRAM: Bool?
    }

    public struct Window: Codable, Sendable, Equatable {
        public var kind: SMRAMWindowKind
        public var closed: Bool
        public var locked: Bool
        /// Seconds after the machine started when it first closed / first locked (nil: never).
        public var firstClosedAt: Double?
        public var lockedAt: Double?
    }

    public var cpus: [CPU]
    public var windows: [Window]
    /// Some SMRAM window ended the run locked.
    public var smramLocked: Bool
    /// Non-SMM CPU accesses and DMA transfers the closed SMRAM black-holed.
    public var nonSMMReads: Int
    public var nonSMMWrites: Int
    public var dmaBlocked: Int
    /// The findings in words, one per line; the first is the one-line verdict.
    public var lines: [String]

    static func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16, uppercase: true) }

    /// The region holding [smbase, smbase + 0x10000): an SMRAM window that was SMRAM at some time in the run (closed
    /// now, or closed by an event), else ordinary RAM.
    static func region(of smbase: UInt32, windows: [SMRAMWindow], events: [SMRAMWindowEvent]) -> Region {
        for w in windows where w.contains(UInt64(smbase), count: 0x10000) {
            guard w.closed || events.contains(where: { $0.kind == w.kind && $0.closed }) else { continue }
            switch w.kind {
            case .tseg: return .tseg
            case .aSegment: return .aSegment
            case .defaultSMBASE: return .defaultSMBASE
            }
        }
        return .ordinaryRAM
    }

    static func describe(_ r: Region) -> String {
        switch r {
        case .tseg: "TSEG"
        case .aSegment: "A-segment"
        case .defaultSMBASE: "the default-SMBASE window"
        case .ordinaryRAM: "ordinary RAM"
        }
    }

    /// The findings for the CPUs that existed (`cpus`, the first one the boot CPU), the SMRAM windows as the run
    /// ended, their history, and the black-hole counters.
    static func observe(
        cpus: [CPUObservation], windows: [SMRAMWindow], events: [SMRAMWindowEvent], accesses: SMRAMAccessCounters
    ) -> FirmwareFindings {
        var found: [CPU] = []
        var lines: [String] = []
        var verdict: [String] = []
        for (n, c) in cpus.enumerated() {
            let start = c.smbaseHistory.first?.smbase ?? UInt32(Layout.defaultSMBASE)
            let final = c.smbaseHistory.last?.smbase ?? start
            let relocated = c.smbaseHistory.contains { $0.cause == .rsm && $0.smbase != start }
            let region = region(of: final, windows: windows, events: events)
            let smis = c.smiEntries.count + c.droppedRecords
            let first = c.smiEntries.first
            found.append(
                CPU(
                    apicID: c.apicID, smis: smis, relocated: relocated, smbase: final, region: region,
                    firstEntry: first?.entry, firstEntryInSMRAM: first?.inSMRAM))
            let who = n == 0 ? "boot CPU" : "CPU \(c.apicID)"
            let name = n == 0 ? "CPU \(c.apicID) (boot CPU)" : "CPU \(c.apicID)"
            if relocated {
                verdict.append("\(who) relocated to \(hex(final))")
                let entry = first.map {
                    "; its first SMI entered at \(hex($0.entry)) in \($0.inSMRAM ? "closed SMRAM" : "ordinary RAM")"
                }
                lines.append(
                    "\(name) relocated to \(hex(final)) (\(describe(region))) by RSM; \(smis) SMI\(smis == 1 ? "" : "s")"
                        + (entry ?? ""))
            } else {
                verdict.append("\(who) never relocated (SMBASE \(hex(final)))")
                lines.append(
                    "\(name) never relocated (SMBASE \(hex(final)), \(describe(region))); "
                        + (smis == 0 ? "took no SMI" : "\(smis) SMI\(smis == 1 ? "" : "s") at \(hex(final &+ 0x8000))"))
            }
        }
        var ws: [Window] = []
        for w in windows {
            let mine = events.filter { $0.kind == w.kind }
            let closedAt = mine.first { $0.closed }?.at
            let lockedAt = mine.first { $0.locked }?.at
            ws.append(
                Window(kind: w.kind, closed: w.closed, locked: w.locked, firstClosedAt: closedAt, lockedAt: lockedAt))
            let name = w.kind == .tseg ? "TSEG" : w.kind == .aSegment ? "A-segment" : "default-SMBASE window"
            func t(_ s: Double) -> String { String(format: "%.3f s", s) }
            if let c = closedAt {
                var s = "\(name) SMRAM (\(hex(w.base))-\(hex(w.end - 1))): "
                s += "closed at \(t(c))" + (w.closed ? "" : ", open again at the end")
                s += lockedAt.map { ", locked at \(t($0))" } ?? ", never locked"
                lines.append(s)
            } else {
                // Never hidden from non-SMM code: the firmware never made this range SMRAM (QEMU decodes it as
                // SMRAM only once the register named here says so), so it stayed what it was.
                let why =
                    switch w.kind {
                    case .tseg: "never enabled (MCH ESMRAMC.T_EN with SMRAM.G_SMRAME never set): ordinary RAM"
                    case .defaultSMBASE: "never enabled (MCH 0x9C never locked it as SMRAM): ordinary RAM"
                    case .aSegment: "never closed (MCH SMRAM 0x9D: G_SMRAME never set with D_OPEN clear)"
                    }
                lines.append("\(name) (\(hex(w.base))-\(hex(w.end - 1))): \(why)")
            }
        }
        let locked = windows.contains { $0.locked && $0.closed }
        verdict.append(locked ? "SMRAM locked" : "SMRAM never locked")
        lines.append(
            "non-SMM accesses to closed SMRAM: \(accesses.reads) reads (all-ones), \(accesses.writes) writes (dropped), \(accesses.dmaBlocked) DMA transfers (black-holed)"
        )
        return FirmwareFindings(
            cpus: found, windows: ws, smramLocked: locked, nonSMMReads: accesses.reads, nonSMMWrites: accesses.writes,
            dmaBlocked: accesses.dmaBlocked, lines: [verdict.joined(separator: "; ")] + lines)
    }
}
