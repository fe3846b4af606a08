// SPDX-License-Identifier: MIT
import Foundation
import Testing

@testable import MiniVMM

/// The QMP framer and monitor without KVM: a fake machine stands in for `Machine`.
@Suite struct QMPFramerTests {
    func frames(_ chunks: [String], limit: Int = 1 << 20) -> [QMPFramer.Frame] {
        var f = QMPFramer(limit: limit)
        var out: [QMPFramer.Frame] = []
        for c in chunks {
            let ok = f.append(Array(c.utf8))
            #expect(ok)
            while let x = f.next() { out.append(x) }
        }
        return out
    }

    @Test func severalObjectsInOneReadAndOneObjectOverManyReads() {
        let a = frames([#"{"execute":"a"}{"execute":"b"}  {"x":"}{"}"#, "\n{\"execute\"", ":\"c\"", "}"])
        #expect(
            a == [
                .text(Data(#"{"execute":"a"}"#.utf8)), .text(Data(#"{"execute":"b"}"#.utf8)),
                .text(Data(#"{"x":"}{"}"#.utf8)), .text(Data(#"{"execute":"c"}"#.utf8)),
            ])
    }

    @Test func garbageUpToTheNextNewlineThenResync() {
        let a = frames(["not json\n", #"{"execute":"q"}"#])
        #expect(a == [.garbage(Data("not json".utf8)), .text(Data(#"{"execute":"q"}"#.utf8))])
    }

    @Test func escapedQuotesDoNotEndStrings() {
        let a = frames([#"{"a":"\"}"}"#])
        #expect(a == [.text(Data(#"{"a":"\"}"}"#.utf8))])
    }

    @Test func pendingInputIsCapped() {
        var f = QMPFramer(limit: 16)
        let first = f.append(Array("{\"a\":\"0123".utf8))
        #expect(first)
        let none = f.next()
        #expect(none == nil)
        let second = f.append(Array("456789abcdef".utf8))
        #expect(!second)
    }

    @Test func nestingDeeperThanQEMUsLimitIsGarbage() {
        let deep = String(repeating: "[", count: 1100) + String(repeating: "]", count: 1100)
        let a = frames([deep])
        guard case .garbage = a.first else {
            Issue.record("expected garbage, got \(a)")
            return
        }
    }
}

final class FakeQMPMachine: QMPMachine {
    var possibleCPUs = 4
    var present: Set<Int> = [0, 1, 2, 3]
    var status = QMPMachineStatus(finished: false, bootDone: true, phase: .boot)
    var unplugRequests: [Int] = []
    var plugs: [Int] = []
    var finishRequested = false

    func plug(cpu: Int) throws(ControlError) {
        if present.contains(cpu) { throw .alreadyPresent(cpu) }
        present.insert(cpu)
        plugs.append(cpu)
    }
    func requestUnplug(cpu: Int) throws(ControlError) { unplugRequests.append(cpu) }
    func queryCPUs() -> [CPUInfo] {
        (0..<possibleCPUs).map {
            CPUInfo(index: $0, present: present.contains($0), state: .running, smbase: 0x30000, inSMM: false)
        }
    }
    func threadIDs() -> [Int32] { [Int32](repeating: 7, count: possibleCPUs) }
    func quit() { status.finished = true }
    func requestFirmwareFinish() { finishRequested = true }
    func enterPhase(_ p: Phase) { status.phase = p }
    func qmpStatus() -> QMPMachineStatus { status }
    func reportSnapshot() -> JSONValue? { ["outcome": "completed"] }
}

@Suite struct QMPMonitorTests {
    let machine = FakeQMPMachine()
    var monitor: QMPMonitor { QMPMonitor(machine: machine) }

    /// Sends `text` on a negotiated (or not) session and returns the reply.
    func reply(_ m: QMPMonitor, _ text: String, negotiated: Bool = true) -> JSONValue? {
        var n = negotiated
        var f = QMPFramer()
        _ = f.append(Array(text.utf8))
        guard let frame = f.next() ?? f.next() else { return nil }
        guard case .reply(let r) = m.handle(frame, negotiated: &n) else { return nil }
        return r
    }

    func error(_ cls: String, _ desc: String, id: JSONValue? = nil) -> JSONValue {
        QMPMonitor.errorReply(QMPError(errorClass: cls, desc: desc), id: id)
    }

    @Test func greetingHasQEMUsShape() {
        let g = monitor.greeting()
        #expect(g["QMP"]?["capabilities"] == .array([]))
        #expect(g["QMP"]?["version"]?["qemu"]?["major"]?.intValue != nil)
        #expect(g["QMP"]?["version"]?["package"]?.stringValue?.hasPrefix("minivmm") == true)
    }

    @Test func capabilitiesNegotiationFirst() {
        let m = monitor
        var n = false
        let q = JSONValue.object(["execute": "query-status"])
        #expect(
            m.handle(q, negotiated: &n)
                == .reply(error("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")))
        #expect(
            m.handle(["execute": "qmp_capabilities", "id": 1], negotiated: &n) == .reply(["return": [:], "id": 1]))
        #expect(n)
        guard case .reply(let r) = m.handle(q, negotiated: &n) else { return }
        #expect(r["return"]?["status"] == "running")
        #expect(r["return"]?["running"] == true)
    }

    @Test func malformedInputGetsQEMUsErrors() {
        let m = monitor
        #expect(reply(m, "garbage\n") == error("GenericError", "JSON parse error, invalid JSON text"))
        #expect(reply(m, "[1]") == error("GenericError", "QMP input must be a JSON object"))
        #expect(reply(m, #"{"id":"x"}"#) == error("GenericError", "QMP input lacks member 'execute'", id: "x"))
        #expect(reply(m, #"{"execute":3}"#) == error("GenericError", "QMP input member 'execute' must be a string"))
        #expect(
            reply(m, #"{"execute":"quit","arguments":[]}"#)
                == error("GenericError", "QMP input member 'arguments' must be an object"))
        #expect(
            reply(m, #"{"execute":"foo","id":{"a":1}}"#)
                == error("CommandNotFound", "The command foo has not been found", id: ["a": 1]))
        #expect(
            reply(m, #"{"execute":"query-status","arguments":{"x":1}}"#)
                == error("GenericError", "Parameter 'x' is unexpected"))
    }

    @Test func deviceAddChecksArgumentsAsQEMU() {
        let m = monitor
        machine.present = [0, 1]
        func add(_ args: String) -> JSONValue? { reply(m, #"{"execute":"device_add","arguments":{\#(args)}}"#) }
        #expect(add(#""socket-id":2"#) == error("GenericError", "Parameter 'driver' is missing"))
        #expect(
            add(#""driver":"qemu64-x86_64-cpu","socket-id":"2","core-id":0,"thread-id":0"#)
                == error("GenericError", "Invalid parameter type for 'socket-id', expected: integer"))
        #expect(
            add(#""driver":"qemu64-x86_64-cpu","socket-id":true,"core-id":0,"thread-id":0"#)
                == error("GenericError", "Invalid parameter type for 'socket-id', expected: integer"))
        #expect(
            add(#""driver":"e1000","socket-id":2"#) == error("GenericError", "'e1000' is not a valid device model name")
        )
        #expect(
            add(#""driver":"qemu64-x86_64-cpu","socket-id":1,"core-id":0,"thread-id":0"#)
                == error("GenericError", "CPU[1] with APIC ID 1 exists"))
        #expect(
            add(#""driver":"qemu64-x86_64-cpu","socket-id":4,"core-id":0,"thread-id":0"#)
                == error("GenericError", "Invalid CPU socket-id: 4 must be in range 0:3"))
        #expect(
            add(#""driver":"qemu64-x86_64-cpu","socket-id":2,"core-id":0,"thread-id":0,"foo":1"#)
                == error("GenericError", "Property 'qemu64-x86_64-cpu.foo' not found"))
        #expect(add(#""driver":"max-x86_64-cpu","id":"c2","socket-id":2,"core-id":0,"thread-id":0"#) == ["return": [:]])
        #expect(machine.plugs == [2])
        #expect(machine.status.phase == .hotAdd)
        #expect(
            add(#""driver":"qemu64-x86_64-cpu","id":"c2","socket-id":3,"core-id":0,"thread-id":0"#)
                == error("GenericError", "Duplicate device ID 'c2'"))
        guard case .array(let cpus)? = reply(m, #"{"execute":"query-hotpluggable-cpus"}"#)?["return"] else {
            Issue.record("no list")
            return
        }
        #expect(cpus.count == 4)
        #expect(cpus[0]["props"] == ["socket-id": 3, "core-id": 0, "thread-id": 0])
        #expect(cpus[0]["qom-path"] == nil)
        #expect(cpus[1]["qom-path"] == "/machine/peripheral/c2")
        #expect(cpus[1]["vcpus-count"] == 1)
    }

    @Test func deviceDelAndDeviceDeleted() {
        let m = monitor
        #expect(
            reply(m, #"{"execute":"device_del","arguments":{"id":"x"}}"#)
                == error("DeviceNotFound", "Device 'x' not found"))
        #expect(
            reply(m, #"{"execute":"device_del","arguments":{"id":"/machine/unattached/device[0]"}}"#)
                == error("GenericError", "Boot CPU is unpluggable"))
        #expect(
            reply(m, #"{"execute":"device_del","arguments":{"id":"/machine/unattached/device[2]"}}"#) == ["return": [:]]
        )
        #expect(machine.unplugRequests == [2])
        let e = m.event(for: .cpuEjected(2))
        #expect(e?["event"] == "DEVICE_DELETED")
        #expect(e?["data"] == ["path": "/machine/unattached/device[2]"])
        #expect(e?["timestamp"]?["seconds"]?.intValue != nil)
        #expect(e?["timestamp"]?["microseconds"]?.intValue != nil)
        let ost = m.event(for: .ostStatus(cpu: 2, event: 3, status: 0x80))
        #expect(ost?["data"] == ["info": ["slot": "2", "slot-type": "CPU", "source": 3, "status": 0x80]])
        let s = m.event(for: .smbaseChanged(cpu: 1, smbase: 0x30000, cause: .reset))
        #expect(s?["data"] == ["cpu-index": 1, "smbase": 0x30000, "cause": "reset"])
    }

    @Test func hotplugWaitsForTheFirmwaresBoot() {
        let m = monitor
        machine.status.bootDone = false
        machine.present = [0, 1]
        var n = true
        let add: JSONValue = [
            "execute": "device_add",
            "arguments": ["driver": "qemu64-x86_64-cpu", "socket-id": 2, "core-id": 0, "thread-id": 0],
        ]
        #expect(m.handle(add, negotiated: &n) == .waitForBoot)
        #expect(machine.plugs.isEmpty)
        machine.status.bootDone = true
        #expect(m.handle(add, negotiated: &n) == .reply(["return": [:]]))
    }

    @Test func resetIsRefusedAndFinishAsksTheFirmware() {
        let m = monitor
        #expect(
            reply(m, #"{"execute":"system_reset"}"#)
                == error("GenericError", "system_reset is not supported by minivmm"))
        #expect(reply(m, #"{"execute":"x-minivmm-finish","id":5}"#) == ["return": [:], "id": 5])
        #expect(machine.finishRequested)
        #expect(reply(m, #"{"execute":"x-minivmm-report"}"#)?["return"]?["final"] == false)
        #expect(reply(m, #"{"execute":"quit"}"#) == ["return": [:]])
        #expect(machine.status.finished)
        #expect(QMPMonitor.shutdownEvent(outcome: .stopped)["data"]?["reason"] == "host-qmp-quit")
    }

    @Test func addressParsing() throws {
        #expect(try QMPAddress.parse("unix:/tmp/q.sock") == QMPAddress(path: "/tmp/q.sock"))
        #expect(try QMPAddress.parse("unix:/tmp/q.sock,server=on,wait=off") == QMPAddress(path: "/tmp/q.sock"))
        #expect(try QMPAddress.parse("unix:/tmp/q.sock,server,wait=on").wait)
        #expect(throws: QMPSocketError.self) { try QMPAddress.parse("tcp:localhost:4444") }
        #expect(throws: QMPSocketError.self) { try QMPAddress.parse("unix:/x,server=off") }
    }
}
