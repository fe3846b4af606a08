// SPDX-License-Identifier: MIT
import Foundation
import Testing

@testable import MiniVMM

/// The bench's pure parts on synthetic data: median, CSV, SVG. No timings are asserted.
struct BenchTests {
    static let floors = HostFloors(
        kvmRunExitMicros: 2, kvmRunBatchMicros: [2, 2.1, 1.9], exitsPerBatch: 20_000, vcpuCreationMicros: 50,
        vcpuCreationBatchMicros: [50, 49, 51], vcpusPerBatch: 256, kvmMaxVCPUs: 1024)

    static func results(strategies: [Strategy], cpus: [Int] = [1, 2, 4, 64, 1024]) -> BenchResults {
        let s = strategies.enumerated().map { i, strategy in
            BenchStrategyResult(
                strategy: strategy,
                points: cpus.map { n in
                    let samples = (0..<3).map { k in
                        BenchSample(
                            total: 0.01 * Double(n) * Double(i + 1) + 0.001 * Double(k), vcpuCreation: 1e-4 * Double(n),
                            relocation: 0.005 * Double(n), exits: 10 * n, extraIoctls: n, smis: n + 2,
                            passed: n != 64 || i == 0)
                    }
                    return BenchPoint(maxCPUs: n, bootCPUs: min(2, n), samples: samples, floors: floors)
                })
        }
        return BenchResults(date: "2025-01-01T00:00:00Z", repeatCount: 3, bootCPUs: 2, floors: floors, strategies: s)
    }

    @Test func medianOddEvenEmpty() {
        #expect(BenchMath.median([3, 1, 2]) == 2)
        #expect(BenchMath.median([4, 1, 3, 2]) == 2.5)
        #expect(BenchMath.median([7]) == 7)
        #expect(BenchMath.median([Double]()) == nil)
        #expect(BenchMath.median([nil, 5, nil, 1, 3] as [Double?]) == 3)
        #expect(BenchMath.median([nil, nil] as [Double?]) == nil)
    }

