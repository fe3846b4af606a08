// SPDX-License-Identifier: MIT
import Foundation
public import KVMBridge
public import Logging

extension Machine {
    /// Runs the machine to the end (firmware exit, failure, `quit`, or --timeout) and returns the report. The
    /// scripted scenario, when `scripted`, drives hotplug from its own thread through `MachineControl`; otherwise a
    /// controller (QMP) does. `beforeStart` runs before any vCPU does (QMP `--qmp-wait`: until a client connects).
    func run(scripted: Bool = true, beforeStart: (() -> Void)? = nil) -> RunReport {
        // SIGINT/SIGTERM stop this machine (and still produce its report).
        RunInterrupts.running(self)
        defer { RunInterrupts.running(nil) }
        // The conformance firmware and stock firmware drive no hotplug: there is no scenario to script.
        let scripted = scripted && config.firmwareKind != .conformance && config.firmwareKind != .stock
        lock.withLock { self.scripted = scripted }
        beforeStart?()
        lock.withLock {
            for c in cpus where c.exists { startCPUThread(c) }
        }
        if scripted {
            let scenario = ScriptedScenario(control: self, config: config)
            lock.withLock { threadsRunning += 1 }
            let started = startThread(name: "scenario") { [unowned self] in
                scenario.run()
                self.lock.withLock {
                    self.threadsRunning -= 1
                    self.allDone.broadcast()
                }
            }
            if started == nil {
                lock.withLock {
                    threadsRunning -= 1
                    finish(.vmmError, "cannot start the scenario thread")
                }
            }
        }
        let deadline = startTime + config.timeoutSeconds
        lock.withLock {
            while !end.finished {
                if monotonicSeconds() > deadline {
                    finish(.timeout, "no result within --timeout \(Int(config.timeoutSeconds)) s")
                    break
                }
                allDone.wait(lock, seconds: 0.25)
            }
            var waited = 0
            while threadsRunning > 0 {
                allDone.wait(lock, seconds: 0.1)
                waited += 1
                if waited % 10 == 0 {
                    for c in cpus { wakeOrKick(c) }
                    events.post(.finished)
                }
                if waited > 300 { break }  // a vCPU stuck in the kernel: report anyway
            }
        }
        return lock.withLock { buildReport() }
    }

    /// The attack verdict: compromised exactly when the VMM's SMRAM canary changed.
    func attackReport() -> AttackReport? {
        guard let attack = config.attack else { return nil }
        canary.check(in: memory, context: "by the end of the run")
        if let breach = canary.breach {
            return AttackReport(attack: attack, verdict: .compromised, evidence: breach)
        }
        var evidence: [String] = []
        if canary.planted == nil {
            evidence.append("TSEG never closed, so no canary was planted")
        } else {
            evidence.append("SMRAM canary at 0x\(String(canary.address, radix: 16)) intact")
        }
        let a = smram.accesses
        evidence.append("\(a.reads + a.writes) non-SMM SMRAM accesses and \(a.dmaBlocked) DMA accesses black-holed")
        let outside = cpus.filter(\.observation.hotAdded).flatMap { c in
            c.observation.smiEntries.filter { !$0.inSMRAM && $0.phase != .boot }.map {
                "CPU \(c.index) at 0x\(String($0.entry, radix: 16))"
            }
        }
        evidence.append(
            outside.isEmpty
                ? "no hot-added CPU entered SMM outside SMRAM"
                : "SMM entered outside SMRAM (\(outside.prefix(3).joined(separator: ", "))) without touching SMRAM")
        return AttackReport(
            attack: attack, verdict: canary.planted == nil ? .compromised : .safe,
            evidence: evidence.joined(separator: "; "))
    }

    /// The hot-add list of the report: --hot-add for scripted runs, what a controller plugged otherwise (lock held).
    var reportedHotAdd: [Int] { scripted ? config.hotAdd : controlledHotAdds }

