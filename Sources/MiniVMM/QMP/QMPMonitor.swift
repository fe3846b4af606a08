// SPDX-License-Identifier: MIT
import Foundation
import GuestFirmware

#if canImport(Glibc)
    import Glibc
#endif

/// A QMP error as QEMU sends it (`QapiErrorClass` and its description): `{"error": {"class", "desc"}}`.
struct QMPError: Error, Equatable {
    var errorClass: String
    var desc: String

    static func generic(_ d: String) -> QMPError { QMPError(errorClass: "GenericError", desc: d) }
}

/// The QMP monitor of a machine (QEMU `monitor/qmp.c`, `qapi/qmp-dispatch.c`): the greeting, capabilities
/// negotiation, the command table with QEMU's argument and reply shapes, and the events. It runs on the server's
/// one thread and keeps the QOM side of hotplug (device IDs and paths); the machine does the hotplug.
final class QMPMonitor {
    /// What a request produced: a reply, or "not yet" (device_add and device_del wait until the firmware booted).
    enum Outcome: Equatable {
        case reply(JSONValue)
        case waitForBoot
    }

    /// The QEMU release whose QMP shapes minivmm follows (QEMU `VersionInfo`).
    static let qemuVersion: (major: Int64, minor: Int64, micro: Int64) = (9, 2, 0)
    static let package = "minivmm \(MiniVMMVersion.number)"
    /// `*-x86_64-cpu` type minivmm lists as hotpluggable (QEMU's default CPU model).
    static let cpuType = "qemu64-x86_64-cpu"

    let machine: QMPMachine
    /// The final report once the run is over (the server sets it before SHUTDOWN).
    var finalReport: JSONValue?
    /// QOM side of hotplug: the `id` of each CPU plugged with one, and the anonymous device number of the others.
    private var deviceIDs: [Int: String] = [:]
    private var anonymous: [Int: Int] = [:]
    private var nextAnonymous = 0
    /// Furthest phase the monitor moved the machine to (the invariants judge SMIs by phase).
    private var phase: Phase = .boot

    init(machine: QMPMachine) { self.machine = machine }

    /// `{"QMP": {"version": …, "capabilities": []}}`, sent on connect.
    func greeting() -> JSONValue {
        let v = Self.qemuVersion
        return [
            "QMP": [
                "version": [
                    "qemu": ["major": .int(v.major), "minor": .int(v.minor), "micro": .int(v.micro)],
                    "package": .string(Self.package),
                ],
                "capabilities": [],
            ]
        ]
    }

    static func errorReply(_ e: QMPError, id: JSONValue?) -> JSONValue {
        var o: [String: JSONValue] = ["error": ["class": .string(e.errorClass), "desc": .string(e.desc)]]
        if let id { o["id"] = id }
        return .object(o)
    }

    static func timestamp() -> JSONValue {
        var tv = timeval()
        gettimeofday(&tv, nil)
        return ["seconds": .int(Int64(tv.tv_sec)), "microseconds": .int(Int64(tv.tv_usec))]
    }

    static func event(_ name: String, _ data: JSONValue?) -> JSONValue {
        var o: [String: JSONValue] = ["event": .string(name), "timestamp": timestamp()]
        if let data { o["data"] = data }
        return .object(o)
    }

    // MARK: requests

    /// Handles one framed input for a client whose negotiation state is `negotiated`.
    func handle(_ frame: QMPFramer.Frame, negotiated: inout Bool) -> Outcome {
        guard case .text(let data) = frame, let request = JSONValue.parse(data) else {
            return .reply(Self.errorReply(.generic("JSON parse error, invalid JSON text"), id: nil))
        }
        return handle(request, negotiated: &negotiated)
    }

