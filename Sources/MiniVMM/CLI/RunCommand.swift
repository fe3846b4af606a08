// SPDX-License-Identifier: MIT
import ArgumentParser
import Firmware
import Foundation
import GuestFirmware
import KVMBridge

#if canImport(Glibc)
    import Glibc
#endif

extension Strategy: ExpressibleByArgument {}
extension Attack: ExpressibleByArgument {}

/// `--strategy`: one strategy (by name or letter) or `all`.
enum StrategySelection: ExpressibleByArgument, Equatable {
    case one(Strategy)
    case all

    init?(argument: String) {
        let a = argument.lowercased()
        if a == "all" {
            self = .all
        } else if let s = Strategy(rawValue: a) ?? Strategy.allCases.first(where: { $0.spec.letter.lowercased() == a })
        {
            self = .one(s)
        } else {
            return nil
        }
    }

    static var allValueStrings: [String] { Strategy.allCases.map(\.rawValue) + ["all"] }
    /// How `--help` shows the value: the strategy's name (or `all`), as it is typed.
    var defaultValueDescription: String {
        switch self {
        case .one(let s): s.rawValue
        case .all: "all"
        }
    }
    var strategies: [Strategy] {
        switch self {
        case .one(let s): [s]
        case .all: Strategy.allCases
        }
    }
}

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

    // Numeric options parse `.unconditional`: `--max-cpus -1` is the value -1 (then refused with its range), not a
    // missing value followed by an unknown option.
    @Option(
        name: .customLong("max-cpus"), parsing: .unconditional,
        help:
            "Possible CPUs (all present at boot, then hot-removed down to --boot-cpus): up to 4096 with --smm emulated (over several KVM VMs), up to KVM_CAP_MAX_VCPUS with --smm kvm."
    )
    var maxCPUs = 8

    @Option(
        name: .customLong("boot-cpus"), parsing: .unconditional,
        help: "CPUs kept after boot (default: 2, or 1 when --max-cpus is 1).")
    var bootCPUs: Int?

    @Option(
        parsing: .unconditionalSingleValue,
        help:
            "CPU to hot-add after boot (repeatable or comma-separated; default: the first removed, a middle one and the highest)."
    )
    var hotAdd: [String] = []

    @Option(
        parsing: .unconditionalSingleValue,
        help: "CPU to hot-remove after the hot-adds (repeatable or comma-separated; strategy C ejects it from SMM).")
    var hotRemove: [String] = []

    @Flag(help: "Hot-add RESETs the CPU as QEMU does (SMBASE back to 0x30000): strategy A must then fail invariant 2.")
    var hotplugReset = false

    @Flag(
        help:
            "kvm backend: also catch SMM entry with a hardware breakpoint at SMBASE+0x8000 (replaces the guest's own DR0-DR3 breakpoints)."
    )
    var smmEntryBreakpoint = false

    @Flag(
        inversion: .prefixedNo,
        help: ArgumentHelp(
            "kvm backend: single-step SMM code from a session's first exit to its RSM (exact per-SMI SMBASEs).",
            discussion: """
                --no-smm-stepping observes SMIs at exit granularity only (KVM's SMM flag, MSR 0x9E and MSR_SMI_COUNT \
                at every exit): for firmware whose SMM code is too long to step, such as OVMF's. SMIs that enter and \
                leave between two exits are then counted and reported unobservable, never guessed.
                """))
    var smmStepping = true

    @Option(
        help: """
            SMBASE strategy: \(Strategy.allCases.map { "\($0.rawValue) (\($0.spec.letter))" }.joined(separator: ", ")), \
            or all (runs each and prints the matrix).
            """)
    var strategy: StrategySelection = .one(.relocateAllAtBoot)

    @Flag(help: "Attack every hot-add with each attack (or those of --attacks) and print the attack matrix.")
    var attack = false

    @Option(
        name: .customLong("attacks"), parsing: .singleValue,
        help:
            "Attacks to run (repeatable or comma-separated): \(Attack.allCases.map(\.rawValue).joined(separator: ", "))."
    )
    var attacks: [String] = []

    @Option(help: "SMM backend: auto, emulated or kvm.")
    var smm: SMMBackendKind = .auto

    @Option(
        help: """
            Flat firmware image to run instead of the built-in one (as QEMU's -bios), or a built-in image: \
            builtin (the default scenario firmware), builtin:noprobe (the same without its SMM entry probe, as a \
            foreign firmware's handlers), builtin:conformance (SMM conformance checks), \
            builtin:conformance-noprobe (the same without its SMM entry probe) or builtin:conformance-badrsm (ends \
            with an invalid RSM, which shuts the machine down).
            """)
    var firmware: String?

    @Flag(
        help: """
            The --firmware FILE is stock firmware (SeaBIOS, OVMF): run it on QEMU's q35 as it expects it (no minivmm \
            report/probe ports at 0x600/0x604, APM SMIs gated by SMI_EN) and report findings (who was relocated \
            where, SMRAM closed/locked and when) instead of judging the built-in firmware's invariants.
            """)
    var stock = false

    @Option(
        help: ArgumentHelp(
            """
            Stock firmware as QEMU's -drive if=pflash,unit=0/1: CODE (read-only) ends at 4 GiB, VARS (writable, \
            in memory unless --pflash-persist) lies below it, both CFI flashes (cfi.pflash01). Implies --stock.
            """,
            valueName: "CODE,VARS"))
    var pflash: String?

    @Flag(help: "With --pflash: write the variable store's changes back to the VARS file.")
    var pflashPersist = false

    @Flag(
        inversion: .prefixedNo,
        help: "With --pflash: the flashes' secure property (only SMM may program them), as libvirt sets for OVMF.")
    var pflashSecure = true

    /// What `--firmware` names: nil (the built-in scenario firmware), a built-in image, or a file.
    func firmwareChoice() throws -> FirmwareKind {
        guard let name = firmware else { return .builtin }
        switch name {
        case "builtin", "builtin:default", "builtin:noprobe": return .builtin
        case "builtin:conformance", "builtin:conformance-noprobe", "builtin:conformance-badrsm": return .conformance
        default:
            if name.hasPrefix("builtin:") {
                throw ValidationError(
                    "unknown built-in firmware '\(name)' (choose builtin, builtin:default, builtin:noprobe, builtin:conformance, builtin:conformance-noprobe or builtin:conformance-badrsm)"
                )
            }
            return .file
        }
    }

    @Option(help: "Guest RAM in MiB.")
    var memory = 128

    @Option(
        name: .customLong("tseg-mib"),
        help: "TSEG size in MiB offered through Q35 register 0x50 (default: sized for --max-cpus).")
    var tsegMiB: Int?

    @Flag(help: "Hide long mode from the guest CPUID, so SMIs use the 32-bit (revision 0x00020000) save-state map.")
    var noLongMode = false

    @Option(parsing: .unconditional, help: "Seconds before the run is stopped and reported as a timeout.")
    var timeout: Double = 300

    @Option(
        help: ArgumentHelp(
            "End the run, completed, when the guest's debug console prints this text (e.g. SeaBIOS's \"No bootable device\").",
            valueName: "TEXT"))
    var untilConsole: String?

    @Flag(
        help:
            "End the run, completed, once the firmware locked SMRAM (TSEG closed with D_LCK, and MCH 0x9C locked if it enabled it), e.g. for OVMF."
    )
    var untilSMRAMLocked = false

    @Option(
        help: ArgumentHelp(
            "Serve QMP on a Unix socket (as QEMU's -qmp unix:PATH,server=on,wait=off): a QMP client drives hotplug.",
            valueName: "unix:PATH"))
    var qmp: String?

    @Flag(help: "With --qmp: hold the guest until a QMP client connects.")
    var qmpWait = false

    @Flag(help: "With --qmp: run the scripted hot-remove/hot-add scenario too.")
    var qmpScripted = false

    @Option(help: "Write the report as JSON to this file.")
    var json: String?

    @Option(
        help:
            "Write JUnit XML to this file: one test case per invariant and attack verdict (per matrix cell with --strategy all --attack)."
    )
    var junit: String?

    @Flag(help: "Print only the result line and errors.")
    var quiet = false

    @Flag(help: "Trace every exit and SMM transition on stderr.")
    var trace = false

    func makeConfig() throws -> MachineConfig {
        var c = MachineConfig()
        // Ranges first: nothing below computes with a value it has not bounded.
        let limit = MachineConfig.modelMaxCPUs
        guard maxCPUs <= limit else { throw ValidationError(MachineConfig.aboveModelLimit(maxCPUs)) }
        guard maxCPUs >= 1 else {
            throw ValidationError("--max-cpus must be 1...\(limit) (got \(maxCPUs))")
        }
        if let b = bootCPUs, !(1...maxCPUs).contains(b) {
            throw ValidationError("--boot-cpus must be 1...\(maxCPUs), at most --max-cpus (got \(b))")
        }
        guard timeout.isFinite, timeout > 0, timeout <= 86400 else {
            throw ValidationError("--timeout must be a number of seconds in (0, 86400] (got \(timeout))")
        }
        c.maxCPUs = maxCPUs
        var kind = try firmwareChoice()
        if pflash != nil {
            guard firmware == nil else { throw ValidationError("--pflash replaces --firmware: give one of them") }
            kind = .file
        } else if pflashPersist {
            throw ValidationError("--pflash-persist needs --pflash CODE,VARS")
        }
        if stock || pflash != nil {
            guard kind == .file else {
                throw ValidationError("--stock describes a --firmware FILE, not a built-in image")
            }
            kind = .stock
            let attacks = try chosenAttacks()
            if !hotAdd.isEmpty || !hotRemove.isEmpty || hotplugReset || strategy == .all || !attacks.isEmpty {
                throw ValidationError(
                    "--stock runs the firmware alone: no --hot-add, --hot-remove, --hotplug-reset, --strategy all or --attack"
                )
            }
        }
        // The conformance firmware uses every CPU it is given at boot and drives no hotplug.
        let boot = bootCPUs ?? (kind == .conformance ? maxCPUs : min(2, maxCPUs))
        if kind == .conformance && (!hotAdd.isEmpty || !hotRemove.isEmpty || hotplugReset || qmp != nil) {
            throw ValidationError(
                "--firmware builtin:conformance runs no hotplug scenario: no --hot-add, --hot-remove, --hotplug-reset or --qmp"
            )
        }
        c.bootCPUs = boot
        c.hotplugReset = hotplugReset
        c.smmEntryBreakpoint = smmEntryBreakpoint
        c.smmStepping = smmStepping
        c.strategy = strategy.strategies[0]
        c.quiet = quiet
        c.trace = trace
        c.timeoutSeconds = timeout
        if let t = untilConsole {
            guard !t.isEmpty, t.utf8.count <= 256, !t.contains("\n") else {
                throw ValidationError("--until-console needs one line of 1...256 bytes")
            }
            c.untilConsole = t
        }
        c.untilSMRAMLocked = untilSMRAMLocked
        c.longMode = !noLongMode
        guard memory > 0, memory <= 3584 else { throw ValidationError("--memory must be 1...3584 MiB") }
        c.ramBytes = UInt64(memory) << 20
        if let t = tsegMiB {
            guard t > 0, t <= 1024 else { throw ValidationError("--tseg-mib must be 1...1024") }
            c.tsegMiB = UInt16(t)
        }
        var list: [Int] = []
        for item in hotAdd.flatMap({ $0.split(separator: ",", omittingEmptySubsequences: false) }) {
            guard let n = Int(item.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("--hot-add expects CPU numbers, got '\(item)'")
            }
            if boot == maxCPUs {
                throw ValidationError(
                    "--hot-add \(n): no CPU is left to hot-add when --boot-cpus equals --max-cpus (\(maxCPUs))")
            }
            list.append(n)
        }
        c.hotAdd =
            kind == .conformance || kind == .stock
            ? [] : hotAdd.isEmpty ? MachineConfig.defaultHotAdd(maxCPUs: maxCPUs, bootCPUs: boot) : list
        for item in hotRemove.flatMap({ $0.split(separator: ",", omittingEmptySubsequences: false) }) {
            guard let n = Int(item.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("--hot-remove expects CPU numbers, got '\(item)'")
            }
            c.hotRemove.append(n)
        }
        let chosen = try chosenAttacks()
        if !chosen.isEmpty {
            if kind != .builtin {
                throw ValidationError(
                    "--attack needs the built-in firmware: its OS loop performs the attacks (a --firmware image does not)"
                )
            }
            if c.hotAdd.isEmpty {
                throw ValidationError("--attack needs a hot-add to attack: --max-cpus must exceed --boot-cpus")
            }
        }
        if strategy == .all && chosen.isEmpty == false && hotplugReset {
            throw ValidationError("--hotplug-reset with the attack matrix: the matrix adds that row itself")
        }
        c.firmwareKind = kind
        switch kind {
        case .builtin:
            if firmware == "builtin:noprobe" {
                c.firmware = FirmwareImage.builtinNoProbe
                c.firmwareName = "builtin:noprobe"
            } else {
                c.firmware = FirmwareImage.builtin
            }
        case .conformance:
            if strategy == .all {
                throw ValidationError("--firmware builtin:conformance runs one machine, not --strategy all")
            }
            let name = firmware ?? "builtin:conformance"
            c.firmware = FirmwareImage.named(String(name.dropFirst("builtin:".count))) ?? FirmwareImage.conformance
            c.firmwareName = name
        case .file, .stock:
            if let spec = pflash {
                let parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                    throw ValidationError("--pflash expects CODE,VARS (two files), got '\(spec)'")
                }
                c.firmware = try MachineConfig.loadFirmware(path: parts[0])
                c.pflashVars = try MachineConfig.loadFirmware(path: parts[1])
                c.pflashVarsPath = parts[1]
                c.pflashPersist = pflashPersist
                c.pflashSecure = pflashSecure
                c.firmwareName = spec
                break
            }
            let path = firmware ?? ""
            c.firmware = try MachineConfig.loadFirmware(path: path)
            c.firmwareName = path
        }
        for s in strategy.strategies where kind == .builtin && !s.spec.builtinFirmware {
            throw ValidationError(
                "strategy \(s.rawValue) is not implemented by the built-in firmware (available: \(StrategySpec.implemented.map(\.rawValue).joined(separator: ", ")))"
            )
        }
        return c
    }

    /// The attacks asked for: every one with a bare --attack, else those listed in --attacks.
    func chosenAttacks() throws -> [Attack] {
        var list: [Attack] = []
        for item in attacks.flatMap({ $0.split(separator: ",") }) {
            let name = item.trimmingCharacters(in: .whitespaces)
            guard let a = Attack(rawValue: name) else {
                throw ValidationError(
                    "unknown attack '\(name)' (choose from \(Attack.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            if !list.contains(a) { list.append(a) }
        }
        if attack && list.isEmpty { list = Attack.allCases }
        return list
    }

    /// Whether the run prints the matrix rather than one report.
    var matrixMode: Bool { strategy == .all || attack || (try? chosenAttacks().count).map { $0 > 1 } == true }

    /// Prints the human text to stdout, or to stderr when the JSON report goes to stdout.
    func say(_ text: String, jsonOnStdout: Bool) {
        if jsonOnStdout {
            FileHandle.standardError.write(text.data(using: .utf8)!)
        } else {
            print(text, terminator: "")
        }
    }

    /// The --qmp address, validated (nil without --qmp).
    func qmpAddress() throws -> QMPAddress? {
        guard let qmp else {
            if qmpWait || qmpScripted { throw ValidationError("--qmp-wait and --qmp-scripted need --qmp") }
            return nil
        }
        if matrixMode {
            throw ValidationError("--qmp drives one machine: not with --strategy all or the attack matrix")
        }
        do { return try QMPAddress.parse(qmp) } catch { throw ValidationError(error.description) }
    }

    func run() throws {
        var config = try makeConfig()
        // The report destinations (--json, --junit) are checked and opened before any KVM work, and written
        // atomically after the run.
        let out = try json.map { try ReportFile(path: $0, option: "--json") }
        let junitOut = try junit.map { try ReportFile(path: $0, option: "--junit") }
        var written = false
        defer {
            if !written {
                out?.discard()
                junitOut?.discard()
            }
        }
        let qmpAddress = try qmpAddress()
        let kvm: KVM
        do { kvm = try KVM() } catch { throw MachineError.kvm(error.description) }
        config.backend = try BackendChoice.choose(requested: smm, kvm: kvm).kind
        try config.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        let jsonOnStdout = out?.isStandardOutput ?? false
        if matrixMode {
            let matrix = try AttackMatrixRunner.run(
                base: config, strategies: strategy.strategies, attacks: try chosenAttacks(), kvm: kvm,
                progress: { line in
                    if !quiet { FileHandle.standardError.write("[minivmm] \(line)\n".data(using: .utf8)!) }
                })
            written = true
            try out?.write(matrix.jsonData())
            try junitOut?.write(Data(JUnitReport.xml(matrix).utf8))
            say(
                quiet ? (matrix.asExpected ? "PASS\n" : "FAIL: unexpected matrix\n") : matrix.rendered,
                jsonOnStdout: jsonOnStdout)
            if let status = RunInterrupts.exitStatus { throw ExitCode(status) }
            if !matrix.asExpected { throw ExitCode(1) }
            return
        }
        config.attack = try chosenAttacks().first
        let report: RunReport
        if var address = qmpAddress {
            address.wait = address.wait || qmpWait
            let server: QMPServer
            do { server = try QMPServer(address: address) } catch { throw ValidationError(error.description) }
            report = try MiniVMMRunner.run(config, kvm: kvm, qmp: server, scripted: qmpScripted)
        } else {
            report = try MiniVMMRunner.run(config, kvm: kvm)
        }
        written = true
        try out?.write(report.jsonData())
        try junitOut?.write(Data(JUnitReport.xml(report).utf8))
        say(
            quiet ? (report.passed ? "PASS\n" : "FAIL: \(report.outcome.rawValue)\n") : report.summary,
            jsonOnStdout: jsonOnStdout)
        if report.outcome == .interrupted, let status = RunInterrupts.exitStatus { throw ExitCode(status) }
        if !report.passed { throw ExitCode(report.outcome == .completed || report.conformanceChecksFailed ? 1 : 2) }
    }
}
