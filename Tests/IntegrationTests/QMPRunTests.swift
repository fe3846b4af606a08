// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge
import MiniVMM
import Testing

/// A short run driven over the QMP socket by the built binary and minivmm's own QMP client. Under CI=true it runs.
@Suite(
    .needsKVM)
struct QMPRunTests {
    @Test func unplugAndPlugBackOverTheSocket() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("minivmm-qmp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let sock = dir.appendingPathComponent("q.sock").path
        let json = dir.appendingPathComponent("r.json").path
        let p = Process()
        p.executableURL = MiniVMMBinary.url
        p.arguments = [
            "run", "--qmp", "unix:\(sock)", "--qmp-wait", "--max-cpus", "4", "--boot-cpus", "4", "--strategy", "A",
            "--smm", "emulated", "--timeout", "60", "--quiet", "--json", json,
        ]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        var client: QMPClient?
        for _ in 0..<200 where client == nil {
            client = try? QMPClient(address: "unix:\(sock)", timeout: 10)
            if client == nil { usleep(50_000) }
        }
        guard let c = client else {
            p.terminate()
            Issue.record("could not connect to \(sock)")
            return
        }
        #expect(c.greeting["QMP"]?["capabilities"] == .array([]))
        #expect(try c.execute(#"{"execute":"qmp_capabilities"}"#, timeout: 10)?["return"] == .object([:]))
        let del = try c.execute(
            #"{"execute":"device_del","arguments":{"id":"/machine/unattached/device[3]"},"id":"d"}"#, timeout: 30)
        #expect(del == ["return": [:], "id": "d"])
        let deleted = try c.waitEvent("DEVICE_DELETED", timeout: 30)
        #expect(deleted?["data"]?["path"] == "/machine/unattached/device[3]")
        let add = try c.execute(
            #"{"execute":"device_add","arguments":{"driver":"qemu64-x86_64-cpu","id":"c3","socket-id":3,"core-id":0,"thread-id":0}}"#,
            timeout: 30)
        #expect(add?["return"] == .object([:]))
        #expect(try c.execute(#"{"execute":"x-minivmm-finish"}"#, timeout: 10)?["return"] == .object([:]))
        let shutdown = try c.waitEvent("SHUTDOWN", timeout: 30)
        #expect(shutdown?["data"]?["x-minivmm-outcome"] == "completed")
        let report = try c.execute(#"{"execute":"x-minivmm-report"}"#, timeout: 10)
        #expect(report?["return"]?["final"] == true)
        #expect(report?["return"]?["report"]?["hotAdd"] == [3])
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let r = try JSONDecoder().decode(RunReport.self, from: Data(contentsOf: URL(fileURLWithPath: json)))
        #expect(r.outcome == .completed)
        #expect(r.hotAdd == [3])
        #expect(r.invariants.allSatisfy { $0.passed })
    }

    @Test func badQMPOptionsAreOneLineErrors() throws {
        for args in [
            ["run", "--qmp", "tcp:localhost:4444"], ["run", "--qmp-wait"], ["run", "--qmp", "unix:"],
            ["qmp", "unix:/nonexistent/q.sock", "{}"], ["qmp", "unix:/tmp/q.sock", "not json"],
        ] {
            let r = try MiniVMMBinary.run(args)
            #expect(r.status == 64, "\(args)")
            #expect(r.stderr.hasPrefix("minivmm: error: ") && r.stderr.split(separator: "\n").count == 1, "\(args)")
        }
    }
}