    func handle(_ request: JSONValue, negotiated: inout Bool) -> Outcome {
        guard case .object(let dict) = request else {
            return .reply(Self.errorReply(.generic("QMP input must be a JSON object"), id: nil))
        }
        let id = dict["id"]
        do {
            for key in dict.keys.sorted() where !["execute", "arguments", "id"].contains(key) {
                if key == "exec-oob" { throw QMPError.generic("QMP input member 'exec-oob' is unexpected") }
                throw QMPError.generic("QMP input member '\(key)' is unexpected")
            }
            guard let command = dict["execute"] else { throw QMPError.generic("QMP input lacks member 'execute'") }
            guard case .string(let name) = command else {
                throw QMPError.generic("QMP input member 'execute' must be a string")
            }
            var args: [String: JSONValue] = [:]
            if let a = dict["arguments"] {
                guard case .object(let o) = a else {
                    throw QMPError.generic("QMP input member 'arguments' must be an object")
                }
                args = o
            }
            guard let handler = Self.commands[name] else {
                throw QMPError(errorClass: "CommandNotFound", desc: "The command \(name) has not been found")
            }
            if name == "qmp_capabilities" {
                if negotiated {
                    throw QMPError(
                        errorClass: "CommandNotFound",
                        desc: "Capabilities negotiation is already complete, command ignored")
                }
            } else if !negotiated {
                throw QMPError(
                    errorClass: "CommandNotFound",
                    desc: "Expecting capabilities negotiation with 'qmp_capabilities'")
            }
            var a = Arguments(args)
            guard let result = try handler(self)(&a) else { return .waitForBoot }
            try a.rejectUnexpected()
            if name == "qmp_capabilities" { negotiated = true }
            var o: [String: JSONValue] = ["return": result]
            if let id { o["id"] = id }
            return .reply(.object(o))
        } catch let e as QMPError {
            return .reply(Self.errorReply(e, id: id))
        } catch {
            return .reply(Self.errorReply(.generic("\(error)"), id: id))
        }
    }

    /// The command table (immutable; `nonisolated(unsafe)` only because closures over the class are not Sendable).
    /// A command: nil means "wait for the firmware's boot" (the request is retried later, in order).
    typealias Command = (QMPMonitor) -> (inout Arguments) throws -> JSONValue?

    nonisolated(unsafe) static let commands: [String: Command] = [
        "qmp_capabilities": { m in m.qmpCapabilities },
        "query-version": { m in m.queryVersion },
        "query-status": { m in m.queryStatus },
        "query-commands": { m in m.queryCommands },
        "query-hotpluggable-cpus": { m in m.queryHotpluggableCPUs },
        "query-cpus-fast": { m in m.queryCPUsFast },
        "device_add": { m in m.deviceAdd },
        "device_del": { m in m.deviceDel },
        "system_reset": { m in m.systemReset },
        "quit": { m in m.quit },
        "x-minivmm-report": { m in m.report },
        "x-minivmm-finish": { m in m.finishFirmware },
    ]

    /// A command's arguments with QEMU's input-visitor checks: missing, wrong type, unexpected.
    struct Arguments {
        private var remaining: [String: JSONValue]
        init(_ a: [String: JSONValue]) { remaining = a }

        mutating func take(_ key: String) -> JSONValue? { remaining.removeValue(forKey: key) }

        mutating func string(_ key: String, required: Bool = true) throws(QMPError) -> String? {
            guard let v = take(key) else {
                if required { throw QMPError.generic("Parameter '\(key)' is missing") }
                return nil
            }
            guard case .string(let s) = v else {
                throw QMPError.generic("Invalid parameter type for '\(key)', expected: string")
            }
            return s
        }

        mutating func integer(_ key: String) throws(QMPError) -> Int64? {
            guard let v = take(key) else { return nil }
            guard case .int(let i) = v else {
                throw QMPError.generic("Invalid parameter type for '\(key)', expected: integer")
            }
            return i
        }

        mutating func bool(_ key: String) throws(QMPError) -> Bool? {
            guard let v = take(key) else { return nil }
            guard case .bool(let b) = v else {
                throw QMPError.generic("Invalid parameter type for '\(key)', expected: boolean")
            }
            return b
        }

        func rejectUnexpected() throws(QMPError) {
            if let k = remaining.keys.sorted().first { throw QMPError.generic("Parameter '\(k)' is unexpected") }
        }

