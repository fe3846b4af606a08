// SPDX-License-Identifier: MIT
import ArgumentParser
import Firmware
import Foundation
import KVMBridge

#if canImport(Glibc)
    import Glibc
#endif

extension Strategy: ExpressibleByArgument {}

/// `minivmm run`: boot the firmware with every possible CPU, relocate, hot-remove, hot-add, and prove the
/// SMBASE invariants from what the VMM observed. Plain `minivmm` runs it with the demo defaults.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a scenario (the default: a ready demo on the built-in firmware).",
        discussion: """
            The VMM relocates nothing itself: it models SMM (or uses KVM's), watches every SMI entry and RSM, and \
            exits non-zero when an invariant fails. Example: sudo minivmm run --max-cpus 1024 --boot-cpus 2
            """)

    @Option(
        name: .customLong("max-cpus"),
        help: "Possible CPUs (all present at boot, then hot-removed down to --boot-cpus).")
    var maxCPUs = 8

    @Option(name: .customLong("boot-cpus"), help: "CPUs kept after boot (default: 2, or 1 when --max-cpus is 1).")
    var bootCPUs: Int?

    @Option(
        parsing: .singleValue,
        help:
            "CPU to hot-add after boot (repeatable or comma-separated; default: the first removed, a middle one and the highest)."
    )
    var hotAdd: [String] = []

    @Flag(help: "Hot-add RESETs the CPU as QEMU does (SMBASE back to 0x30000): strategy A must then fail invariant 2.")
    var hotplugReset = false

    @Option(help: "SMBASE strategy: \(Strategy.allCases.map(\.rawValue).joined(separator: ", ")).")
    var strategy: Strategy = .relocateAllAtBoot

    @Option(help: "SMM backend: auto, emulated or kvm.")
    var smm: SMMBackendKind = .auto

    @Option(help: "Flat firmware image to run instead of the built-in one (as QEMU's -bios).")
    var firmware: String?

    @Option(help: "Guest RAM in MiB.")
    var memory = 128

    @Option(
        name: .customLong("tseg-mib"),
        help: "TSEG size in MiB offered through Q35 register 0x50 (default: sized for --max-cpus).")
    var tsegMiB: Int?

    @Flag(help: "Hide long mode from the guest CPUID, so SMIs use the 32-bit (revision 0x00020000) save-state map.")
    var noLongMode = false

    @Option(help: "Seconds before the run is stopped and reported as a timeout.")
    var timeout: Double = 300

    @Option(help: "Write the report as JSON to this file.")
    var json: String?

    @Flag(help: "Print only the result line and errors.")
    var quiet = false

    @Flag(help: "Trace every exit and SMM transition on stderr.")
    var trace = false

    func makeConfig() throws -> MachineConfig {
        var c = MachineConfig()
        c.maxCPUs = maxCPUs
        let boot = bootCPUs ?? min(2, maxCPUs)
        c.bootCPUs = boot
        c.hotplugReset = hotplugReset
        c.strategy = strategy
        c.quiet = quiet
        c.trace = trace
        c.timeoutSeconds = timeout
        c.longMode = !noLongMode
        guard memory > 0, memory <= 3584 else { throw ValidationError("--memory must be 1...3584 MiB") }
        c.ramBytes = UInt64(memory) << 20
        if let t = tsegMiB {
            guard t > 0, t <= 1024 else { throw ValidationError("--tseg-mib must be 1...1024") }
            c.tsegMiB = UInt16(t)
        }
        var list: [Int] = []
        for item in hotAdd.flatMap({ $0.split(separator: ",") }) {
            guard let n = Int(item.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("--hot-add expects CPU numbers, got '\(item)'")
            }
            list.append(n)
        }
        c.hotAdd = hotAdd.isEmpty ? MachineConfig.defaultHotAdd(maxCPUs: maxCPUs, bootCPUs: boot) : list
        if let path = firmware {
            c.firmware = try MachineConfig.loadFirmware(path: path)
            c.firmwareName = path
        } else {
            c.firmware = FirmwareImage.builtin
        }
        if strategy != .relocateAllAtBoot && firmware == nil {
            throw ValidationError(
                "strategy \(strategy.rawValue) is not implemented by the built-in firmware yet (available: relocate-all-at-boot)"
            )
        }
        return c
    }

    func run() throws {
        var config = try makeConfig()
        let kvm: KVM
        do { kvm = try KVM() } catch { throw MachineError.kvm(error.description) }
        try config.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        config.backend = try BackendChoice.choose(requested: smm, kvm: kvm).kind
        let report = try MiniVMMRunner.run(config, kvm: kvm)
        if let path = json {
            do {
                try report.jsonData().write(to: URL(fileURLWithPath: path))
            } catch {
                throw ValidationError("cannot write --json \(path): \(error.localizedDescription)")
            }
        }
        if quiet {
            print(report.passed ? "PASS" : "FAIL: \(report.outcome.rawValue)")
        } else {
            print(report.summary, terminator: "")
        }
        if !report.passed { throw ExitCode(report.outcome == .completed ? 1 : 2) }
    }
}
