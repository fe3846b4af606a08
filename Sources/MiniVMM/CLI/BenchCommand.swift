// SPDX-License-Identifier: MIT
import ArgumentParser
import Foundation
import GuestFirmware
import KVMBridge

#if canImport(Glibc)
    import Glibc
#endif

/// `minivmm bench`: measure the host floors, sweep max CPUs per strategy, write JSON, CSV and an SVG chart.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Sweep max CPUs per strategy and write timings (JSON, CSV, chart)",
        discussion: """
            Measures a bare KVM_RUN round trip and one vCPU creation first, then runs every point --repeat times \
            and reports medians and ratios to those floors. Example: sudo minivmm bench --max-cpus 1,16,256,1024
            """)

    @Option(
        name: .customLong("strategy"), parsing: .singleValue,
        help:
            "Strategy to sweep (repeatable, or all; default: every one the built-in firmware implements: \(BenchSweep.implementedStrategies.map(\.rawValue).joined(separator: ", ")))."
    )
    var strategySelections: [StrategySelection] = []

    /// The strategies named (`all` expands to every strategy).
    var strategies: [Strategy] {
        var list: [Strategy] = []
        for s in strategySelections.flatMap(\.strategies) where !list.contains(s) { list.append(s) }
        return list
    }

    @Option(
        name: .customLong("max-cpus"), parsing: .singleValue,
        help:
            "Max CPUs to sweep (repeatable or comma-separated; default: 1, 2, 4, … 1024, capped at this KVM's limit, and 4096 run once with the emulated backend)."
    )
    var maxCPUs: [String] = []

    @Option(name: .customLong("boot-cpus"), help: "CPUs kept after boot (capped at each point's max CPUs).")
    var bootCPUs = 2

    @Option(name: .customLong("repeat"), help: "Runs per point (the median is reported).")
    var repeatCount = 3

    @Option(name: .customLong("out"), help: "Directory for bench.json, bench.csv and bench.svg.")
    var out = "bench-out"

    @Option(
        help:
            "SMM backend of the sweep and of --smm-code: auto, emulated or kvm (auto: kvm where this KVM has SMM, as `minivmm caps` says)."
    )
    var smm: SMMBackendKind = .auto

    @Flag(help: "No progress lines on stderr.")
    var quiet = false

    @Flag(
        name: .customLong("smm-code"),
        help:
            "Instead of the sweep: time one loop outside SMM and inside SMI handlers (real mode; 32-bit protected mode with its own IDT) and print the ratios."
    )
    var smmCode = false

    @Option(name: .customLong("smm-instructions"), help: "Instructions of the --smm-code loop.")
    var smmInstructions = 100_000

    func validate() throws {
        for s in strategies where !BenchSweep.implementedStrategies.contains(s) {
            throw ValidationError(
                "strategy \(s.rawValue) is not implemented by the built-in firmware (available: \(BenchSweep.implementedStrategies.map(\.rawValue).joined(separator: ", ")))."
            )
        }
        if repeatCount < 1 { throw ValidationError("--repeat must be at least 1 (got \(repeatCount))") }
        if bootCPUs < 1 { throw ValidationError("--boot-cpus must be at least 1 (got \(bootCPUs))") }
        if smmInstructions < 2 || smmInstructions > 1 << 31 {
            throw ValidationError("--smm-instructions must be in 2...\(1 << 31) (got \(smmInstructions))")
        }
        _ = try parsedMaxCPUs()
    }

    /// The explicit --max-cpus values, sorted and deduplicated (nil: use the default sweep).
    func parsedMaxCPUs() throws -> [Int]? {
        if maxCPUs.isEmpty { return nil }
        var list: [Int] = []
        for item in maxCPUs.flatMap({ $0.split(separator: ",", omittingEmptySubsequences: false) }) {
            guard let n = Int(item.trimmingCharacters(in: .whitespaces)), n >= 1, n <= Int(MINIVMM_MAX_CPUS_LIMIT)
            else {
                throw ValidationError("--max-cpus expects positive CPU counts, got '\(item)'")
            }
            list.append(n)
        }
        return Array(Set(list)).sorted()
    }

    func run() throws {
        let kvm: KVM
        do { kvm = try KVM() } catch { throw MachineError.kvm(error.description) }
        if smmCode {
            let bench = SMMCodeBench(
                instructions: smmInstructions, repeatCount: repeatCount,
                backend: try BackendChoice.choose(requested: smm, kvm: kvm).kind, progress: !quiet)
            print(try bench.run(kvm: kvm).render(), terminator: "")
            return
        }
        let backend = try BackendChoice.choose(requested: smm, kvm: kvm).kind
        // The kvm backend holds every CPU in one KVM VM; the emulated one spreads them over several (VCPUShards).
        let limit = backend == .kvm ? min(kvm.maxVCPUs(), MachineConfig.modelMaxCPUs) : MachineConfig.modelMaxCPUs
        let points: [Int]
        var singleRunAbove: Int?
        if let explicit = try parsedMaxCPUs() {
            if let big = explicit.first(where: { $0 > limit }) {
                throw ValidationError(
                    backend == .kvm
                        ? "--max-cpus \(big) exceeds this host's KVM limit of \(limit) vCPUs per VM (KVM_CAP_MAX_VCPUS), which binds the kvm backend"
                        : MachineConfig.aboveModelLimit(big))
            }
            points = explicit
        } else {
            points = BenchSweep.defaultPoints(limit: limit)
            singleRunAbove = 1024
        }
        var sweep = BenchSweep(
            strategies: strategies.isEmpty ? BenchSweep.implementedStrategies : strategies, maxCPUs: points,
            bootCPUs: bootCPUs, repeatCount: repeatCount, progress: !quiet, backend: backend)
        sweep.singleRunAbove = singleRunAbove
        let results = try sweep.run(kvm: kvm)
        let files: [String]
        do { files = try BenchSweep.writeFiles(results, to: out) } catch {
            throw ValidationError("cannot write to --out \(out): \(error.localizedDescription)")
        }
        print(BenchTable.render(results), terminator: "")
        print("wrote \(files.joined(separator: ", "))")
        if !results.allPassed {
            let line = "minivmm: bench: some points failed (see bench.json)\n"
            // SAFETY: the C string lives for the closure; write(2) reads at most its UTF-8 length.
            _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
            throw ExitCode(1)
        }
    }
}
