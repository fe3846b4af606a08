// SPDX-License-Identifier: MIT
import Firmware
import Foundation
import KVMBridge
import Testing

@testable import MiniVMM

/// Every bad input becomes one readable line that names the offending value (DESIGN.md §7), before any KVM work.
struct BadInputTests {
    /// A configuration that validates on a host allowing 1024 vCPUs; each test breaks one thing.
    static func good() -> MachineConfig {
        var c = MachineConfig()
        c.maxCPUs = 8
        c.bootCPUs = 2
        c.hotAdd = MachineConfig.defaultHotAdd(maxCPUs: 8, bootCPUs: 2)
        c.firmware = FirmwareImage.builtin
        return c
    }

    /// Runs `validate` and returns the error it must throw.
    static func validationError(_ c: MachineConfig, kvmMaxVCPUs: Int = 1024) -> MachineError? {
        do {
            try c.validate(kvmMaxVCPUs: kvmMaxVCPUs)
            return nil
        } catch {
            return error
        }
    }

    /// One line, not empty, and it names every one of `values`.
    static func expectOneLine(
        _ e: MachineError?, naming values: [String], sourceLocation: SourceLocation = #_sourceLocation
    ) {
        guard let e else {
            Issue.record("no error thrown", sourceLocation: sourceLocation)
            return
        }
        let d = e.description
        #expect(!d.isEmpty, sourceLocation: sourceLocation)
        #expect(!d.contains("\n"), "\(d)", sourceLocation: sourceLocation)
        #expect(d.count < 200, "\(d)", sourceLocation: sourceLocation)
        for v in values { #expect(d.contains(v), "'\(d)' does not name \(v)", sourceLocation: sourceLocation) }
    }

    @Test func theBaseConfigurationIsValid() throws {
        try Self.good().validate(kvmMaxVCPUs: 1024)
    }

    @Test func maxCPUsZero() {
        var c = Self.good()
        c.maxCPUs = 0
        let e = Self.validationError(c)
        #expect(e == .invalidConfiguration("--max-cpus must be at least 1 (got 0)"))
        Self.expectOneLine(e, naming: ["--max-cpus", "0"])
    }

    /// The kvm backend holds every CPU in one VM (KVM's SMM, its in-kernel local APICs): KVM's per-VM limit binds.
    @Test(arguments: [1025, 4096])
    func maxCPUsAboveTheKVMLimitOnTheKVMBackend(maxCPUs: Int) {
        var c = Self.good()
        c.backend = .kvm
        c.maxCPUs = maxCPUs
        let e = Self.validationError(c, kvmMaxVCPUs: 1024)
        Self.expectOneLine(e, naming: ["--max-cpus", "\(maxCPUs)", "1024", "KVM_CAP_MAX_VCPUS", "kvm backend"])
    }

    /// The emulated backend spreads its vCPUs over several VMs: KVM's per-VM limit does not bind it, the model's does.
    @Test func maxCPUsAboveTheKVMLimitOnTheEmulatedBackend() throws {
        var c = Self.good()
        c.backend = .emulated
        c.maxCPUs = 4096
        try c.validate(kvmMaxVCPUs: 1024)
        c.vcpusPerVM = 4
        try c.validate(kvmMaxVCPUs: 1024)
    }

    @Test(arguments: [SMMBackendKind.emulated, .kvm])
    func maxCPUsAboveTheModelLimit(backend: SMMBackendKind) {
        var c = Self.good()
        c.backend = backend
        c.maxCPUs = 4097
        let e = Self.validationError(c, kvmMaxVCPUs: 8192)
        #expect(e == .invalidConfiguration(MachineConfig.aboveModelLimit(4097)))
        Self.expectOneLine(e, naming: ["--max-cpus", "4097", "4096", "TSEG"])
    }

    /// An injected per-VM limit must leave room for a vCPU; on the kvm backend it is that backend's limit.
    @Test func vcpusPerVMOverride() {
        var c = Self.good()
        c.vcpusPerVM = 0
        Self.expectOneLine(Self.validationError(c), naming: ["vCPUs per KVM VM", "0"])
        c.vcpusPerVM = 4
        c.backend = .kvm
        Self.expectOneLine(Self.validationError(c), naming: ["--max-cpus", "8", "4", "KVM_CAP_MAX_VCPUS"])
    }

    @Test func bootCPUsZero() {
        var c = Self.good()
        c.bootCPUs = 0
        c.hotAdd = []
        Self.expectOneLine(Self.validationError(c), naming: ["--boot-cpus", "0"])
    }

    @Test func bootCPUsAboveMax() {
        var c = Self.good()
        c.maxCPUs = 2
        c.bootCPUs = 3
        c.hotAdd = []
        Self.expectOneLine(Self.validationError(c), naming: ["--boot-cpus", "3", "--max-cpus", "2"])
    }

    @Test func ramTooSmallForTSEG() {
        var c = Self.good()
        c.ramBytes = 2 << 20
        let e = Self.validationError(c)
        Self.expectOneLine(e, naming: ["RAM", "2 MiB", "TSEG"])
    }

    @Test func firmwareEmpty() {
        var c = Self.good()
        c.firmware = []
        let e = Self.validationError(c)
        guard case .firmware = e else {
            Issue.record("expected a firmware error, got \(String(describing: e))")
            return
        }
        Self.expectOneLine(e, naming: ["firmware", "empty"])
    }

    @Test func firmwareNotAMultipleOf4KiB() {
        var c = Self.good()
        c.firmware = [UInt8](repeating: 0xF4, count: 100)
        Self.expectOneLine(Self.validationError(c), naming: ["100 bytes", "4 KiB"])
    }

    @Test func firmwareLargerThan8MiB() {
        var c = Self.good()
        c.firmware = [UInt8](repeating: 0xF4, count: 9 << 20)
        Self.expectOneLine(Self.validationError(c), naming: ["\(9 << 20) bytes", "8 MiB"])
    }

    @Test func firmwareOfExactly8MiBIsAccepted() throws {
        var c = Self.good()
        c.firmware = [UInt8](repeating: 0xF4, count: 8 << 20)
        try c.validate(kvmMaxVCPUs: 1024)
    }

    @Test(arguments: [1, 8, -1, 100])
    func hotAddOutsideTheRemovedCPUs(cpu: Int) {
        var c = Self.good()
        c.hotAdd = [cpu]
        Self.expectOneLine(Self.validationError(c), naming: ["--hot-add", "\(cpu)", "2...7"])
    }

    @Test func duplicateHotAdd() {
        var c = Self.good()
        c.hotAdd = [3, 3]
        Self.expectOneLine(Self.validationError(c), naming: ["--hot-add"])
    }

    /// `--tseg-mib` smaller than the built-in firmware's per-CPU tiles need is bad input, before any KVM work.
    @Test func explicitTSEGTooSmallForMaxCPUs() {
        var c = Self.good()
        c.maxCPUs = 1024
        c.hotAdd = []
        c.tsegMiB = 1
        Self.expectOneLine(Self.validationError(c), naming: ["--tseg-mib", "1", "1024"])
    }

    @Test func loadFirmwareOnAMissingPath() {
        let path = "/nonexistent/minivmm-\(UUID().uuidString).fd"
        do {
            _ = try MachineConfig.loadFirmware(path: path)
            Issue.record("loading \(path) succeeded")
        } catch {
            Self.expectOneLine(error, naming: [path, "does not exist"])
        }
    }
}

extension BadInputTests {
    /// The same bad inputs through the real binary: exit non-zero, and stderr is exactly one `minivmm: error:` line.
    @Suite(
        .serialized,
        .enabled(
            if: ProcessInfo.processInfo.environment["CI"] == "true" || KVM.isAvailable,
            "needs an openable /dev/kvm (run as root or in the kvm group); CI=true forces these tests"))
    struct CLI {
        /// A temporary file of `count` bytes, removed by the caller.
        static func tempFile(bytes count: Int) throws -> URL {
            let url = FileManager.default.temporaryDirectory.appendingPathComponent(
                "minivmm-fw-\(UUID().uuidString).fd")
            try Data(repeating: 0xF4, count: count).write(to: url)
            return url
        }

