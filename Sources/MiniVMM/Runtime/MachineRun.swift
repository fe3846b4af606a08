// SPDX-License-Identifier: MIT
import Foundation
public import KVMBridge
public import Logging

extension Machine {
    /// Runs the machine to the end (firmware exit, failure, or --timeout) and returns the report.
    func run() -> RunReport {
        lock.withLock { threadsRunning = cpus.count }
        for c in cpus {
            if startThread(name: "vcpu\(c.index)", { [unowned self] in self.cpuThread(c) }) == nil {
                lock.withLock {
                    threadsRunning -= 1
                    finish(.vmmError, "cannot start a thread for CPU \(c.index)")
                }
            }
        }
        let deadline = startTime + config.timeoutSeconds
        lock.withLock {
            while !finished {
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
                if waited % 10 == 0 { for c in cpus { c.wake.signal(); c.inKVMRun?.kick() } }
                if waited > 300 { break }  // a vCPU stuck in the kernel: report anyway
            }
        }
        return lock.withLock { buildReport() }
    }

    func buildReport() -> RunReport {
        if backend == .kvm && threadsRunning == 0 {
            for c in cpus { c.state = kvmRunState(c) }
            let problems = kvmFinalSMMCheck()
            if !problems.isEmpty && outcome == .completed {
                outcome = .vmmError
                outcomeDetail =
                    "SMM state KVM holds differs from what minivmm observed: " + Invariants.summarize(problems)
            }
        }
        let observations = cpus.map(\.observation)
        let hotAddRefused = !refusedHotAdds.isEmpty
        var invariants = Invariants.check(
            .init(
                strategy: config.strategy, cpus: observations, hotAdd: config.hotAdd, hotplugReset: config.hotplugReset,
                tsegBase: tsegBase, tsegBytes: tsegBytes, smramClosed: tsegClosed, smramLocked: tsegLocked,
                smramAccesses: smramAccesses, hotAddRefused: hotAddRefused))
        if outcome != .completed {
            // Unfinished runs prove nothing: keep the verdicts but mark what could not be reached.
            invariants = invariants.map { r in
                var r = r
                if r.passed { r.detail += " (run did not complete)" }
                return r
            }
        }
        let total = monotonicSeconds() - startTime
        func span(_ a: String, _ b: String) -> Double? {
            guard let x = marks[a], let y = marks[b] else { return nil }
            return y - x
        }
        var dumps: [CPUDump]?
        if outcome != .completed {
            dumps = cpus.filter { $0.state != .unplugged && !($0.state == .waitForSIPI && $0.lastExits.isEmpty) }
                .prefix(8).map { c in
                    let v = c.inSMM ? (c.smmVCPU ?? c.vcpu) : c.vcpu
                    let r = v.syncedRegs
                    let s = v.syncedSregs
                    return CPUDump(
                        cpu: c.index, state: c.state, inSMM: c.inSMM, cs: String(s.cs.selector, radix: 16),
                        rip: String(r.rip, radix: 16), rax: String(r.rax, radix: 16), rsp: String(r.rsp, radix: 16),
                        lastExits: c.lastExits)
                }
        }
        return RunReport(
            strategy: config.strategy, backend: backend.rawValue, saveStateFormat: saveStateFormat,
            maxCPUs: config.maxCPUs,
            bootCPUs: config.bootCPUs, hotAdd: config.hotAdd, hotplugReset: config.hotplugReset, outcome: outcome,
            outcomeDetail: outcomeDetail, guestExitStatus: guestExitStatus, tsegBase: tsegBase, tsegBytes: tsegBytes,
            tsegBytesPerPossibleCPU: Double(tsegBytes) / Double(config.maxCPUs), smramClosed: tsegClosed,
            smramLocked: tsegLocked, hotAddRefusals: refusedHotAdds, invariants: invariants,
            cpus: cpus.map {
                CPUReport(
                    apicID: $0.index, state: $0.state, present: $0.present, smbase: $0.smbase,
                    hotAdded: $0.observation.hotAdded, smbaseHistory: $0.observation.smbaseHistory,
                    smiEntries: $0.observation.smiEntries)
            },
            counters: RunCounters(
                exits: cpus.reduce(0) { $0 + $1.exitCount }, extraIoctls: cpus.reduce(0) { $0 + $1.extraIoctls },
                smis: smiCount, rsms: rsmCount, unknownPortAccesses: bus.unknownAccessCount,
                unknownMSRAccesses: unknownMSRs, unknownMMIOAccesses: unknownMMIO, romWrites: romWrites,
                smramAccesses: smramAccesses),
            timings: RunTimings(
                total: total, vcpuCreation: vcpuCreationSeconds, apBringUp: span("boot-start", "aps-online"),
                relocation: span("aps-online", "smram-locked"), hotRemove: span("boot-done", "hot-remove-done"),
                hotAdd: span("hot-remove-done", "hot-add-done")),
            firmwareReports: firmwareReports, cpuDumps: dumps)
    }
}

/// The library entry point the CLI and the tests use.
public enum MiniVMMRunner {
    /// Builds the machine for `config` on this host's KVM and runs it.
    public static func run(_ config: MachineConfig, kvm: KVM? = nil, logger: Logger? = nil) throws -> RunReport {
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
        return m.run()
    }
}
