// SPDX-License-Identifier: MIT
import Foundation
import GuestFirmware

/// What the QMP monitor needs of a machine: `MachineControl` plus the run's state and report. `Machine` conforms;
/// the protocol tests use a fake, so the monitor is tested without KVM.
protocol QMPMachine: AnyObject {
    var possibleCPUs: Int { get }
    func plug(cpu: Int) throws(ControlError)
    func requestUnplug(cpu: Int) throws(ControlError)
    func queryCPUs() -> [CPUInfo]
    /// Host thread ID of each CPU's thread (0 before it ran).
    func threadIDs() -> [Int32]
    func quit()
    func requestFirmwareFinish()
    func enterPhase(_ p: Phase)
    func qmpStatus() -> QMPMachineStatus
    /// The run report as it stands (JSON), built under the machine lock.
    func reportSnapshot() -> JSONValue?
}

/// The run as `query-status` (QEMU `StatusInfo`) and the monitor's boot gate see it.
struct QMPMachineStatus: Equatable {
    var finished: Bool
    /// The firmware reported BOOT_DONE: device_add and device_del run from then on (they wait until it).
    var bootDone: Bool
    var phase: Phase
    /// A plugged CPU the firmware has not reported done (or refused), or an unplug the guest has not ejected yet.
    var hotplugInFlight = false
}

extension Machine: QMPMachine {
    var possibleCPUs: Int { config.maxCPUs }

    func threadIDs() -> [Int32] { lock.withLock { cpus.map(\.threadID) } }

    func qmpStatus() -> QMPMachineStatus {
        lock.withLock {
            QMPMachineStatus(
                finished: end.finished, bootDone: marks["boot-done"] != nil, phase: phase,
                hotplugInFlight: !hotAddsInFlight.isEmpty || !unplugsInFlight.isEmpty)
        }
    }

    func reportSnapshot() -> JSONValue? {
        // While vCPU threads run, buildReport neither judges the backend's end-of-run state nor dumps registers
        // (those need the threads gone); once the run is over the final report comes from the server instead.
        let r: RunReport? = lock.withLock { end.finished ? nil : buildReport() }
        return r.flatMap { JSONValue.from($0) }
    }

    /// Installs the QMP server's event outbox (before the run starts).
    func setEventTap(_ tap: @escaping @Sendable (MachineEvent) -> Void) {
        lock.withLock { events.tap = tap }
    }
}
