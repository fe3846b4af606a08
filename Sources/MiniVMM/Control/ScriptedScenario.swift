// SPDX-License-Identifier: MIT
import GuestFirmware

/// The hotplug scenario minivmm runs by default, as a controller of the machine: it drives the run only through
/// `MachineControl`, the way a management client drives QEMU. After the firmware's BOOT_DONE it requests removal of
/// every CPU above --boot-cpus (strategies that boot every possible CPU), waits until the guest ejected them, then
/// hot-adds the --hot-add CPUs, waits until the firmware reports each one done (or refused), and tells the firmware
/// to finish. Runs on its own thread until the machine finishes.
final class ScriptedScenario: @unchecked Sendable {
    let control: MachineControl
    let spec: StrategySpec
    let bootCPUs: Int
    let maxCPUs: Int
    let hotAdd: [Int]
    let hotRemove: [Int]
    let hotplugReset: Bool

    init(control: MachineControl, config: MachineConfig) {
        self.control = control
        self.spec = config.strategy.spec
        self.bootCPUs = config.bootCPUs
        self.maxCPUs = config.maxCPUs
        self.hotAdd = config.hotAdd
        self.hotRemove = config.hotRemove
        self.hotplugReset = config.hotplugReset
    }

    /// Waits for an event that `match` accepts; false when the machine finished first.
    private func wait(for match: (MachineEvent) -> Bool) -> Bool {
        while true {
            guard let e = control.nextEvent(seconds: 1) else { continue }
            if e == .finished { return false }
            if match(e) { return true }
        }
    }

    private static func isReport(_ e: MachineEvent, _ code: Int32) -> UInt32? {
        if case .firmwareReport(let c, let arg) = e, Int32(c) == code { return arg }
        return nil
    }

    /// Requests the unplug of each CPU (a refusal is reported and skipped) and waits until the guest ejected the
    /// others; false when the machine finished first.
    private func unplugAndWait(_ cpus: [Int]) -> Bool {
        var toRemove = Set<Int>()
        for i in cpus {
            do {
                try control.requestUnplug(cpu: i)
                toRemove.insert(i)
            } catch {
                control.progress("unplug of CPU \(i) refused: \(error)")
            }
        }
        while !toRemove.isEmpty {
            var ejected: Int?
            guard
                wait(for: {
                    if case .cpuEjected(let i) = $0 { ejected = i }
                    return ejected != nil
                })
            else { return false }
            toRemove.remove(ejected!)
        }
        return true
    }

    func run() {
        guard wait(for: { Self.isReport($0, REPORT_BOOT_DONE) != nil }) else { return }
        if spec.bootPresence == .allPossible && bootCPUs < maxCPUs {
            control.enterPhase(.hotRemove)
            control.progress("boot done; hot-removing \(maxCPUs - bootCPUs) CPUs")
            guard unplugAndWait(Array(bootCPUs..<maxCPUs)) else { return }
        }
        control.enterPhase(.hotAdd)
        var pending = Set<Int>()
        if !hotAdd.isEmpty {
            control.progress(
                "hot-adding CPUs \(hotAdd.map(String.init).joined(separator: ", "))"
                    + (hotplugReset ? " with RESET" : " (\(spec.hotAddAction.rawValue))"))
        }
        for i in hotAdd {
            do {
                try control.plug(cpu: i)
                pending.insert(i)
            } catch {
                control.progress("hot-add of CPU \(i) refused: \(error)")
                break
            }
        }
        while !pending.isEmpty {
            var done: Int?
            guard
                wait(for: {
                    if let a = Self.isReport($0, REPORT_HOTADD_DONE) ?? Self.isReport($0, REPORT_HOTADD_REFUSED) {
                        done = Int(a)
                    }
                    return done != nil
                })
            else { return }
            pending.remove(done!)
        }
        if !hotRemove.isEmpty {
            // After the hot-adds: unplug requests, ejected the strategy's way (C: from SMM).
            control.progress("hot-removing CPUs \(hotRemove.map(String.init).joined(separator: ", "))")
            guard unplugAndWait(hotRemove) else { return }
        }
        control.enterPhase(.finish)
        control.requestFirmwareFinish()
    }
}