        /// device_add's leftover properties: QEMU names the type ("Property 'T.P' not found").
        func rejectUnknownProperties(of type: String) throws(QMPError) {
            if let k = remaining.keys.sorted().first { throw QMPError.generic("Property '\(type).\(k)' not found") }
        }
    }

    // MARK: commands

    /// `qmp_capabilities` (QEMU `qmp_qmp_capabilities`): `enable` may only name capabilities the greeting offered
    /// (none).
    func qmpCapabilities(_ a: inout Arguments) throws -> JSONValue? {
        if let e = a.take("enable") {
            guard case .array(let list) = e else {
                throw QMPError.generic("Invalid parameter type for 'enable', expected: array")
            }
            for c in list {
                guard case .string(let s) = c else {
                    throw QMPError.generic("Invalid parameter type for 'enable[0]', expected: string")
                }
                if s == "oob" { throw QMPError.generic("This monitor does not support Out-Of-Band (OOB)") }
                throw QMPError.generic("Parameter 'enable' does not accept value '\(s)'")
            }
        }
        return [:]
    }

    /// `query-version` (QEMU `VersionInfo`).
    func queryVersion(_ a: inout Arguments) throws -> JSONValue? {
        greeting()["QMP"]?["version"]
    }

    /// `query-status` (QEMU `StatusInfo`), with the firmware's progress as minivmm extensions.
    func queryStatus(_ a: inout Arguments) throws -> JSONValue? {
        let s = machine.qmpStatus()
        return [
            "status": s.finished ? "shutdown" : "running", "running": .bool(!s.finished), "singlestep": false,
            "x-minivmm-boot-done": .bool(s.bootDone), "x-minivmm-phase": .string(s.phase.rawValue),
        ]
    }

    /// `query-commands` (QEMU `CommandInfo`): qmp-shell reads it for completion.
    func queryCommands(_ a: inout Arguments) throws -> JSONValue? {
        .array(Self.commands.keys.sorted().map { ["name": .string($0)] })
    }

    /// QOM path of CPU `i` as QEMU names it: cold-plugged CPUs under /machine/unattached, device_add'ed ones
    /// under /machine/peripheral (with an id) or /machine/peripheral-anon.
    func qomPath(_ i: Int) -> String {
        if let id = deviceIDs[i] { return "/machine/peripheral/\(id)" }
        if let n = anonymous[i] { return "/machine/peripheral-anon/device[\(n)]" }
        return "/machine/unattached/device[\(i)]"
    }

    static func props(_ i: Int) -> JSONValue {
        ["socket-id": .int(Int64(i)), "core-id": 0, "thread-id": 0]
    }

    /// `query-hotpluggable-cpus` (QEMU `HotpluggableCPU`), highest socket first as QEMU lists them.
    func queryHotpluggableCPUs(_ a: inout Arguments) throws -> JSONValue? {
        .array(
            machine.queryCPUs().reversed().map { c in
                var o: [String: JSONValue] = [
                    "type": .string(Self.cpuType), "vcpus-count": 1, "props": Self.props(c.index),
                ]
                if c.present { o["qom-path"] = .string(qomPath(c.index)) }
                return .object(o)
            })
    }

    /// `query-cpus-fast` (QEMU `CpuInfoFast`) with SMM state as minivmm extensions.
    func queryCPUsFast(_ a: inout Arguments) throws -> JSONValue? {
        let tids = machine.threadIDs()
        return .array(
            machine.queryCPUs().filter(\.present).map { c in
                [
                    "cpu-index": .int(Int64(c.index)), "qom-path": .string(qomPath(c.index)),
                    "thread-id": .int(Int64(c.index < tids.count ? tids[c.index] : 0)), "props": Self.props(c.index),
                    "target": "x86_64", "x-minivmm-smbase": .int(Int64(c.smbase)),
                    "x-minivmm-in-smm": .bool(c.inSMM), "x-minivmm-state": .string(c.state.rawValue),
                ]
            })
    }

    private func advance(to p: Phase) {
        let order: [Phase] = [.boot, .hotRemove, .hotAdd, .finish]
        guard order.firstIndex(of: p)! > order.firstIndex(of: phase)! else { return }
        phase = p
        machine.enterPhase(p)
    }