    func buildReport() -> RunReport {
        if threadsRunning == 0 {
            let problems = backend.endOfRun(cpus)
            if !problems.isEmpty && end.outcome == .completed {
                end.outcome = .vmmError
                end.detail =
                    "SMM state the backend holds differs from what minivmm observed: "
                    + Invariants.summarize(problems)
            }
        }
        if smramProbeSawAllOnes == false { smram.accesses.readsReturnedAllOnes = false }
        let observations = cpus.map(\.observation)
        // A conformance run is judged by the firmware's own checks: the invariants judge a hotplug scenario it never ran.
        let conformance = config.firmwareKind == .conformance
        // Stock firmware (--firmware FILE --stock) is described, not judged: the invariants assume the built-in protocol.
        let stock = config.firmwareKind == .stock
        var invariants =
            conformance || stock
            ? []
            : Invariants.check(
                .init(
                    spec: spec, cpus: observations, presentAtBoot: Self.presentAtBoot(config), hotAdd: reportedHotAdd,
                    tsegBase: tsegBase, tsegBytes: tsegBytes, windows: smram.windows, smramAccesses: smram.accesses,
                    hotAddRefused: !refusedHotAdds.isEmpty))
        if end.outcome != .completed {
            // Unfinished runs prove nothing: keep the verdicts but mark what could not be reached.
            invariants = invariants.map { r in
                var r = r
                if r.passed { r.detail += " (run did not complete)" }
                return r
            }
        }
        let attack = attackReport()
        let total = monotonicSeconds() - startTime
        func span(_ a: String, _ b: String) -> Double? {
            guard let x = marks[a], let y = marks[b] else { return nil }
            return y - x
        }
        var dumps: [CPUDump]?
        if end.outcome != .completed {
            dumps = cpus.filter {
                $0.exists && $0.state != .unplugged && !($0.state == .waitForSIPI && $0.lastExits.isEmpty)
            }
            .prefix(8).map { c in
                let v = backend.vcpuToRun(c)
                let r = v.syncedRegs
                let s = v.syncedSregs
                return CPUDump(
                    cpu: c.index, state: c.state, inSMM: c.inSMM, cs: String(s.cs.selector, radix: 16),
                    rip: String(r.rip, radix: 16), rax: String(r.rax, radix: 16), rsp: String(r.rsp, radix: 16),
                    lastExits: c.lastExits)
            }
        }
        let tseg = smram.tseg
        return RunReport(
            strategy: config.strategy, backend: backend.kind.rawValue, saveStateFormat: saveStateFormat,
            maxCPUs: config.maxCPUs, bootCPUs: config.bootCPUs, hotAdd: reportedHotAdd,
            hotplugReset: config.hotplugReset, outcome: end.outcome, outcomeDetail: end.detail,
            guestExitStatus: end.guestExitStatus, tsegBase: tseg.base, tsegBytes: tseg.size,
            tsegBytesPerPossibleCPU: Double(tseg.size) / Double(config.maxCPUs), smramClosed: tseg.closed,
            smramLocked: tseg.locked,
            smramWindows: smram.windows.map {
                SMRAMWindowReport(kind: $0.kind, base: $0.base, size: $0.size, closed: $0.closed, locked: $0.locked)
            },
            smramBytesPerPossibleCPU: spec.smramBytesPerPossibleCPU,
            smramBytesNeeded: spec.smramBytes(maxCPUs: config.maxCPUs), hotAddRefusals: refusedHotAdds,
            attack: attack, invariants: invariants,
            cpus: cpus.map {
                CPUReport(
                    apicID: $0.index, state: $0.state, present: $0.present, smbase: $0.smbase,
                    hotAdded: $0.observation.hotAdded, smbaseHistory: $0.observation.smbaseHistory,
                    smiEntries: $0.observation.smiEntries)
            },
            counters: RunCounters(
                exits: cpus.reduce(0) { $0 + $1.exitCount }, extraIoctls: cpus.reduce(0) { $0 + $1.extraIoctls },
                smis: counters.smis, rsms: counters.rsms, unknownPortAccesses: devices.bus.unknownAccessCount,
                unknownMSRAccesses: counters.unknownMSRs, unknownMMIOAccesses: counters.unknownMMIO,
                romWrites: counters.romWrites, smramAccesses: smram.accesses,
                deniedSMBASERegisterAccesses: devices.hotplug.deniedSMBASEReads + devices.hotplug.deniedSMBASEWrites,
                lockedSMRAMRegisterWrites: devices.hostBridge.lockedRegisterWrites,
                droppedRecords: droppedRefusals + cpus.reduce(0) { $0 + $1.observation.droppedRecords }),
            timings: RunTimings(
                total: total, vcpuCreation: vcpuCreationSeconds, boot: marks["boot-done"],
                apBringUp: span("boot-start", "aps-online"), relocation: span("aps-online", "smram-locked"),
                hotRemove: span("boot-done", "hot-remove-done"),
                hotAdd: span(spec.bootPresence == .allPossible ? "hot-remove-done" : "boot-done", "hot-add-done")),
            firmwareReports: firmwareReports, cpuDumps: dumps,
            conformance: conformance ? ConformanceResult(consoleText: console.text, partialLine: console.line) : nil,
            findings: stock
                ? FirmwareFindings.observe(
                    cpus: cpus.filter { $0.index < Self.presentAtBoot(config) || $0.observation.hotAdded }.map(
                        \.observation),
                    windows: smram.windows, events: smram.events, accesses: smram.accesses) : nil,
            firmware: stock ? config.firmwareName : nil, pflash: pflash?.report)
    }
}

