// SPDX-License-Identifier: MIT
import ArgumentParser

/// PLACEHOLDER: `minivmm bench`, replaced by the benchmark sweep.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Sweep max CPUs per strategy and write timings (JSON, CSV, chart)")

    func run() throws { throw ValidationError("not implemented yet") }
}
