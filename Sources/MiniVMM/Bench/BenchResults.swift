// SPDX-License-Identifier: MIT
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Small numeric helpers of the bench (pure).
public enum BenchMath {
    /// The median (mean of the middle two for an even count); nil when empty.
    public static func median(_ xs: [Double]) -> Double? {
        guard !xs.isEmpty else { return nil }
        let s = xs.sorted()
        let m = s.count / 2
        return s.count % 2 == 1 ? s[m] : (s[m - 1] + s[m]) / 2
    }

    /// The median of the non-nil values; nil when there are none.
    public static func median(_ xs: [Double?]) -> Double? { median(xs.compactMap { $0 }) }

    /// Monotonic seconds.
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// 1, 2, 4, … up to `limit` (and `limit` itself is not added when it is not a power of two).
    public static func powersOfTwo(upTo limit: Int) -> [Int] {
        var out: [Int] = []
        var n = 1
        while n <= limit {
            out.append(n)
            n *= 2
        }
        return out
    }
}

/// One run of one point.
public struct BenchSample: Codable, Sendable, Equatable {
    public var total: Double
    public var vcpuCreation: Double
    public var apBringUp: Double?
    public var relocation: Double?
    public var hotRemove: Double?
    public var hotAdd: Double?
    public var exits: Int
    public var extraIoctls: Int
    public var smis: Int
    /// The run completed and every invariant showed what the strategy table expects (naive fails invariant 3).
    public var passed: Bool
    public var outcome: String
    /// The run's host memory (`HostUsage`): resident growth per possible CPU and per KVM vCPU, KiB.
    public var hostKiBPerPossibleCPU: Double?
    public var hostKiBPerVCPU: Double?

    public init(
        total: Double, vcpuCreation: Double, apBringUp: Double? = nil, relocation: Double? = nil,
        hotRemove: Double? = nil, hotAdd: Double? = nil, exits: Int = 0, extraIoctls: Int = 0, smis: Int = 0,
        passed: Bool = true, outcome: String = "completed", hostKiBPerPossibleCPU: Double? = nil,
        hostKiBPerVCPU: Double? = nil
    ) {
        self.total = total
        self.vcpuCreation = vcpuCreation
        self.apBringUp = apBringUp
        self.relocation = relocation
        self.hotRemove = hotRemove
        self.hotAdd = hotAdd
        self.exits = exits
        self.extraIoctls = extraIoctls
        self.smis = smis
        self.passed = passed
        self.outcome = outcome
        self.hostKiBPerPossibleCPU = hostKiBPerPossibleCPU
        self.hostKiBPerVCPU = hostKiBPerVCPU
    }

    /// `total` is what a user waits for: the runner's whole span, VM teardown included (`timings.wall`).
    public init(_ r: RunReport) {
        self.init(
            total: r.timings.wall ?? r.timings.total, vcpuCreation: r.timings.vcpuCreation,
            apBringUp: r.timings.apBringUp,
            relocation: r.timings.relocation, hotRemove: r.timings.hotRemove, hotAdd: r.timings.hotAdd,
            exits: r.counters.exits, extraIoctls: r.counters.extraIoctls, smis: r.counters.smis,
            passed: r.asExpected, outcome: r.outcome.rawValue, hostKiBPerPossibleCPU: r.host?.perPossibleCPUKiB,
            hostKiBPerVCPU: r.host?.perVCPUKiB)
    }
}

/// Medians over a point's samples (seconds; counters as medians too, so possibly fractional).
public struct BenchMedians: Codable, Sendable, Equatable {
    public var total: Double
    public var vcpuCreation: Double
    public var apBringUp: Double?
    public var relocation: Double?
    public var hotRemove: Double?
    public var hotAdd: Double?
    public var exits: Double
    public var extraIoctls: Double
    public var smis: Double
    public var hostKiBPerPossibleCPU: Double?
    public var hostKiBPerVCPU: Double?

