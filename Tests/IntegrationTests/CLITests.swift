// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge
import Testing

/// Runs the built `minivmm` binary as a user would.
///
/// Where the binary is: SwiftPM links every product of a configuration into one directory
/// (`.build/<triple>/<debug|release>/`), and the test runner (`minivmmPackageTests.xctest`) is an executable in
/// that same directory, so the binary is the sibling of `/proc/self/exe`. Unlike a `#filePath`-relative
/// `.build/debug/minivmm` this follows `-c release`, `--scratch-path` and `--build-path`, and it never picks a
/// stale binary from another configuration. `MINIVMM_BINARY` overrides it.
enum MiniVMMBinary {
    static let url: URL = {
        if let path = ProcessInfo.processInfo.environment["MINIVMM_BINARY"] { return URL(fileURLWithPath: path) }
        let runner =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: runner).deletingLastPathComponent().appendingPathComponent("minivmm")
    }()

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs the binary; with `signal`, sends it that signal once `after` seconds have passed.
    /// `viaShell`: `arguments` is a `/bin/sh -c SCRIPT` command line; the binary's path is passed as `$0`.
    static func run(
        _ arguments: [String], signal: Int32? = nil, after: Double = 0.3, viaShell: Bool = false
    ) throws -> Result {
        guard FileManager.default.isExecutableFile(atPath: url.path) else {
            throw CLITestError("no minivmm binary at \(url.path): build it first (swift build --build-tests)")
        }
        // Output goes to files, not pipes: nothing to drain while waiting, so the child can never block on a full pipe.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("minivmm-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let outURL = dir.appendingPathComponent("stdout")
        let errURL = dir.appendingPathComponent("stderr")
        try Data().write(to: outURL)
        try Data().write(to: errURL)
        let out = try FileHandle(forWritingTo: outURL)
        let err = try FileHandle(forWritingTo: errURL)
        defer {
            try? out.close()
            try? err.close()
        }
        let process = Process()
        if viaShell {
            process.executableURL = URL(fileURLWithPath: arguments[0])
            process.arguments = Array(arguments.dropFirst()) + [url.path]
        } else {
            process.executableURL = url
            process.arguments = arguments
        }
        process.standardOutput = out
        process.standardError = err
        try process.run()
        if let signal {
            Thread.sleep(forTimeInterval: after)
            kill(process.processIdentifier, signal)
        }
        process.waitUntilExit()
        return Result(
            status: process.terminationStatus, stdout: try String(contentsOf: outURL, encoding: .utf8),
            stderr: try String(contentsOf: errURL, encoding: .utf8))
    }
}

struct CLITestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `minivmm caps` against this host's real /dev/kvm. Under CI=true these run (and fail without /dev/kvm).
@Suite(
    .needsKVM)
struct CLITests {
    @Test func capsListsSMMAndTheChosenBackend() throws {
        let r = try MiniVMMBinary.run(["caps"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.contains("KVM API version: 12"))
        #expect(r.stdout.contains("  KVM_CAP_X86_SMM: "))
        let prefix = "SMM backend (--smm auto): "
        let backendLine = r.stdout.split(separator: "\n").first { $0.hasPrefix(prefix) }
        let backend = backendLine.map { String($0.dropFirst(prefix.count)) }
        // The backend follows the capabilities: kvm exactly when KVM has its own SMM and two address spaces.
        let kvm = try KVM()
        let spaces = try kvm.checkExtensionInt(.multiAddressSpace)
        let hasKVMSMM = kvm.has(.x86SMM) && spaces >= 2
        #expect(backend == (hasKVMSMM ? "kvm" : "emulated"), "\(r.stdout)")
    }

    @Test func capsJSONHasSortedKeysAndEveryCapability() throws {
        let r = try MiniVMMBinary.run(["caps", "--json"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(json["apiVersion"] as? Int == 12)
        let caps = try #require(json["capabilities"] as? [String: Int])
        #expect(Set(caps.keys) == Set(Capability.allCases.map(\.kernelName)))
        let smm = try #require(caps["KVM_CAP_X86_SMM"])
        let spaces = caps["KVM_CAP_MULTI_ADDRESS_SPACE"] ?? 0
        #expect(json["backend"] as? String == (smm > 0 && spaces >= 2 ? "kvm" : "emulated"))
        #expect((json["reason"] as? String)?.isEmpty == false)
        // Sorted keys: the top-level keys appear in alphabetical order in the text.
        let keys = ["apiVersion", "backend", "capabilities", "maxVCPUs", "reason", "recommendedVCPUs"]
        let offsets = keys.compactMap { r.stdout.range(of: "\n  \"\($0)\"")?.lowerBound }
        #expect(offsets.count == keys.count)
        #expect(offsets == offsets.sorted())
    }

    /// The kvm backend is bound by KVM's per-VM limit (or, on a host without KVM's SMM, refused for that): one line,
    /// status 64, naming the capability that decides.
    @Test func kvmBackendAboveItsLimitIsOneLine() throws {
        guard try KVM().maxVCPUs() < 4096 else { return }
        let r = try MiniVMMBinary.run(["run", "--smm", "kvm", "--max-cpus", "4096", "--boot-cpus", "2"])
        #expect(r.status == 64)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr.hasPrefix("minivmm: error: ") && r.stderr.filter { $0 == "\n" }.count == 1, "\(r.stderr)")
        #expect(r.stderr.contains("KVM_CAP_MAX_VCPUS") || r.stderr.contains("KVM_CAP_X86_SMM"), "\(r.stderr)")
    }
}

/// Errors reaching `main` print one line and exit non-zero; help succeeds (no KVM needed).
struct CLIErrorTests {
    @Test func unknownOptionIsOneLineOnStderr() throws {
        let r = try MiniVMMBinary.run(["caps", "--no-such-flag"])
        #expect(r.status != 0)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr == "minivmm: error: Unknown option '--no-such-flag'\n")
    }

    /// Above the model's 4096 CPUs on any backend: one line naming the limit and why, before any KVM work.
    @Test func maxCPUsAboveTheModelLimitIsOneLine() throws {
        let r = try MiniVMMBinary.run(["run", "--max-cpus", "4097"])
        #expect(r.status == 64)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr.hasPrefix("minivmm: error: --max-cpus 4097 exceeds minivmm's model limit of 4096 CPUs"))
        #expect(r.stderr.filter { $0 == "\n" }.count == 1, "\(r.stderr)")
    }

    @Test func helpListsTheSubcommandsAndSucceeds() throws {
        let r = try MiniVMMBinary.run(["--help"])
        #expect(r.status == 0)
        for name in ["run", "bench", "caps"] { #expect(r.stdout.contains("  \(name)")) }
        #expect(r.stderr.isEmpty)
    }
}
