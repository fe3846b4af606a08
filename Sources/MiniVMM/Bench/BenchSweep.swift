// SPDX-License-Identifier: MIT
import Firmware
import Foundation
import KVMBridge

#if canImport(Glibc)
    import Glibc
#endif

/// The sweep of DESIGN.md §6: floors first, then every (strategy, max CPUs) point `repeatCount` times.
public struct BenchSweep: Sendable {
    /// The strategies the built-in firmware implements (the strategy table's; the others are rejected).
    public static var implementedStrategies: [Strategy] { StrategySpec.implemented }

    public var strategies: [Strategy]
    public var maxCPUs: [Int]
    public var bootCPUs: Int
    public var repeatCount: Int
    public var progress: Bool
    /// The SMM backend of every point (resolved: never `.auto`).
    public var backend: SMMBackendKind
    /// Points above this many CPUs run once instead of `repeatCount` times (nil: every point `repeatCount` times):
    /// the default sweep's 4096-CPU point costs about as much as all the others together.
    public var singleRunAbove: Int?

    public init(
        strategies: [Strategy], maxCPUs: [Int], bootCPUs: Int, repeatCount: Int, progress: Bool,
        backend: SMMBackendKind = .emulated
    ) {
        self.backend = backend
        self.strategies = strategies
        self.maxCPUs = maxCPUs
        self.bootCPUs = bootCPUs
        self.repeatCount = repeatCount
        self.progress = progress
    }

    /// The default sweep up to `limit` CPUs: 1, 2, 4, … 1024, then 4096 where the limit allows it (the emulated
    /// backend; its run costs about as much as all the others together, so the sweep runs it once).
    public static func defaultPoints(limit: Int) -> [Int] {
        var points = BenchMath.powersOfTwo(upTo: min(limit, 1024))
        if limit >= 4096 { points.append(4096) }
        return points
    }

    /// The machine configuration of one point: console off, quiet, default hot-add, built-in firmware.
    public static func config(
        strategy: Strategy, maxCPUs: Int, bootCPUs: Int, backend: SMMBackendKind = .emulated
    ) -> MachineConfig {
        var c = MachineConfig()
        c.backend = backend
        c.strategy = strategy
        c.maxCPUs = maxCPUs
        c.bootCPUs = min(bootCPUs, maxCPUs)
        c.hotAdd = MachineConfig.defaultHotAdd(maxCPUs: maxCPUs, bootCPUs: c.bootCPUs)
        c.firmware = FirmwareImage.builtin
        c.console = false
        c.quiet = true
        return c
    }

    func note(_ s: String) {
        guard progress else { return }
        let line = "bench: " + s + "\n"
        // SAFETY: the C string lives for the closure; write(2) reads at most its UTF-8 length.
        _ = line.withCString { Glibc.write(STDERR_FILENO, $0, strlen($0)) }
    }

    public func run(kvm: KVM) throws -> BenchResults {
        note("measuring floors (KVM_RUN round trip, vCPU creation)…")
        let floors = try Floors.measure(kvm: kvm)
        note(
            String(
                format: "floors: KVM_RUN %.2f µs/exit, vCPU creation %.1f µs/vCPU", floors.kvmRunExitMicros,
                floors.vcpuCreationMicros))
        var results: [BenchStrategyResult] = []
        for strategy in strategies {
            var points: [BenchPoint] = []
            for n in maxCPUs {
                let config = Self.config(strategy: strategy, maxCPUs: n, bootCPUs: bootCPUs, backend: backend)
                try config.validate(kvmMaxVCPUs: kvm.maxVCPUs())
                var samples: [BenchSample] = []
                let runs = singleRunAbove.map { n > $0 } == true ? 1 : repeatCount
                for i in 0..<runs {
                    let report = try MiniVMMRunner.run(config, kvm: kvm)
                    let sample = BenchSample(report)
                    samples.append(sample)
                    note(
                        String(
                            format: "%@ max %d boot %d run %d/%d: %.3f s, relocation %@, %d SMIs, %d exits%@",
                            strategy.rawValue, n, config.bootCPUs, i + 1, runs, sample.total,
                            sample.relocation.map { String(format: "%.3f s", $0) } ?? "-", sample.smis, sample.exits,
                            sample.passed ? "" : " FAIL (\(sample.outcome))"))
                }
                points.append(BenchPoint(maxCPUs: n, bootCPUs: config.bootCPUs, samples: samples, floors: floors))
            }
            results.append(BenchStrategyResult(strategy: strategy, points: points))
        }
        return BenchResults(
            date: ISO8601DateFormatter().string(from: Date()), repeatCount: repeatCount, bootCPUs: bootCPUs,
            backend: backend,
            floors: floors, strategies: results)
    }

    /// Writes bench.json, bench.csv and bench.svg into `dir` (created if needed); returns their paths.
    public static func writeFiles(_ r: BenchResults, to dir: String) throws -> [String] {
        let url = URL(fileURLWithPath: dir, isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        let files: [(String, Data)] = [
            ("bench.json", try r.jsonData()),
            ("bench.csv", Data(BenchCSV.render(r).utf8)),
            ("bench.svg", Data(BenchSVG.render(r).utf8)),
        ]
        var paths: [String] = []
        for (name, data) in files {
            let f = url.appendingPathComponent(name)
            try data.write(to: f)
            paths.append(f.path)
        }
        return paths
    }
}