    public init(_ s: [BenchSample]) {
        total = BenchMath.median(s.map(\.total)) ?? 0
        vcpuCreation = BenchMath.median(s.map(\.vcpuCreation)) ?? 0
        apBringUp = BenchMath.median(s.map(\.apBringUp))
        relocation = BenchMath.median(s.map(\.relocation))
        hotRemove = BenchMath.median(s.map(\.hotRemove))
        hotAdd = BenchMath.median(s.map(\.hotAdd))
        exits = BenchMath.median(s.map { Double($0.exits) }) ?? 0
        extraIoctls = BenchMath.median(s.map { Double($0.extraIoctls) }) ?? 0
        smis = BenchMath.median(s.map { Double($0.smis) }) ?? 0
        hostKiBPerPossibleCPU = BenchMath.median(s.map(\.hostKiBPerPossibleCPU))
        hostKiBPerVCPU = BenchMath.median(s.map(\.hostKiBPerVCPU))
    }
}

/// One (strategy, max CPUs) point: medians, raw samples and the ratios to the floors.
public struct BenchPoint: Codable, Sendable, Equatable {
    public var maxCPUs: Int
    public var bootCPUs: Int
    /// Every sample completed with all invariants holding.
    public var passed: Bool
    public var median: BenchMedians
    public var samples: [BenchSample]
    /// maxCPUs × (vCPU-creation floor + 2 × exit floor), seconds (`HostFloors.modelSeconds`).
    public var floorModelSeconds: Double
    /// median total / floorModelSeconds.
    public var ratioToFloor: Double?
    /// median relocation / maxCPUs, µs.
    public var relocationMicrosPerCPU: Double?
    /// relocationMicrosPerCPU / the `KVM_RUN` floor.
    public var relocationExitFloorsPerCPU: Double?

    public init(maxCPUs: Int, bootCPUs: Int, samples: [BenchSample], floors: HostFloors) {
        self.maxCPUs = maxCPUs
        self.bootCPUs = bootCPUs
        self.samples = samples
        passed = !samples.isEmpty && samples.allSatisfy(\.passed)
        median = BenchMedians(samples)
        floorModelSeconds = floors.modelSeconds(maxCPUs: maxCPUs)
        ratioToFloor = floorModelSeconds > 0 ? median.total / floorModelSeconds : nil
        relocationMicrosPerCPU = median.relocation.map { $0 * 1e6 / Double(max(maxCPUs, 1)) }
        relocationExitFloorsPerCPU = relocationMicrosPerCPU.flatMap {
            floors.kvmRunExitMicros > 0 ? $0 / floors.kvmRunExitMicros : nil
        }
    }
}

/// One strategy's sweep.
public struct BenchStrategyResult: Codable, Sendable, Equatable {
    public var strategy: Strategy
    public var points: [BenchPoint]

    public init(strategy: Strategy, points: [BenchPoint]) {
        self.strategy = strategy
        self.points = points
    }
}

/// Everything `bench.json` holds.
public struct BenchResults: Codable, Sendable, Equatable {
    public var tool = "minivmm bench"
    public var date: String
    public var repeatCount: Int
    public var bootCPUs: Int
    /// The SMM backend every point ran on (`emulated` or `kvm`).
    public var backend: SMMBackendKind
    public var floors: HostFloors
    public var strategies: [BenchStrategyResult]

    public init(
        date: String, repeatCount: Int, bootCPUs: Int, backend: SMMBackendKind = .emulated, floors: HostFloors,
        strategies: [BenchStrategyResult]
    ) {
        self.date = date
        self.backend = backend
        self.repeatCount = repeatCount
        self.bootCPUs = bootCPUs
        self.floors = floors
        self.strategies = strategies
    }

    public var allPassed: Bool { strategies.allSatisfy { $0.points.allSatisfy(\.passed) } }

    public func jsonData() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try e.encode(self)
    }
}