/// The library entry point the CLI and the tests use.
public enum MiniVMMRunner {
    /// Builds the machine for `config` on this host's KVM and runs it.
    public static func run(_ config: MachineConfig, kvm: KVM? = nil, logger: Logger? = nil) throws -> RunReport {
        let t0 = monotonicSeconds()
        let rss0 = HostUsage.residentKiBNow()
        var m: Machine? = try makeMachine(config, kvm: kvm, logger: logger)
        let report = m!.run()
        return tearDown(&m, report: report, runnerStart: t0, startResidentKiB: rss0)
    }

    /// Releases the machine (every vCPU fd, every VM, guest memory: KVM destroys a VM when its last fd closes) and
    /// completes the report's timings with the start-up before the machine, the teardown and the phase list.
    static func tearDown(
        _ m: inout Machine?, report: RunReport, runnerStart: Double, startResidentKiB: Int
    ) -> RunReport {
        var report = report
        guard let startTime = m?.startTime, let marks = m?.marks else { return report }
        let vcpus = m.map { m in m.lock.withLock { m.cpus.filter { $0.exists }.count + m.backend.extraVCPUs } } ?? 0
        report.host = HostUsage(
            startResidentKiB: startResidentKiB, peakResidentKiB: HostUsage.peakResidentKiB(), vcpus: vcpus,
            maxCPUs: report.maxCPUs, kvmVMs: m?.kvmVMCount)
        let startUp = startTime - runnerStart
        let tearDownStart = monotonicSeconds()
        m = nil
        let teardown = monotonicSeconds() - tearDownStart
        report.timings.phases = RunTimings.phases(
            startUp: startUp, marks: marks, vcpusCreated: marks["vcpus-created"], end: report.timings.total,
            teardown: teardown)
        report.timings.wall = monotonicSeconds() - runnerStart
        return report
    }

    /// Runs the machine with a QMP server (`--qmp`): the server serves it from before the first instruction (with
    /// `address.wait`, the guest waits for a client) until after the report; `scripted` adds the scripted scenario.
    public static func run(
        _ config: MachineConfig, kvm: KVM? = nil, logger: Logger? = nil, qmp server: QMPServer, scripted: Bool
    ) throws -> RunReport {
        let t0 = monotonicSeconds()
        let rss0 = HostUsage.residentKiBNow()
        var m: Machine?
        do {
            m = try makeMachine(config, kvm: kvm, logger: logger)
            try server.start(m!)
        } catch {
            server.abandon()
            throw error
        }
        let wait = server.address.wait
        let report = m!.run(
            scripted: scripted, beforeStart: wait ? { server.waitForClient(seconds: config.timeoutSeconds) } : nil)
        server.finish(report)
        return tearDown(&m, report: report, runnerStart: t0, startResidentKiB: rss0)
    }

    static func makeMachine(_ config: MachineConfig, kvm: KVM?, logger: Logger?) throws -> Machine {
        let k: KVM
        if let kvm {
            k = kvm
        } else {
            do { k = try KVM() } catch { throw MachineError.kvm(error.description) }
        }
        let log = logger ?? Logger(label: "minivmm")
        let m: Machine
        do {
            m = try Machine(config: config, kvm: k, logger: log)
        } catch let e as MachineError {
            throw e
        } catch let e as KVMError {
            throw MachineError.kvm(e.description)
        } catch {
            throw MachineError.kvm("\(error)")
        }
        return m
    }
}
