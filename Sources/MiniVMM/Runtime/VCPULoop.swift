// SPDX-License-Identifier: MIT
import CKVM
import Foundation
import GuestFirmware
import KVMBridge

/// The next thing a CPU's thread does, decided under the machine lock.
enum CPUStep {
    case exit, complete, reset, initSignal, sipi(UInt8), enterSMM, run
    /// kvm backend: `KVM_SMI`; hotplug work on the CPU's own vCPU.
    case injectSMI, parkKVM, hotAddKVM
}

extension Machine {
    /// One OS thread per guest CPU: decide (under the lock, blocking while there is nothing to do), act,
    /// repeat until the machine finishes.
    func cpuThread(_ cpu: CPUContext) {
        try? VCPU.prepareCurrentThreadForKicks()
        loop: while true {
            let step = lock.withLock { backend == .kvm ? nextKVMStep(cpu) : nextStep(cpu) }
            do {
                switch step {
                case .exit: break loop
                case .complete: try completePendingExit(cpu)
                case .reset: try backend == .kvm ? applyKVMReset(cpu) : applyReset(cpu)
                case .injectSMI: try injectKVMSMI(cpu)
                case .parkKVM: try kvmPark(cpu)
                case .hotAddKVM: try kvmHotAdd(cpu)
                case .initSignal: try applyINIT(cpu)
                case .sipi(let v): applySIPI(cpu, vector: v)
                case .enterSMM: try emulatedSMIEntry(cpu)
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

    /// What both backends decide first (lock held): the end of the run, a parked or stopped CPU (wait), then a
    /// hot-add RESET once the last exit is complete.
    enum SharedStep { case step(CPUStep), wait, next }

    func sharedStep(_ cpu: CPUContext) -> SharedStep {
        if finished { return .step(.exit) }
        if cpu.state == .stopped || cpu.state == .unplugged { return .wait }
        if cpu.pendingReset {
            if cpu.needsCompletion { return .step(.complete) }
            cpu.pendingReset = false
            return .step(.reset)
        }
        return .next
    }

    /// The CPU model's event priorities (lock held): RESET, then INIT (latched while in SMM, as KVM does),
    /// wait-for-SIPI (holds SMIs), then a pending SMI, then HLT wake-ups.
    func nextStep(_ cpu: CPUContext) -> CPUStep {
        while true {
            switch sharedStep(cpu) {
            case .step(let s): return s
            case .wait:
                cpu.wake.wait(lock, seconds: 1)
                continue
            case .next: break
            }
            if cpu.latchedINIT && !cpu.inSMM {
                if cpu.needsCompletion { return .complete }
                cpu.latchedINIT = false
                return .initSignal
            }
            // kvm_apic_accept_events: INIT/SIPI are blocked in SMM (a SIPI is then dropped), INIT is processed
            // first, and a SIPI starts the CPU only in wait-for-SIPI (otherwise it is dropped).
            if let v = cpu.pendingSIPI {
                cpu.pendingSIPI = nil
                if cpu.state == .waitForSIPI && !cpu.inSMM { return .sipi(v) }
            }
            if cpu.state == .waitForSIPI {
                cpu.wake.wait(lock, seconds: 1)
                continue
            }
            if cpu.pendingSMI && !cpu.inSMM {
                if cpu.needsCompletion { return .complete }
                cpu.pendingSMI = false
                return .enterSMM
            }
            if cpu.state == .halted {
                let interruptsOn = cpu.vcpu.syncedRegs.rflags & 0x200 != 0
                if !cpu.inSMM && interruptsOn && cpu.apic.nextInjectable() != nil {
                    cpu.state = .running
                    return .run
                }
                cpu.wake.wait(lock, seconds: 1)
                continue
            }
            return .run
        }
    }

    /// The kvm backend's steps (lock held): KVM itself latches INIT, SIPI and SMIs and halts the vCPU in the
    /// kernel, so the VMM only parks ejected CPUs, applies a hot-add RESET, and issues `KVM_SMI` for APM SMIs.
    func nextKVMStep(_ cpu: CPUContext) -> CPUStep {
        while true {
            if !finished && cpu.kvmParkPending {
                cpu.kvmParkPending = false
                return .parkKVM
            }
            if !finished && cpu.kvmHotAddPending {
                cpu.kvmHotAddPending = false
                return .hotAddKVM
            }
            switch sharedStep(cpu) {
            case .step(let s): return s
            case .wait:
                cpu.wake.wait(lock, seconds: 1)
                continue
            case .next: break
            }
            if cpu.pendingSMI {
                cpu.pendingSMI = false
                return .injectSMI
            }
            return .run
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

    /// Runs the CPU's current KVM vCPU (the SMRAM-view one while in SMM) until the next exit and handles it.
    func runGuest(_ cpu: CPUContext) throws {
        let emulated = backend == .emulated
        let v = emulated && cpu.inSMM ? (cpu.smmVCPU ?? cpu.vcpu) : cpu.vcpu
        let proceed = try lock.withLock { () throws -> Bool in
            if finished { return false }
            if emulated && !cpu.inSMM, let vector = cpu.apic.nextInjectable() {
                if v.readyForInterrupt {
                    try v.interrupt(vector: vector)
                    cpu.apic.didInject(vector: vector)
                    cpu.extraIoctls += 1
                } else {
                    v.requestInterruptWindow = true
                }
            }
            cpu.inKVMRun = v
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
    }

    // MARK: exits

    func handle(_ e: VCPUExit, cpu: CPUContext, vcpu v: VCPU) throws {
        let regs = v.syncedRegs
        let sregs = v.syncedSregs
        let kvmSMM = backend == .kvm
        // Emulated backend: the VMM's own SMM flag; kvm backend: KVM's (kvm_run->flags & KVM_RUN_X86_SMM).
        let inSMM = kvmSMM ? v.inKVMSMM : cpu.inSMM
        let record = ExitRecord(exit: e, inSMM: inSMM, cs: sregs.cs.selector, rip: regs.rip)
        cpu.remember(record)
        if config.trace { traceLine("cpu\(cpu.index) \(record)") }
        if kvmSMM, try observeSMMTransition(cpu, e) { return }
        let action = ExitClassifier.classify(e, inSMM: inSMM, csBase: sregs.cs.base, rip: regs.rip)
        let ctx = AccessContext(cpu: cpu.index, inSMM: inSMM)
        // KVM completes an I/O, MMIO or MSR exit on the next KVM_RUN: before the VMM replaces registers it must
        // let that happen (the emulated backend's SMRAM-view vCPU is never reused that way).
        let completes = kvmSMM || !cpu.inSMM
        switch (e, action) {
        case (.ioOut(let port, let size, let count, let data), _):
            lock.withLock {
                for i in 0..<count {
                    let value = loadLE(data, offset: i * size, size: size)
                    let effects = bus.write(port: port, size: size, value: value, context: ctx)
                    apply(effects, from: cpu)
                }
            }
            if completes { cpu.needsCompletion = true }
        case (.ioIn(let port, let size, let count, let data), _):
            lock.withLock {
                for i in 0..<count {
                    storeLE(data, offset: i * size, size: size, value: bus.read(port: port, size: size, context: ctx))
                }
            }
            if completes { cpu.needsCompletion = true }
        case (.mmioRead(let addr, let data), _):
            let value = lock.withLock { mmioRead(cpu, address: addr, size: data.count, apicBase: sregs.apic_base) }
            storeLE(data, offset: 0, size: data.count, value: UInt32(truncatingIfNeeded: value))
            // SAFETY: an 8-byte MMIO read buffer (kvm_run.mmio.data) holds exactly 8 bytes.
            if data.count == 8 { data.storeBytes(of: value, as: UInt64.self) }
            if completes { cpu.needsCompletion = true }
        case (.mmioWrite(let addr, let data), _):
            // SAFETY: kvm_run.mmio.data holds `len` ≤ 8 bytes; the 8-byte load only happens when len is 8.
            let value = data.count == 8 ? data.load(as: UInt64.self) : UInt64(loadLE(data, offset: 0, size: data.count))
            lock.withLock { mmioWrite(cpu, address: addr, size: data.count, value: value, apicBase: sregs.apic_base) }
            if completes { cpu.needsCompletion = true }
        case (.rdmsr(let index, _), _):
            let value = lock.withLock { msrRead(cpu, index: index, apicBase: sregs.apic_base) }
            v.completeMSRRead(value)
            if completes { cpu.needsCompletion = true }
        case (.wrmsr(let index, let value, _), _):
            let ok = lock.withLock { msrWrite(cpu, index: index, value: value, apicBase: sregs.apic_base) }
            v.completeMSRWrite(accepted: ok)
            if completes { cpu.needsCompletion = true }
        case (_, .halt):
            lock.withLock { cpu.state = .halted }
            if !cpu.inSMM { cpu.needsCompletion = false }
        case (_, .resume):
            if case .irqWindowOpen = e { v.requestInterruptWindow = false }
        case (_, .smmStep):
            if isRSMAtCurrentIP(regs: regs, sregs: sregs) { try emulatedRSM(cpu, smm: v) }
        case (_, .smmTrap(let vector)):
            try smmTrap(cpu, vector: vector, smm: v)
        case (_, .tripleFault(let why)):
            if cpu.inSMM, isRSMAtCurrentIP(regs: regs, sregs: sregs) {
                // A handler that left real mode faults on RSM through the trap IVT: still an RSM.
                try emulatedRSM(cpu, smm: v)
            } else {
                tripleFault(cpu, why)
            }
        case (_, .fatal(let why)):
            stopCPU(cpu, .cpuStopped, why)
        default:
            stopCPU(cpu, .cpuStopped, "unhandled exit \(e.summary)")
        }
    }

    func tripleFault(_ cpu: CPUContext, _ why: String) { stopCPU(cpu, .tripleFault, why) }

    /// Stops `cpu` for good and ends the run with `outcome`; the report keeps its registers and last exits.
    func stopCPU(_ cpu: CPUContext, _ outcome: RunOutcome, _ why: String) {
        lock.withLock {
            cpu.state = .stopped
            finish(outcome, "CPU \(cpu.index)\(cpu.inSMM ? " (in SMM)" : ""): \(why)")
        }
    }

    func isRSMAtCurrentIP(regs: kvm_regs, sregs: kvm_sregs) -> Bool {
        guard let bytes = memory.fetch(sregs.cs.base &+ regs.rip, count: 6) else { return false }
        return ExitClassifier.isRSM(bytes)
    }

    func traceLine(_ s: String) {
        FileHandle.standardError.write("trace: \(s)\n".data(using: .utf8)!)
    }

    // MARK: MMIO and MSRs (lock held)

    func isX2APIC(_ apicBase: UInt64) -> Bool {
        apicBase & UInt64(APIC_BASE_EN | APIC_BASE_EXTD) == UInt64(APIC_BASE_EN | APIC_BASE_EXTD)
    }

    func mmioRead(_ cpu: CPUContext, address: UInt64, size: Int, apicBase: UInt64) -> UInt64 {
        let ones: UInt64 = size >= 8 ? ~0 : (1 << (UInt64(size) * 8)) - 1
        if address >= Layout.apicBase && address < Layout.apicBase + Layout.apicSize && !isX2APIC(apicBase) {
            return UInt64(cpu.apic.readMMIO(offset: UInt32(address - Layout.apicBase), size: size))
        }
        if !cpu.inSMM && isClosedSMRAM(address, count: size) {
            smramAccesses.reads += 1
            if smramAccesses.firstAddresses.count < 8 { smramAccesses.firstAddresses.append(address) }
            return ones
        }
        unknownMMIO += 1
        return ones
    }

    func mmioWrite(_ cpu: CPUContext, address: UInt64, size: Int, value: UInt64, apicBase: UInt64) {
        if address >= Layout.apicBase && address < Layout.apicBase + Layout.apicSize && !isX2APIC(apicBase) {
            if let ipi = cpu.apic.writeMMIO(
                offset: UInt32(address - Layout.apicBase), value: UInt32(truncatingIfNeeded: value), size: size)
            {
                deliver(ipi, from: cpu)
            }
            return
        }
        if !cpu.inSMM && isClosedSMRAM(address, count: size) {
            smramAccesses.writes += 1  // dropped, like QEMU's tseg_blackhole
            if smramAccesses.firstAddresses.count < 8 { smramAccesses.firstAddresses.append(address) }
            return
        }
        if address >= memory.romBase || (address >= Layout.oneMiB - memory.romAliasSize && address < Layout.oneMiB) {
            romWrites += 1
            return
        }
        unknownMMIO += 1
    }

    /// RDMSR that KVM sent to userspace: x2APIC registers; everything else (MSR_IA32_SMBASE included, which
    /// only the host may access) raises #GP as KVM would.
    func msrRead(_ cpu: CPUContext, index: UInt32, apicBase: UInt64) -> UInt64? {
        if index >= UInt32(MSR_X2APIC_BASE) && index <= UInt32(MSR_X2APIC_BASE) + 0xFF {
            switch cpu.apic.readMSR(index, x2APICEnabled: isX2APIC(apicBase)) {
            case .value(let v): return v
            case .generalProtection: return nil
            }
        }
        unknownMSRs += 1
        return nil
    }

    func msrWrite(_ cpu: CPUContext, index: UInt32, value: UInt64, apicBase: UInt64) -> Bool {
        if index >= UInt32(MSR_X2APIC_BASE) && index <= UInt32(MSR_X2APIC_BASE) + 0xFF {
            let r = cpu.apic.writeMSR(index, value: value, x2APICEnabled: isX2APIC(apicBase))
            if let ipi = r.ipi { deliver(ipi, from: cpu) }
            return !r.gp
        }
        unknownMSRs += 1
        return false
    }

    // MARK: interrupts and IPIs (lock held)

    func wakeOrKick(_ c: CPUContext) {
        c.wake.signal()
        c.inKVMRun?.kick()
    }

    /// Delivers an IPI with the local APIC's semantics (APIC ID = CPU index, x2APIC or xAPIC alike):
    /// SMI and INIT are latched, SIPI only reaches a CPU in wait-for-SIPI (otherwise it is dropped, as in
    /// KVM), fixed vectors go to the IRR.
    func deliver(_ ipi: InterruptCommand, from sender: CPUContext) {
        if ipi.isINITDeassert { return }
        guard ipi.destination.isSupported else {
            log.debug("dropped IPI with unsupported destination \(ipi.destination)")
            return
        }
        let present = cpus.filter { $0.present }.map { $0.index }
        for t in ipi.destination.targets(sender: sender.index, present: present) {
            let c = cpus[t]
            switch ipi.mode {
            case .fixed:
                c.apic.acceptFixed(vector: ipi.vector)
                wakeOrKick(c)
            case .smi:
                c.pendingSMI = true
                wakeOrKick(c)
            case .initIPI:
                c.latchedINIT = true
                wakeOrKick(c)
            case .startup:
                // As KVM's APIC_DM_STARTUP: record the vector and the pending SIPI unconditionally; whether it
                // starts the CPU is decided when the target processes its events (kvm_apic_accept_events).
                c.pendingSIPI = ipi.vector
                c.wake.signal()
            default:
                log.debug("IPI delivery mode \(ipi.mode) not modelled; dropped")
            }
        }
    }

    /// The hotplug controller's SCI, delivered to CPU 0 as a fixed vector (lock held); on the kvm backend as an
    /// MSI into KVM's local APIC (physical destination 0, fixed, edge).
    func raiseSCI() {
        if backend == .kvm {
            do {
                try vm.signalMSI(address: Layout.apicBase, data: UInt32(MINIVMM_SCI_VECTOR))
            } catch {
                noteFailure("delivering the SCI failed: \(error.description)")
            }
            return
        }
        cpus[0].apic.acceptFixed(vector: UInt8(MINIVMM_SCI_VECTOR))
        wakeOrKick(cpus[0])
    }

    /// APM_CNT write: ICH9 raises an SMI on every present CPU when broadcast was negotiated, else only on the
    /// writing CPU (QEMU `ich9_apm_ctrl_changed`).
    func apmSMI(from cpu: CPUContext) {
        if smiFeatures.negotiatedFeatures & UInt64(ICH9_LPC_SMI_F_BROADCAST) != 0 {
            for c in cpus where c.present {
                c.pendingSMI = true
                wakeOrKick(c)
            }
        } else {
            cpu.pendingSMI = true
        }
    }
}

// SAFETY (loadLE/storeLE): callers pass the I/O or MMIO buffer decoded from kvm_run, which holds count × size
// bytes; indices stay below offset + size within it.
@inline(__always)
func loadLE(_ data: UnsafeRawBufferPointer, offset: Int, size: Int) -> UInt32 {
    var v: UInt32 = 0
    for i in 0..<min(size, 4) { v |= UInt32(data[offset + i]) << (8 * UInt32(i)) }
    return v
}

@inline(__always)
func loadLE(_ data: UnsafeMutableRawBufferPointer, offset: Int, size: Int) -> UInt32 {
    loadLE(UnsafeRawBufferPointer(data), offset: offset, size: size)
}

@inline(__always)
func storeLE(_ data: UnsafeMutableRawBufferPointer, offset: Int, size: Int, value: UInt32) {
    for i in 0..<min(size, 4) { data[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
}
