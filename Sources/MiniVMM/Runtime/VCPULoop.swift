// SPDX-License-Identifier: MIT
import CKVM
import KVMBridge

/// The CPU scheduler: one OS thread per guest CPU that decides under the machine lock (blocking while there is
/// nothing to do), acts without it, and repeats until the machine finishes (Firecracker's vCPU run loop).
extension Machine {
    func cpuThread(_ cpu: CPUContext) {
        try? VCPU.prepareCurrentThreadForKicks()
        let tid = ckvm_gettid()
        lock.withLock { cpu.threadID = tid }
        // Nothing to prepare once the run has ended (a run that fails at once must not wait for every CPU's setup).
        if !lock.withLock({ end.finished }) {
            prepareGate.wait()
            do {
                if !lock.withLock({ end.finished }) { try backend.prepareOnCPUThread(cpu) }
            } catch {
                lock.withLock { finish(.vmmError, "CPU \(cpu.index): \(error)") }
            }
            prepareGate.signal()
        }
        loop: while true {
            let step = lock.withLock { nextStep(cpu) }
            do {
                switch step {
                case .exit: break loop
                case .complete: try completePendingExit(cpu)
                case .hotplug(let work): try backend.perform(work, on: cpu)
                case .model(let m): try backend.perform(m, on: cpu)
                case .run: try runGuest(cpu)
                }
            } catch {
                lock.withLock { finish(.vmmError, "CPU \(cpu.index): \(error)") }
            }
        }
        lock.withLock {
            threadsRunning -= 1
            allDone.broadcast()
        }
    }

    /// The next step (lock held): the end of the run, then hotplug work (after the last exit is complete when it
    /// replaces registers), then waiting while the CPU is parked or stopped, then the backend's CPU model.
    func nextStep(_ cpu: CPUContext) -> CPUStep {
        while true {
            if end.finished { return .exit }
            if let work = cpu.hotplugWork.first {
                if work.replacesRegisters && cpu.needsCompletion { return .complete }
                cpu.hotplugWork.removeFirst()
                return .hotplug(work)
            }
            if cpu.state == .stopped || cpu.state == .unplugged {
                cpu.wake.wait(lock, seconds: idleWaitSeconds)
                continue
            }
            switch backend.decide(cpu) {
            case .step(let s): return s
            case .wait: cpu.wake.wait(lock, seconds: idleWaitSeconds)
            case .waitAtMost(let s): cpu.wake.wait(lock, seconds: s)
            }
        }
    }

    /// Lets KVM finish the last I/O, MMIO or MSR exit without running guest code (`immediate_exit`).
    func completePendingExit(_ cpu: CPUContext) throws {
        cpu.vcpu.requestImmediateExit()
        let e = try cpu.vcpu.runOnce()
        cpu.needsCompletion = false
        cpu.exitCount += 1
        if case .interrupted = e { return }
        try handle(e, cpu: cpu, vcpu: cpu.vcpu)
    }

    /// Runs the CPU's current KVM vCPU until the next exit and handles it. With the userspace local APIC, a pending
    /// fixed interrupt is injected first (or an interrupt window requested).
    func runGuest(_ cpu: CPUContext) throws {
        let v = backend.vcpuToRun(cpu)
        let proceed = try lock.withLock { () throws -> Bool in
            if end.finished { return false }
            // An NMI goes to the vCPU that runs the CPU now (the SMRAM-view one in SMM, whose NMIs SMI entry blocked);
            // KVM holds it there until NMIs are unblocked (an IRET, or RSM, which moves it to the normal-view vCPU).
            if backend.injectsInterrupts && cpu.pendingNMI {
                try v.nmi()
                cpu.pendingNMI = false
                cpu.extraIoctls += 1
            }
            if backend.injectsInterrupts && !cpu.inSMM, let vector = cpu.apic.nextInjectable() {
                if v.readyForInterrupt {
                    try v.interrupt(vector: vector)
                    cpu.apic.didInject(vector: vector)
                    cpu.extraIoctls += 1
                } else {
                    v.requestInterruptWindow = true
                }
            }
            cpu.inKVMRun = v
            cpu.runSerial &+= 1
            return true
        }
        guard proceed else { return }
        let e: VCPUExit
        do {
            e = try v.runOnce()
        } catch {
            lock.withLock { cpu.inKVMRun = nil }
            throw error
        }
        lock.withLock { cpu.inKVMRun = nil }
        cpu.exitCount += 1
        try handle(e, cpu: cpu, vcpu: v)
        try backend.afterExit(e, cpu: cpu, vcpu: v)
    }
}