    /// Maps ControlError to QEMU's wording.
    private func qmpError(_ e: ControlError, cpu: Int) -> QMPError {
        switch e {
        case .alreadyPresent: .generic("CPU[\(cpu)] with APIC ID \(cpu) exists")
        case .noSuchCPU: .generic("Invalid CPU socket-id: \(cpu) must be in range 0:\(machine.possibleCPUs - 1)")
        case .notPresent: .generic("CPU \(cpu) is not plugged")
        case .refused(let why): .generic(why)
        case .finished: .generic("minivmm: the machine has stopped")
        }
    }

    /// `device_add` of an x86 CPU (QEMU `qmp_device_add` → `pc_cpu_pre_plug` → `acpi_cpu_plug_cb`).
    func deviceAdd(_ a: inout Arguments) throws -> JSONValue? {
        var probe = a
        guard let driver = try probe.string("driver") else { return nil }
        if driver.isEmpty || !driver.hasSuffix("-x86_64-cpu") {
            throw QMPError.generic("'\(driver)' is not a valid device model name")
        }
        let id = try probe.string("id", required: false)
        var topo: [String: Int64] = [:]
        for key in ["socket-id", "core-id", "thread-id"] {
            guard let v = try probe.integer(key) else { throw QMPError.generic("CPU \(key) is not set") }
            topo[key] = v
        }
        try probe.rejectUnknownProperties(of: driver)
        if let id {
            guard Self.isValidID(id) else {
                throw QMPError.generic(
                    "Parameter 'id' expects an identifier: letters, digits, '-', '.', '_', starting with a letter")
            }
            if deviceIDs.values.contains(id) { throw QMPError.generic("Duplicate device ID '\(id)'") }
        }
        let max = Int64(machine.possibleCPUs)
        let socket = topo["socket-id"]!
        guard socket >= 0 && socket < max else {
            throw QMPError.generic("Invalid CPU socket-id: \(socket) must be in range 0:\(max - 1)")
        }
        for key in ["core-id", "thread-id"] where topo[key]! != 0 {
            throw QMPError.generic("Invalid CPU \(key): \(topo[key]!) must be in range 0:0")
        }
        // Wait for the firmware's OS loop before touching the hotplug block (the scripted scenario waits too).
        let status = machine.qmpStatus()
        if !status.bootDone && !status.finished { return nil }
        a = probe
        let cpu = Int(socket)
        advance(to: .hotAdd)
        do { try machine.plug(cpu: cpu) } catch { throw qmpError(error, cpu: cpu) }
        if let id {
            deviceIDs[cpu] = id
        } else {
            anonymous[cpu] = nextAnonymous
            nextAnonymous += 1
        }
        return [:]
    }

    /// QEMU's `id_wellformed`: a letter, then letters, digits, '-', '.' and '_'.
    static func isValidID(_ s: String) -> Bool {
        func letter(_ c: UInt8) -> Bool { (0x41...0x5A).contains(c) || (0x61...0x7A).contains(c) }
        let b = Array(s.utf8)
        guard let f = b.first, letter(f) else { return false }
        return b.allSatisfy { letter($0) || (0x30...0x39).contains($0) || $0 == 0x2D || $0 == 0x2E || $0 == 0x5F }
    }

    /// `device_del` (QEMU `qmp_device_del` → `acpi_cpu_unplug_request_cb`): accepts an id or a QOM path; the
    /// guest's eject then sends DEVICE_DELETED.
    func deviceDel(_ a: inout Arguments) throws -> JSONValue? {
        var probe = a
        guard let id = try probe.string("id") else { return nil }
        let cpu =
            deviceIDs.first { $0.value == id }?.key
            ?? machine.queryCPUs().first { $0.present && qomPath($0.index) == id }?.index
        guard let cpu else { throw QMPError(errorClass: "DeviceNotFound", desc: "Device '\(id)' not found") }
        if cpu == 0 { throw QMPError.generic("Boot CPU is unpluggable") }
        let status = machine.qmpStatus()
        if !status.bootDone && !status.finished { return nil }
        a = probe
        advance(to: .hotRemove)
        do { try machine.requestUnplug(cpu: cpu) } catch { throw qmpError(error, cpu: cpu) }
        return [:]
    }

