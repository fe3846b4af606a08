// SPDX-License-Identifier: MIT
import Foundation

/// `bench.csv`: one row per strategy × point (pure).
public enum BenchCSV {
    public static let header = [
        "strategy", "max_cpus", "boot_cpus", "samples", "passed", "total_s", "vcpu_creation_s", "ap_bring_up_s",
        "relocation_s", "hot_remove_s", "hot_add_s", "exits", "extra_ioctls", "smis", "floor_model_s",
        "ratio_to_floor", "relocation_us_per_cpu", "relocation_exit_floors_per_cpu", "host_kib_per_possible_cpu",
        "host_kib_per_vcpu",
    ].joined(separator: ",")

    public static func render(_ r: BenchResults) -> String {
        func f(_ v: Double?) -> String { v.map { String(format: "%.9g", $0) } ?? "" }
        var out = header + "\n"
        for s in r.strategies {
            for p in s.points {
                let m = p.median
                let cells: [String] = [
                    s.strategy.rawValue, String(p.maxCPUs), String(p.bootCPUs), String(p.samples.count),
                    p.passed ? "true" : "false", f(m.total), f(m.vcpuCreation), f(m.apBringUp), f(m.relocation),
                    f(m.hotRemove), f(m.hotAdd), f(m.exits), f(m.extraIoctls), f(m.smis), f(p.floorModelSeconds),
                    f(p.ratioToFloor), f(p.relocationMicrosPerCPU), f(p.relocationExitFloorsPerCPU),
                    f(m.hostKiBPerPossibleCPU), f(m.hostKiBPerVCPU),
                ]
                out += cells.joined(separator: ",") + "\n"
            }
        }
        return out
    }
}

/// The stdout table (pure).
public enum BenchTable {
    public static func render(_ r: BenchResults) -> String {
        var out = String(
            format: "floors: KVM_RUN round trip %.2f µs, vCPU creation %.1f µs (KVM max %d vCPUs); SMM backend %@\n",
            r.floors.kvmRunExitMicros, r.floors.vcpuCreationMicros, r.floors.kvmMaxVCPUs, r.backend.rawValue)
        for s in r.strategies {
            // Points that ran another number of times than --repeat (the default sweep runs its 4096 point once).
            let other = s.points.filter { $0.samples.count != r.repeatCount }
                .map { "\($0.samples.count) at \($0.maxCPUs)" }
            let runs = "\(r.repeatCount)" + (other.isEmpty ? "" : " (\(other.joined(separator: ", ")))")
            out += "\(s.strategy.rawValue) (boot CPUs \(r.bootCPUs), median of \(runs)):\n"
            out += "  max CPUs    total s  relocation s  reloc µs/CPU  ratio to floor  host KiB/CPU  result\n"
            for p in s.points {
                func col(_ v: Double?, _ fmt: String, _ w: Int) -> String {
                    let t = v.map { String(format: fmt, $0) } ?? "-"
                    return String(repeating: " ", count: max(0, w - t.count)) + t
                }
                out +=
                    col(Double(p.maxCPUs), "%.0f", 10) + col(p.median.total, "%.3f", 11)
                    + col(p.median.relocation, "%.3f", 14) + col(p.relocationMicrosPerCPU, "%.1f", 14)
                    + col(p.ratioToFloor, "%.2f", 16) + col(p.median.hostKiBPerPossibleCPU, "%.1f", 14) + "  "
                    + (p.passed ? "PASS" : "FAIL") + "\n"
            }
        }
        return out
    }
}

