// SPDX-License-Identifier: MIT
import GuestFirmware

/// Something that happened in the machine that a controller (the scripted scenario, later a QMP client) may wait for.
public enum MachineEvent: Sendable, Equatable {
    /// The firmware wrote `code << 24 | arg` to the report channel (`REPORT_*`).
    case firmwareReport(code: UInt8, arg: UInt32)
    /// The guest ejected this CPU through the hotplug block (QEMU emits `DEVICE_DELETED`).
    case cpuEjected(Int)
    /// The guest wrote an `_OST` status for this CPU (QEMU emits `ACPI_DEVICE_OST`).
    case ostStatus(cpu: Int, event: UInt32, status: UInt32)
    /// A CPU's SMBASE as the VMM observed it changed (RESET, an RSM that reloaded it, hot-add): minivmm's QMP
    /// event `x-minivmm-SMBASE`.
    case smbaseChanged(cpu: Int, smbase: UInt32, cause: SMBASEEvent.Cause)
    /// The run is over.
    case finished
}

/// One CPU as a controller sees it (QEMU `query-cpus-fast` / `query-hotpluggable-cpus`, plus SMM state).
public struct CPUInfo: Sendable, Equatable, Codable {
    public var index: Int
    public var present: Bool
    public var state: CPURunState
    public var smbase: UInt32
    public var inSMM: Bool
}

/// Why a control request was refused: one line each, QEMU's wording where QEMU has one.
public enum ControlError: Error, Equatable, Sendable, CustomStringConvertible {
    case noSuchCPU(Int)
    case alreadyPresent(Int)
    case notPresent(Int)
    /// The machine refuses, e.g. "cpu hotplug with SMI wasn't enabled by firmware".
    case refused(String)
    case finished

    public var description: String {
        switch self {
        case .noSuchCPU(let i): "CPU \(i) does not exist"
        case .alreadyPresent(let i): "CPU \(i) is already plugged"
        case .notPresent(let i): "CPU \(i) is not plugged"
        case .refused(let why): why
        case .finished: "the machine has stopped"
        }
    }
}

/// The machine control API (QEMU's `device_add`, `device_del`, `query-cpus-fast`, `quit`, and the event stream):
/// what the scripted scenario uses, and what a control socket drives with the same calls. Every method takes the
/// machine lock itself; call none of them with it held.
protocol MachineControl: AnyObject {
    /// Hot-adds `cpu`: marks it present with an insert event and raises the SCI (QEMU `acpi_cpu_plug_cb`). What
    /// happens to the CPU's state (keep it, RESET, load its SMBASE register) is the strategy's hot-add action.
    func plug(cpu: Int) throws(ControlError)
    /// Asks the guest to eject `cpu`: a remove event and the SCI (QEMU `acpi_cpu_unplug_request_cb`).
    func requestUnplug(cpu: Int) throws(ControlError)
    func queryCPUs() -> [CPUInfo]
    /// Stops the machine now (the report is still written).
    func quit()
    /// The next event, waiting at most `seconds`; nil on timeout.
    func nextEvent(seconds: Double) -> MachineEvent?
    /// minivmm extension: the scripted scenario's phase, recorded with every SMI entry and SMBASE event.
    func enterPhase(_ p: Phase)
    /// minivmm extension: tell the built-in firmware to finish (report-channel command `MINIVMM_CMD_FINISH`).
    func requestFirmwareFinish()
    /// minivmm extension: a progress line on stderr (not with --quiet).
    func progress(_ s: String)
}

/// Events waiting for the controller (lock held for `post`; `next` takes the machine lock).
final class MachineEventQueue {
    private var queue: [MachineEvent] = []
    private var head = 0
    let available = Condition()
    /// Sees every event as it is posted (lock held): the QMP server's outbox. Must not take the machine lock.
    var tap: (@Sendable (MachineEvent) -> Void)?

    /// Posts an event (lock held). The queue keeps at most 1 << 16 undelivered events; older ones are dropped (a run
    /// without a consumer, e.g. one driven only over QMP, stays bounded).
    func post(_ e: MachineEvent) {
        tap?(e)
        if queue.count - head >= 1 << 16 { head += 1 }
        if head > 4096 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        queue.append(e)
        available.signal()
    }

    /// Takes the next event (lock held), waiting up to `seconds`.
    func next(_ lock: MachineLock, seconds: Double) -> MachineEvent? {
        if head == queue.count { available.wait(lock, seconds: seconds) }
        guard head < queue.count else { return nil }
        let e = queue[head]
        head += 1
        if head > 4096 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        return e
    }
}