    /// `system_reset`: refused, since minivmm cannot reset the machine faithfully (SMRAM lock, SMI negotiation and
    /// every CPU's SMBASE would have to return to power-on state, and the run's invariants do not span a reset).
    func systemReset(_ a: inout Arguments) throws -> JSONValue? {
        throw QMPError.generic("system_reset is not supported by minivmm")
    }

    /// `quit`: stops the machine now; the report is still written (outcome `stopped`).
    func quit(_ a: inout Arguments) throws -> JSONValue? {
        machine.quit()
        return [:]
    }

    /// `x-minivmm-report`: the run report as it stands (`final` false while the run goes on).
    func report(_ a: inout Arguments) throws -> JSONValue? {
        if let r = finalReport { return ["final": true, "report": r] }
        guard let r = machine.reportSnapshot() else {
            throw QMPError.generic("minivmm: the run is ending; its final report follows the SHUTDOWN event")
        }
        return ["final": false, "report": r]
    }

    /// `x-minivmm-finish`: asks the firmware to finish through the report channel (`MINIVMM_CMD_FINISH`): its OS
    /// loop exits through isa-debug-exit once no hotplug event is pending, so the run ends `completed`. Like the
    /// scripted scenario it waits until every plug was reported done and every unplug ejected: the phase it enters
    /// is recorded with every later SMI, so entering it while a hot-added CPU's SMI is still to come would make the
    /// record depend on timing (the nested lane saw exactly that: `smiEntries[1].phase` finish on one backend,
    /// hot-add on the other).
    func finishFirmware(_ a: inout Arguments) throws -> JSONValue? {
        let s = machine.qmpStatus()
        if s.finished { throw QMPError.generic("minivmm: the machine has stopped") }
        if !s.bootDone || s.hotplugInFlight { return nil }
        advance(to: .finish)
        machine.requestFirmwareFinish()
        return [:]
    }

    // MARK: events

    /// The QMP event for a machine event, if it has one (SHUTDOWN comes from `shutdownEvent`).
    func event(for e: MachineEvent) -> JSONValue? {
        switch e {
        case .cpuEjected(let i):
            var data: [String: JSONValue] = ["path": .string(qomPath(i))]
            if let id = deviceIDs[i] { data["device"] = .string(id) }
            deviceIDs[i] = nil
            anonymous[i] = nil
            return Self.event("DEVICE_DELETED", .object(data))
        case .ostStatus(let i, let ev, let status):
            var info: [String: JSONValue] = [
                "slot": .string(String(i)), "slot-type": "CPU", "source": .int(Int64(ev)),
                "status": .int(Int64(status)),
            ]
            if let id = deviceIDs[i] { info["device"] = .string(id) }
            return Self.event("ACPI_DEVICE_OST", ["info": .object(info)])
        case .smbaseChanged(let i, let smbase, let cause):
            return Self.event(
                "x-minivmm-SMBASE",
                ["cpu-index": .int(Int64(i)), "smbase": .int(Int64(smbase)), "cause": .string(cause.rawValue)])
        case .firmwareReport, .finished:
            return nil
        }
    }

    /// `SHUTDOWN` (QEMU `ShutdownCause`) for how the run ended.
    static func shutdownEvent(outcome: RunOutcome) -> JSONValue {
        let (guest, reason): (Bool, String) =
            switch outcome {
            case .stopped: (false, "host-qmp-quit")
            case .interrupted: (false, "host-signal")
            case .completed, .guestFailure: (true, "guest-shutdown")
            case .tripleFault, .guestReset: (true, "guest-reset")
            case .timeout, .cpuStopped, .vmmError: (false, "host-error")
            }
        return event(
            "SHUTDOWN",
            ["guest": .bool(guest), "reason": .string(reason), "x-minivmm-outcome": .string(outcome.rawValue)])
    }
}
