// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge

#if canImport(Glibc)
    import Glibc
#endif

/// One variant's timing: the loop's cost is the run with `iterations` turns minus the run with one turn (same
/// image otherwise), so machine creation, boot and SMI entry/exit cancel out.
public struct SMMCodeTiming: Codable, Sendable, Equatable {
    public var variant: SMMCodeFirmware.Variant
    /// Instructions the timed loop executes (two per turn).
    public var instructions: Int
    /// Median seconds of the full runs, and of the one-turn runs.
    public var fullSeconds: Double
    public var baselineSeconds: Double
    /// Exits and extra ioctls of one full run (from its report).
    public var exits: Int
    public var extraIoctls: Int
    /// Seconds the loop itself took (never negative).
    public var loopSeconds: Double { max(fullSeconds - baselineSeconds, 0) }
    /// µs per instruction of the loop.
    public var microsPerInstruction: Double { loopSeconds * 1e6 / Double(max(instructions, 1)) }
}

/// The result of `minivmm bench --smm-code`.
public struct SMMCodeBenchResult: Codable, Sendable, Equatable {
    public var backend: String
    /// Median µs of a bare KVM_RUN round trip (guest `out` → userspace → guest) on this host.
    public var kvmRunExitMicros: Double
    public var timings: [SMMCodeTiming]

    /// The variant that runs the same code outside SMM.
    public static func reference(of variant: SMMCodeFirmware.Variant) -> SMMCodeFirmware.Variant? {
        switch variant {
        case .outside, .outsideLong: nil
        case .smmLong: .outsideLong
        case .smmReal, .smmProtected, .smmStepped: .outside
        }
    }

    /// `variant`'s loop time over the same loop outside SMM.
    public func ratio(_ variant: SMMCodeFirmware.Variant) -> Double? {
        guard let ref = Self.reference(of: variant), let base = timings.first(where: { $0.variant == ref }),
            base.loopSeconds > 0,
            let t = timings.first(where: { $0.variant == variant })
        else { return nil }
        return t.loopSeconds / base.loopSeconds
    }

    /// One line per variant, then the floor.
    public func render() -> String {
        var s = "SMM code speed (\(backend) backend): one loop, outside SMM and in SMI handlers\n"
        for t in timings {
            let ratio =
                ratio(t.variant).map { String(format: ", %.2fx %@", $0, Self.reference(of: t.variant)!.rawValue) } ?? ""
            let name = t.variant.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0)
            s += String(
                format: "  %@ %7d instructions: %.4f s (%.3f µs/instruction%@), %d exits, %d extra ioctls\n",
                name as NSString, t.instructions, t.loopSeconds, t.microsPerInstruction, ratio, t.exits,
                t.extraIoctls)
        }
        s += String(format: "  floor: bare KVM_RUN round trip %.2f µs\n", kvmRunExitMicros)
        return s
    }
}

/// `minivmm bench --smm-code`: the SMM code speed benchmark of issue 9, gap 5.
public struct SMMCodeBench: Sendable {
    public var instructions: Int
    public var repeatCount: Int
    public var backend: SMMBackendKind
    public var progress: Bool

    public init(instructions: Int = 100_000, repeatCount: Int = 3, backend: SMMBackendKind, progress: Bool) {
        self.instructions = instructions
        self.repeatCount = repeatCount
        self.backend = backend
        self.progress = progress
    }

    /// One machine: one CPU, the image, console off.
    public static func config(image: [UInt8], backend: SMMBackendKind) -> MachineConfig {
        var c = MachineConfig()
        c.maxCPUs = 1
        c.bootCPUs = 1
        c.firmware = image
        c.firmwareName = "smm-code-bench"
        c.backend = backend
        c.console = false
        c.quiet = true
        c.timeoutSeconds = 300
        return c
    }

    func note(_ s: String) {
        guard progress else { return }
        let line = "bench: " + s + "\n"
        // SAFETY: the C string lives for the closure; write(2) reads at most its UTF-8 length.
        _ = line.withCString { Glibc.write(STDERR_FILENO, $0, strlen($0)) }
    }

    /// Runs `image` once; throws unless the guest exited with status 1.
    func timedRun(_ image: [UInt8], kvm: KVM, what: String) throws -> (Double, RunReport) {
        let config = Self.config(image: image, backend: backend)
        try config.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        let t0 = BenchMath.now()
        let report = try MiniVMMRunner.run(config, kvm: kvm)
        let dt = BenchMath.now() - t0
        guard report.outcome == .completed, report.guestExitStatus == 1 else {
            throw MachineError.kvm(
                "smm-code bench \(what): \(report.outcome.rawValue) \(report.outcomeDetail), exit status \(report.guestExitStatus.map(String.init) ?? "none")"
            )
        }
        return (dt, report)
    }

    public func run(kvm: KVM) throws -> SMMCodeBenchResult {
        let floor = try Floors.measureExitRoundTrip(kvm: kvm, exitsPerBatch: 20_000, batches: 3)
        let turns = UInt32(clamping: max(instructions / 2, 1))
        var timings: [SMMCodeTiming] = []
        for variant in SMMCodeFirmware.Variant.allCases {
            let full = SMMCodeFirmware.benchImage(variant, iterations: turns)
            let one = SMMCodeFirmware.benchImage(variant, iterations: 1)
            var fulls: [Double] = []
            var ones: [Double] = []
            var last: RunReport?
            for i in 0..<repeatCount {
                let (b, _) = try timedRun(one, kvm: kvm, what: "\(variant.rawValue) baseline")
                let (f, r) = try timedRun(full, kvm: kvm, what: variant.rawValue)
                ones.append(b)
                fulls.append(f)
                last = r
                note(
                    String(
                        format: "%@ run %d/%d: %.4f s (one turn: %.4f s)", variant.rawValue, i + 1, repeatCount, f, b))
            }
            timings.append(
                SMMCodeTiming(
                    variant: variant, instructions: Int(turns) * 2, fullSeconds: BenchMath.median(fulls) ?? 0,
                    baselineSeconds: BenchMath.median(ones) ?? 0, exits: last?.counters.exits ?? 0,
                    extraIoctls: last?.counters.extraIoctls ?? 0))
        }
        return SMMCodeBenchResult(
            backend: backend.rawValue, kvmRunExitMicros: BenchMath.median(floor) ?? 0, timings: timings)
    }
}
