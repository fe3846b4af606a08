// SPDX-License-Identifier: MIT
import ArgumentParser

#if canImport(Glibc)
    import Glibc
#endif

/// The `minivmm` command: `run` (the default), `bench`, `caps`, `compare` and `qmp` (a QMP client).
public struct MiniVMMCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "minivmm",
        abstract:
            "A small KVM hypervisor that runs SMM CPU-hotplug firmware strategies and checks their SMBASE invariants.",
        version: "minivmm \(MiniVMMVersion.number) (strategies A, B, C, N; SMM backends emulated and kvm)",
        subcommands: [RunCommand.self, BenchCommand.self, CapsCommand.self, CompareCommand.self, QMPCommand.self],
        defaultSubcommand: RunCommand.self
    )

    public init() {}

    /// Parses the command line and runs the chosen subcommand. Help and `--version` print as usual; any error
    /// prints exactly one line, `minivmm: error: <description>`, on stderr and exits non-zero (64 for usage
    /// errors, as ArgumentParser does, else the error's `ExitCode` or 1). ArgumentParser's own `exit(withError:)`
    /// would print `Error: …` followed by the usage text.
    public static func main() {
        RunInterrupts.install()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            var code = exitCode(for: error)
            if let m = error as? MachineError { code = ExitCode(m.exitCode) }
            if error is SMMBackendError { code = .validationFailure }
            if code.isSuccess || error is ExitCode {
                exit(withError: error)  // help, --version, CleanExit, or an explicit ExitCode: nothing to add
            }
            fflush(nil)  // whatever stdout already holds goes out before the error line
            let line = errorLine(for: error) + "\n"
            // SAFETY: the C string lives for the closure; write(2) reads at most its UTF-8 length.
            _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
            Glibc.exit(code.rawValue)
        }
    }

    /// The one line printed for an error that reaches `main`: ArgumentParser's message without the usage text
    /// (`KVMError` and other `CustomStringConvertible` errors print their `description`), with any line breaks
    /// folded so scripts can rely on one line.
    public static func errorLine(for error: any Error) -> String {
        var message = message(for: error)
        if message.isEmpty { message = String(describing: error) }
        let folded = message.split(whereSeparator: \.isNewline).map { $0.trimmingSpaces() }.filter { !$0.isEmpty }
        return "minivmm: error: " + folded.joined(separator: " ")
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> Substring {
        var s = self
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return s
    }
}