extension Machine: MachineControl {
    func plug(cpu i: Int) throws(ControlError) {
        try lock.withLock { () -> Result<Void, ControlError> in
            do throws(ControlError) { try plugLocked(i) } catch { return .failure(error) }
            return .success(())
        }.get()
    }

    func plugLocked(_ i: Int) throws(ControlError) {
        if end.finished { throw .finished }
        guard cpus.indices.contains(i) else { throw .noSuchCPU(i) }
        let c = cpus[i]
        if c.present || devices.hotplug.isPresent(i) { throw .alreadyPresent(i) }
        if let refusal = devices.smiFeatures.hotplugRefusal {
            // QEMU refuses device_add when firmware negotiated SMI broadcast without CPU hotplug SMIs.
            noteRefusal(refusal)
            throw .refused(refusal)
        }
        let action: HotAddAction = config.hotplugReset ? .reset : spec.hotAddAction
        let register = action == .resetLoadingSMBASERegister ? devices.hotplug.smbaseRegister(cpu: i) : nil
        let fresh = !c.exists
        if fresh {
            // A CPU that never existed: QEMU creates its vCPU on device_add, in its power-on state.
            do { try createVCPU(c) } catch {
                throw .refused("creating the vCPU of CPU \(i) failed: \(error)")
            }
        }
        if c.inSMM && action == .keepState {
            // Ejected in the middle of an SMI (OVMF ejects from SMM; QEMU then destroys the vCPU): a hot-add that
            // keeps the CPU's state would bring back a CPU inside SMM. Nothing sane follows from it: say so.
            noteFailure("CPU \(i) is hot-added without RESET while still in SMM (it was ejected inside an SMI)")
        }
        c.observation.hotAdded = true
        c.present = true
        c.state = backend.stateAtHotAdd(action)
        c.pendingSIPI = nil
        if action != .keepState {
            c.pendingSMI = false
            c.latchedINIT = false
        }
        c.hotplugWork.append(.hotAdd(action, smbaseRegister: register, fresh: fresh))
        if !controlledHotAdds.contains(i) { controlledHotAdds.append(i) }
        devices.hotplug.plug(cpu: i)
        hotAddsInFlight.insert(i)
        if fresh { startCPUThread(c) }
        c.wake.signal()
        backend.raiseSCI()
    }

    func requestUnplug(cpu i: Int) throws(ControlError) {
        try lock.withLock { () -> Result<Void, ControlError> in
            if end.finished { return .failure(.finished) }
            guard cpus.indices.contains(i) else { return .failure(.noSuchCPU(i)) }
            if let refusal = devices.smiFeatures.hotUnplugRefusal { return .failure(.refused(refusal)) }
            guard devices.hotplug.requestUnplug(cpu: i) else {
                return .failure(i == 0 ? .refused("the boot CPU cannot be unplugged") : .notPresent(i))
            }
            unplugsInFlight.insert(i)
            backend.raiseSCI()
            return .success(())
        }.get()
    }

    func queryCPUs() -> [CPUInfo] {
        lock.withLock {
            cpus.map {
                CPUInfo(index: $0.index, present: $0.present, state: $0.state, smbase: $0.smbase, inSMM: $0.inSMM)
            }
        }
    }

    func quit() {
        lock.withLock { finish(.stopped, "stopped by the control API (quit)") }
    }

    func nextEvent(seconds: Double) -> MachineEvent? {
        lock.withLock { events.next(lock, seconds: seconds) }
    }

    func enterPhase(_ p: Phase) {
        lock.withLock {
            switch p {
            case .hotAdd: if phase == .hotRemove { mark("hot-remove-done") }
            case .finish: mark("hot-add-done")
            default: break
            }
            backend.beforeObservedStateChange()
            phase = p
        }
    }

    func requestFirmwareFinish() {
        lock.withLock {
            devices.reportPort.command = UInt32(MINIVMM_CMD_FINISH)
            backend.raiseSCI()
        }
    }
}

/// The guest's ejection of a CPU (lock held): the vCPU is parked, not reset (QEMU `kvm_park_vcpu`); its thread
/// records the SMBASE it holds.
extension Machine {
    func cpuEjected(_ i: Int) {
        guard cpus.indices.contains(i) else { return }
        let c = cpus[i]
        c.present = false
        c.state = .unplugged
        c.pendingSIPI = nil  // a parked vCPU keeps no APIC events
        c.hotplugWork.append(.park)
        unplugsInFlight.remove(i)
        wakeOrKick(c)
        events.post(.cpuEjected(i))
    }
}
