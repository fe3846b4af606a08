// SPDX-License-Identifier: MIT

/// The checks of DESIGN.md §5, as pure functions of what the VMM observed. They never read what the firmware
/// claims (the report channel), only SMI entries the VMM performed, SMBASE values RSM loaded, hotplug events
/// the VMM executed and the memory accesses it served.
enum Invariants {
    struct Input {
        var strategy: Strategy
        var cpus: [CPUObservation]
        var hotAdd: [Int]
        var hotplugReset: Bool
        var tsegBase: UInt64
        var tsegBytes: UInt64
        var smramClosed: Bool
        var smramLocked: Bool
        var smramAccesses: SMRAMAccessCounters
        var hotAddRefused: Bool
    }

    static func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }

    static func check(_ i: Input) -> [InvariantResult] {
        [relocation(i), smbaseSurvivesHotAdd(i), hotAddSMIInSMRAM(i), smramInvisible(i)]
    }

    /// 1. Each relocated CPU's first SMI entered at 0x38000 and RSM then loaded an SMBASE that is distinct per
    /// CPU and places the CPU's SMRAM [SMBASE+0x8000, SMBASE+0x10000) inside TSEG.
    static func relocation(_ i: Input) -> InvariantResult {
        var problems: [String] = []
        var seen: [UInt32: Int] = [:]
        let tsegEnd = i.tsegBase + i.tsegBytes
        for c in i.cpus {
            guard let first = c.smiEntries.first else {
                problems.append("CPU \(c.apicID) never took an SMI")
                continue
            }
            if first.entry != 0x38000 { problems.append("CPU \(c.apicID)'s first SMI entered at \(hex(first.entry))") }
            guard let reloc = c.smbaseHistory.first(where: { $0.cause == .rsm }) else {
                problems.append("CPU \(c.apicID)'s SMBASE was never relocated")
                continue
            }
            let s = UInt64(reloc.smbase)
            if s < i.tsegBase || s + 0x10000 > tsegEnd {
                problems.append("CPU \(c.apicID)'s SMBASE \(hex(s)) is not inside TSEG")
            }
            if let other = seen[reloc.smbase] {
                problems.append("CPUs \(other) and \(c.apicID) share SMBASE \(hex(s))")
            }
            seen[reloc.smbase] = c.apicID
        }
        let ok = problems.isEmpty
        return InvariantResult(
            id: 1, name: "relocation at 3000:8000 to distinct SMBASEs in TSEG", passed: ok,
            detail: ok
                ? "\(i.cpus.count) CPUs entered first at 0x38000 and were relocated to \(seen.count) distinct SMBASEs inside TSEG"
                : summarize(problems))
    }

    /// 2. Across hot-remove and hot-add (INIT, no RESET) the SMBASE is unchanged.
    /// Invariants 2 and 3 when there is no hot-added CPU to judge: vacuous without hot-add, failed when the
    /// hot-add was refused.
    static func withoutHotAdd(_ i: Input, id: Int, name: String) -> InvariantResult? {
        guard i.hotAdd.isEmpty || i.hotAddRefused else { return nil }
        return InvariantResult(
            id: id, name: name, passed: !i.hotAddRefused || i.hotAdd.isEmpty,
            detail: i.hotAddRefused ? "hot-add was refused" : "no CPU was hot-added")
    }

    static func smbaseSurvivesHotAdd(_ i: Input) -> InvariantResult {
        if let r = withoutHotAdd(i, id: 2, name: "SMBASE survives hot-remove and hot-add") { return r }
        var problems: [String] = []
        var shown: [String] = []
        for n in i.hotAdd {
            let c = i.cpus[n]
            guard let before = c.smbaseAtEject, let after = c.smbaseAtHotAdd else {
                problems.append("CPU \(n) was not ejected and re-added")
                continue
            }
            // The SMBASE the CPU's next SMI entered with: what INIT-SIPI-SIPI left in the SMBASE register.
            let atNextSMI = c.smiEntries.first(where: { $0.phase == .hotAdd || $0.phase == .finish })?.smbase
            if after != before {
                problems.append(
                    "CPU \(n)'s SMBASE changed across hot-add (\(hex(before)) → \(hex(after)))\(after == 0x30000 ? ": the hot-add RESET it" : "")"
                )
            } else if let a = atNextSMI, a != before {
                problems.append("CPU \(n)'s SMBASE changed across INIT (\(hex(before)) → \(hex(a)) at its next SMI)")
            } else {
                shown.append("CPU \(n) \(hex(before))")
            }
        }
        let ok = problems.isEmpty
        return InvariantResult(
            id: 2, name: "SMBASE survives hot-remove and hot-add", passed: ok,
            detail: ok
                ? "unchanged across eject, hot-add and INIT (next SMI): " + shown.joined(separator: ", ")
                : summarize(problems))
    }

    /// 3. The hot-added CPU's next SMI enters at its relocated SMBASE+0x8000 inside SMRAM, never at 0x38000.
    static func hotAddSMIInSMRAM(_ i: Input) -> InvariantResult {
        if let r = withoutHotAdd(i, id: 3, name: "hot-added CPU's next SMI enters SMRAM") { return r }
        var problems: [String] = []
        var shown: [String] = []
        for n in i.hotAdd {
            let c = i.cpus[n]
            guard let next = c.smiEntries.first(where: { $0.phase == .hotAdd || $0.phase == .finish }) else {
                problems.append("CPU \(n) took no SMI after hot-add")
                continue
            }
            if next.entry == 0x38000 || !next.inSMRAM {
                problems.append("CPU \(n)'s next SMI entered at \(hex(next.entry)) in ordinary RAM")
            } else {
                shown.append("CPU \(n) at \(hex(next.entry))")
            }
        }
        let ok = problems.isEmpty
        return InvariantResult(
            id: 3, name: "hot-added CPU's next SMI enters SMRAM", passed: ok,
            detail: ok ? shown.joined(separator: ", ") + " (inside TSEG)" : summarize(problems))
    }

    /// 4. SMRAM is invisible to non-SMM code once closed: reads return all-ones, writes are dropped.
    static func smramInvisible(_ i: Input) -> InvariantResult {
        let a = i.smramAccesses
        var problems: [String] = []
        if !i.smramClosed { problems.append("TSEG was never closed (T_EN)") }
        if !i.smramLocked { problems.append("SMRAM was never locked (D_LCK)") }
        if !a.readsReturnedAllOnes { problems.append("a non-SMM read of SMRAM returned data") }
        let ok = problems.isEmpty
        return InvariantResult(
            id: 4, name: "SMRAM invisible to non-SMM code", passed: ok,
            detail: ok
                ? "TSEG closed and locked; \(a.reads) non-SMM reads returned all-ones, \(a.writes) writes dropped"
                : summarize(problems))
    }

    static func summarize(_ p: [String]) -> String {
        p.count <= 3 ? p.joined(separator: "; ") : p.prefix(3).joined(separator: "; ") + "; and \(p.count - 3) more"
    }
}