/// `bench.svg`: a self-contained line chart, boot time (linear) vs max CPUs (log2), one polyline per strategy
/// and a dashed path for each strategy's floor model (pure).
public enum BenchSVG {
    public static let width = 880.0
    public static let height = 520.0
    static let left = 80.0
    static let right = 270.0
    static let top = 50.0
    static let bottom = 60.0
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]

    /// The log2 x domain covering `cpus` (at least one octave wide).
    public static func xDomain(_ cpus: [Int]) -> ClosedRange<Double> {
        let logs = cpus.filter { $0 > 0 }.map { log2(Double($0)) }
        guard let lo = logs.min(), let hi = logs.max() else { return 0...1 }
        return lo == hi ? (lo - 0.5)...(hi + 0.5) : lo...hi
    }

    /// The pixel x of `maxCPUs` on the log2 axis over `domain`.
    public static func x(_ maxCPUs: Int, domain: ClosedRange<Double>) -> Double {
        let span = domain.upperBound - domain.lowerBound
        let t = (log2(Double(max(maxCPUs, 1))) - domain.lowerBound) / (span > 0 ? span : 1)
        return left + t * (width - left - right)
    }

    /// A 1-2-5 step giving about `count` ticks from 0 to `maxValue`, and the axis top.
    static func niceScale(_ maxValue: Double, count: Int = 5) -> (step: Double, top: Double) {
        let v = maxValue > 0 && maxValue.isFinite ? maxValue : 1
        let raw = v / Double(count)
        let mag = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
        return (step, (v / step).rounded(.up) * step)
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    static func n(_ v: Double) -> String { String(format: "%.1f", v) }

    public static func render(_ r: BenchResults, title: String = "minivmm: boot time vs max CPUs") -> String {
        let cpus = r.strategies.flatMap { $0.points.map(\.maxCPUs) }
        let domain = xDomain(cpus)
        let ys = r.strategies.flatMap { $0.points.flatMap { [$0.median.total, $0.floorModelSeconds] } }
        let (step, yTop) = niceScale(ys.max() ?? 1)
        let plotBottom = height - bottom
        let plotRight = width - right
        func y(_ v: Double) -> Double { plotBottom - v / yTop * (plotBottom - top) }

        var s = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
            <title>\(escape(title))</title>
            <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="white"/>
            <text x="\(n((left + plotRight) / 2))" y="28" text-anchor="middle" font-size="17" \
            font-weight="bold">\(escape(title))</text>

            """
        // Grid, ticks and labels.
        var tick = 0.0
        while tick <= yTop + step / 2 {
            let py = y(tick)
            s += "<line x1=\"\(n(left))\" y1=\"\(n(py))\" x2=\"\(n(plotRight))\" y2=\"\(n(py))\" stroke=\"#e4e4e4\"/>\n"
            s +=
                "<text x=\"\(n(left - 8))\" y=\"\(n(py + 4))\" text-anchor=\"end\">\(String(format: "%g", tick))</text>\n"
            tick += step
        }
        var e = Int(domain.lowerBound.rounded(.up))
        while Double(e) <= domain.upperBound {
            let c = 1 << max(e, 0)
            let px = x(c, domain: domain)
            s +=
                "<line x1=\"\(n(px))\" y1=\"\(n(top))\" x2=\"\(n(px))\" y2=\"\(n(plotBottom))\" stroke=\"#e4e4e4\"/>\n"
            s +=
                "<line x1=\"\(n(px))\" y1=\"\(n(plotBottom))\" x2=\"\(n(px))\" y2=\"\(n(plotBottom + 5))\" stroke=\"black\"/>\n"
            s += "<text x=\"\(n(px))\" y=\"\(n(plotBottom + 19))\" text-anchor=\"middle\">\(c)</text>\n"
            e += 1
        }
        s +=
            "<rect x=\"\(n(left))\" y=\"\(n(top))\" width=\"\(n(plotRight - left))\" height=\"\(n(plotBottom - top))\" "
        s += "fill=\"none\" stroke=\"black\"/>\n"
        s += "<text x=\"\(n((left + plotRight) / 2))\" y=\"\(n(height - 16))\" text-anchor=\"middle\">"
        s += "max CPUs (log2 scale)</text>\n"
        s += "<text transform=\"translate(22 \(n((top + plotBottom) / 2))) rotate(-90)\" text-anchor=\"middle\">"
        s += "boot time, total (s)</text>\n"

        // Series.
        var legendY = top + 10
        for (i, st) in r.strategies.enumerated() {
            let color = palette[i % palette.count]
            let pts = st.points.sorted { $0.maxCPUs < $1.maxCPUs }
            let line = pts.map { "\(n(x($0.maxCPUs, domain: domain))),\(n(y($0.median.total)))" }
            let floor = pts.enumerated().map {
                "\($0.offset == 0 ? "M" : "L")\(n(x($0.element.maxCPUs, domain: domain))) \(n(y($0.element.floorModelSeconds)))"
            }
            let name = escape(st.strategy.rawValue)
            s += "<g class=\"series\" data-strategy=\"\(name)\">\n"
            if !floor.isEmpty {
                s += "<path d=\"\(floor.joined(separator: " "))\" fill=\"none\" stroke=\"\(color)\" "
                s += "stroke-width=\"1.5\" stroke-dasharray=\"6 4\" opacity=\"0.7\"/>\n"
            }
            s += "<polyline points=\"\(line.joined(separator: " "))\" fill=\"none\" stroke=\"\(color)\" "
            s += "stroke-width=\"2\"/>\n"
            for p in pts {
                let px = n(x(p.maxCPUs, domain: domain))
                let py = n(y(p.median.total))
                s += "<circle cx=\"\(px)\" cy=\"\(py)\" r=\"3.5\" fill=\"\(p.passed ? color : "white")\" "
                s += "stroke=\"\(color)\" stroke-width=\"1.5\"><title>\(name): \(p.maxCPUs) CPUs, "
                s += String(format: "%.3f s", p.median.total)
                s += "\(p.passed ? "" : " (FAILED)")</title></circle>\n"
            }
            s += "</g>\n"
            // Legend entries: the measured line and its floor model.
            let lx = plotRight + 16
            s += "<line x1=\"\(n(lx))\" y1=\"\(n(legendY))\" x2=\"\(n(lx + 24))\" y2=\"\(n(legendY))\" "
            s += "stroke=\"\(color)\" stroke-width=\"2\"/>\n"
            s += "<circle cx=\"\(n(lx + 12))\" cy=\"\(n(legendY))\" r=\"3.5\" fill=\"\(color)\"/>\n"
            s += "<text x=\"\(n(lx + 30))\" y=\"\(n(legendY + 4))\">\(name)</text>\n"
            legendY += 20
            s += "<line x1=\"\(n(lx))\" y1=\"\(n(legendY))\" x2=\"\(n(lx + 24))\" y2=\"\(n(legendY))\" "
            s += "stroke=\"\(color)\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>\n"
            s += "<text x=\"\(n(lx + 30))\" y=\"\(n(legendY + 4))\">floor model (\(name))</text>\n"
            legendY += 26
        }
        let lx = plotRight + 16
        s += "<text x=\"\(n(lx))\" y=\"\(n(legendY + 4))\" font-size=\"10\" fill=\"#555\">"
        s += "floor = CPUs × vCPU creation</text>\n"
        s += "<text x=\"\(n(lx))\" y=\"\(n(legendY + 18))\" font-size=\"10\" fill=\"#555\">"
        s += "+ SMIs × KVM_RUN round trip</text>\n"
        s += "<text x=\"\(n(lx))\" y=\"\(n(legendY + 36))\" font-size=\"10\" fill=\"#555\">"
        s += String(format: "(%.1f µs, %.2f µs here)", r.floors.vcpuCreationMicros, r.floors.kvmRunExitMicros)
        s += "</text>\n"
        s += "</svg>\n"
        return s
    }
}
