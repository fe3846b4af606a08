// SPDX-License-Identifier: MIT
import ArgumentParser

/// PLACEHOLDER: `minivmm run`, replaced by the machine's real run command.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Run a scenario (the default: a ready demo)")

    func run() throws { throw ValidationError("not implemented yet") }
}