        static func expectOneLineError(
            _ arguments: [String], mentioning needle: String? = nil, sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            let r = try MiniVMMBinary.run(arguments)
            #expect(r.status != 0, "\(arguments) exited 0", sourceLocation: sourceLocation)
            let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: false)
            #expect(
                lines.count == 2 && lines[1].isEmpty && lines[0].hasPrefix("minivmm: error: "),
                "\(arguments) stderr: \(r.stderr)", sourceLocation: sourceLocation)
            if let needle {
                #expect(r.stderr.contains(needle), "\(arguments) stderr: \(r.stderr)", sourceLocation: sourceLocation)
            }
        }

        @Test(
            arguments: [
                (["run", "--max-cpus", "0"], "0"),
                (["run", "--max-cpus", "5000"], "5000"),
                (["run", "--boot-cpus", "3", "--max-cpus", "2"], "3"),
                (["run", "--memory", "2"], "2 MiB"),
                (["run", "--firmware", "/nonexistent"], "/nonexistent"),
                (["run", "--strategy", "bogus"], "bogus"),
                (["run", "--smm", "kvm"], "kvm"),
                (["run", "--hot-add", "0", "--max-cpus", "4"], "--hot-add 0"),
                (["run", "--attacks", "smash"], "smash"),
                (["run", "--attack", "--max-cpus", "2", "--boot-cpus", "2"], "--boot-cpus"),
                (["run", "--attack", "--firmware", "/dev/null"], "built-in firmware"),
                (["run", "--firmware", "builtin:bogus"], "builtin:bogus"),
                (["run", "--strategy", "all", "--attack", "--hotplug-reset"], "--hotplug-reset"),
                (["bench", "--strategy", "Z"], "Z"),
                (["run", "--max-cpus", "9223372036854775807"], "9223372036854775807"),
                (["run", "--max-cpus=-5", "--boot-cpus=-9223372036854775808"], "-5"),
                (["run", "--max-cpus", "-1"], "got -1"),
                (["run", "--boot-cpus", "-9223372036854775808"], "-9223372036854775808"),
                (["run", "--timeout", "nan"], "nan"),
                (["run", "--timeout", "inf"], "inf"),
                (["run", "--hot-add", "0", "--max-cpus", "1"], "no CPU is left"),
                (["run", "--hot-add", ""], "''"),
                (["run", "--firmware", "/tmp"], "is a directory"),
                (["run", "--json", "/nonexistent-dir/r.json"], "--json /nonexistent-dir/r.json"),
                (["run", "--json", "/tmp"], "is a directory"),
                (["compare", "--limit=-9223372036854775808", "a", "b"], "--limit"),
                (["compare", "--limit=-5", "a", "b"], "--limit"),
                (["bench", "--max-cpus", ""], "''"),
                (["run", "--hot-remove", "0"], "--hot-remove 0"),
                (["run", "--hot-remove", "5", "--max-cpus", "8"], "--hot-remove 5"),
            ])
        func badArguments(arguments: [String], needle: String) throws {
            try Self.expectOneLineError(arguments, mentioning: needle)
        }