    @Test func powersOfTwoDefaultSweep() {
        #expect(BenchMath.powersOfTwo(upTo: 1024) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
        #expect(BenchMath.powersOfTwo(upTo: 710) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    }

    /// The default sweep: powers of two to 1024 under the kvm backend's KVM limit, and 4096 on top where the
    /// backend allows it (the emulated backend's model limit).
    @Test func defaultSweepAdds4096WhereTheBackendAllowsIt() {
        let upTo1024 = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        #expect(BenchSweep.defaultPoints(limit: 4096) == upTo1024 + [4096])
        #expect(BenchSweep.defaultPoints(limit: 1024) == upTo1024)
        #expect(BenchSweep.defaultPoints(limit: 2048) == upTo1024)
        #expect(BenchSweep.defaultPoints(limit: 710) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    }

    /// Host memory per CPU reaches the medians, the CSV and the table; a point run once is named in the table.
    @Test func hostMemoryAndSingleRunPointsAreShown() throws {
        let one = BenchSample(total: 6, vcpuCreation: 1, hostKiBPerPossibleCPU: 47.5, hostKiBPerVCPU: 23.75)
        let three = (0..<3).map {
            BenchSample(total: 1, vcpuCreation: 0.2, hostKiBPerPossibleCPU: 48 + Double($0), hostKiBPerVCPU: 24)
        }
        let points = [
            BenchPoint(maxCPUs: 1024, bootCPUs: 2, samples: three, floors: Self.floors),
            BenchPoint(maxCPUs: 4096, bootCPUs: 2, samples: [one], floors: Self.floors),
        ]
        let r = BenchResults(
            date: "2025-01-01T00:00:00Z", repeatCount: 3, bootCPUs: 2, floors: Self.floors,
            strategies: [BenchStrategyResult(strategy: .relocateAllAtBoot, points: points)])
        #expect(points[0].median.hostKiBPerPossibleCPU == 49)
        #expect(points[1].median.hostKiBPerVCPU == 23.75)
        let csv = BenchCSV.render(r).split(separator: "\n").map(String.init)
        #expect(csv[0].hasSuffix(",host_kib_per_possible_cpu,host_kib_per_vcpu"))
        #expect(csv[2].hasPrefix("relocate-all-at-boot,4096,2,1,true,"))
        #expect(csv[2].hasSuffix(",47.5,23.75"))
        let table = BenchTable.render(r)
        #expect(table.contains("relocate-all-at-boot (boot CPUs 2, median of 3 (1 at 4096)):"), "\(table)")
        #expect(table.contains("host KiB/CPU"))
        #expect(table.contains("47.5  PASS"), "\(table)")
    }

    @Test func pointRatiosFollowTheFloorModel() throws {
        let r = Self.results(strategies: [.relocateAllAtBoot], cpus: [1024])
        let p = try #require(r.strategies.first?.points.first)
        #expect(p.median.total == 0.01 * 1024 + 0.001)
        #expect(p.median.smis == 1026)
        let model = 1024 * (50 + 2 * 2) / 1e6
        #expect(abs(p.floorModelSeconds - model) < 1e-12)
        #expect(abs((p.ratioToFloor ?? 0) - p.median.total / model) < 1e-9)
        #expect(abs((p.relocationMicrosPerCPU ?? 0) - 5000) < 1e-6)
        #expect(abs((p.relocationExitFloorsPerCPU ?? 0) - 2500) < 1e-6)
    }

    @Test func csvHasHeaderAndOneRowPerStrategyAndPoint() {
        let r = Self.results(strategies: [.relocateAllAtBoot, .naive])
        let lines = BenchCSV.render(r).split(separator: "\n", omittingEmptySubsequences: true)
        #expect(lines.first.map(String.init) == BenchCSV.header)
        #expect(lines.count == 1 + 2 * 5)
        let columns = BenchCSV.header.split(separator: ",").count
        for line in lines { #expect(line.split(separator: ",", omittingEmptySubsequences: false).count == columns) }
        #expect(lines.contains { $0.hasPrefix("naive,64,2,3,false,") })
    }

    @Test func svgHasOnePolylinePerStrategyAndTheLegend() {
        let r = Self.results(strategies: [.relocateAllAtBoot, .naive, .hotplugSMBASERegister])
        let svg = BenchSVG.render(r)
        #expect(svg.hasPrefix("<?xml"))
        #expect(svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        #expect(svg.hasSuffix("</svg>\n"))
        #expect(svg.components(separatedBy: "<polyline").count - 1 == 3)
        #expect(svg.contains("minivmm: boot time vs max CPUs"))
        for s in r.strategies {
            #expect(svg.contains(">\(s.strategy.rawValue)</text>"))
            #expect(svg.contains("floor model (\(s.strategy.rawValue))"))
        }
        #expect(svg.contains("stroke-dasharray"))
        #expect(svg.contains(">1024</text>"))
    }

    @Test func log2XPositionsAreMonotonicAndEvenlySpaced() {
        let cpus = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        let d = BenchSVG.xDomain(cpus)
        let xs = cpus.map { BenchSVG.x($0, domain: d) }
        for (a, b) in zip(xs, xs.dropFirst()) { #expect(a < b) }
        let gaps = zip(xs, xs.dropFirst()).map { $1 - $0 }
        for g in gaps { #expect(abs(g - gaps[0]) < 1e-9) }
        #expect(BenchSVG.x(3, domain: d) > BenchSVG.x(2, domain: d))
        #expect(BenchSVG.x(3, domain: d) < BenchSVG.x(4, domain: d))
        // One point still gets a usable domain.
        let single = BenchSVG.xDomain([64])
        #expect(single.upperBound > single.lowerBound)
    }
}

/// `bench --smm-code`'s pure parts: ratios against the matching outside-SMM variant, and the printed lines.
struct SMMCodeBenchTests {
    static func timing(_ v: SMMCodeFirmware.Variant, _ full: Double, _ base: Double) -> SMMCodeTiming {
        SMMCodeTiming(
            variant: v, instructions: 100_000, fullSeconds: full, baselineSeconds: base, exits: 5, extraIoctls: 4)
    }

    @Test func ratiosUseTheMatchingReference() {
        let r = SMMCodeBenchResult(
            backend: "emulated", kvmRunExitMicros: 7.5,
            timings: [
                Self.timing(.outside, 0.15, 0.05), Self.timing(.smmReal, 0.25, 0.05),
                Self.timing(.outsideLong, 0.30, 0.10), Self.timing(.smmLong, 0.40, 0.10),
                Self.timing(.smmStepped, 2.05, 0.05),
            ])
        #expect(abs(r.ratio(.smmReal)! - 2.0) < 1e-9)
        #expect(abs(r.ratio(.smmLong)! - 1.5) < 1e-9)
        #expect(abs(r.ratio(.smmStepped)! - 20.0) < 1e-9)
        #expect(r.ratio(.outside) == nil)
        #expect(r.ratio(.smmProtected) == nil, "no timing for it")
        let text = r.render()
        #expect(text.contains("smm-real      100000 instructions: 0.2000 s (2.000 µs/instruction, 2.00x outside)"))
        #expect(text.contains("1.50x outside-long"))
        #expect(text.contains("floor: bare KVM_RUN round trip 7.50 µs"))
    }

    @Test func aNegativeDifferenceIsZero() {
        #expect(Self.timing(.smmReal, 0.01, 0.02).loopSeconds == 0)
    }
}