        @Test(arguments: [0, 100, 9 << 20])
        func badFirmwareFile(bytes: Int) throws {
            let url = try Self.tempFile(bytes: bytes)
            defer { try? FileManager.default.removeItem(at: url) }
            try Self.expectOneLineError(["run", "--firmware", url.path], mentioning: url.path)
        }

        @Test func quietPassingRunPrintsPASS() throws {
            let r = try MiniVMMBinary.run(["run", "--max-cpus", "8", "--quiet", "--timeout", "120"])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            #expect(r.stdout == "PASS\n")
        }

        @Test func quietNaiveRunFailsItsInvariantWithStatus1() throws {
            let r = try MiniVMMBinary.run(["run", "--strategy", "N", "--max-cpus", "4", "--quiet", "--timeout", "120"])
            #expect(r.status == 1, "stdout: \(r.stdout) stderr: \(r.stderr)")
            #expect(r.stdout.hasPrefix("FAIL"))
        }

        @Test func quietMatrixIsAsExpected() throws {
            let r = try MiniVMMBinary.run([
                "run", "--strategy", "all", "--attacks", "plant,dma", "--max-cpus", "4", "--quiet", "--timeout", "120",
            ])
            #expect(r.status == 0, "stdout: \(r.stdout) stderr: \(r.stderr)")
            #expect(r.stdout == "PASS\n")
        }

        @Test func sigintStopsTheRunAndWritesTheReport() throws {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("sigint-\(UUID().uuidString).json")
            defer { try? FileManager.default.removeItem(at: path) }
            // A firmware that never finishes: the run would last until --timeout.
            let fw = FileManager.default.temporaryDirectory.appendingPathComponent("spin-\(UUID().uuidString).bin")
            defer { try? FileManager.default.removeItem(at: fw) }
            var image = [UInt8](repeating: 0xF4, count: 4096)
            image.replaceSubrange(0xFF0..<0xFF2, with: [0xEB, 0xFE])  // jmp $
            try Data(image).write(to: fw)
            let r = try MiniVMMBinary.run(
                ["run", "--firmware", fw.path, "--max-cpus", "1", "--timeout", "60", "--json", path.path, "--quiet"],
                signal: SIGINT, after: 0.5)
            #expect(r.status == 130, "stdout: \(r.stdout) stderr: \(r.stderr)")
            #expect(r.stdout == "FAIL: interrupted\n")
            let report = try ReportComparison.load(path: path.path)
            #expect(report.outcome == .interrupted)
        }

        @Test func aMemoryLimitTooSmallIsOneLineAndStatus3() throws {
            // ulimit -v 600 MiB cannot hold 1024 vCPU threads: refused up front instead of an abort half way.
            let r = try MiniVMMBinary.run(
                [
                    "/bin/sh", "-c", "ulimit -v 600000 && exec \"$0\" run --max-cpus 1024 --quiet",
                ], viaShell: true)
            #expect(r.status == 3, "stdout: \(r.stdout) stderr: \(r.stderr)")
            #expect(r.stderr.hasPrefix("minivmm: error: the address-space limit (ulimit -v)"), "\(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1)
        }

        @Test func versionIsKnown() throws {
            let r = try MiniVMMBinary.run(["--version"])
            #expect(r.status == 0 && r.stdout.hasPrefix("minivmm "))
        }

        @Test func quietHotplugResetRunFailsWithStatus1() throws {
            let r = try MiniVMMBinary.run(["run", "--max-cpus", "8", "--hotplug-reset", "--quiet", "--timeout", "120"])
            #expect(r.status == 1, "stdout: \(r.stdout) stderr: \(r.stderr)")
            #expect(r.stdout.hasPrefix("FAIL"))
        }
    }
}
