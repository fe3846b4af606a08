// SPDX-License-Identifier: MIT
import KVMBridge

/// What a CPU's thread does next, decided under the machine lock.
enum CPUStep: Equatable {
    case exit
    /// Let KVM complete the last I/O, MMIO or MSR exit (`immediate_exit`) before registers are replaced.
    case complete
    /// Hotplug work on the CPU's own vCPU.
    case hotplug(HotplugWork)
    /// A step of the backend's CPU model (SMI delivery, INIT, SIPI).
    case model(ModelStep)
    case run
}

/// The steps a backend's CPU model takes between guest runs.
enum ModelStep: Equatable {
    /// Deliver a pending SMI: emulated, perform SMI entry; kvm, `KVM_SMI`.
    case deliverSMI
    /// Emulated: INIT (SDM 10.4.7.3, KVM `kvm_vcpu_reset(vcpu, true)`).
    case initSignal
    /// Emulated: STARTUP with this vector.
    case sipi(UInt8)
}

/// What a backend's model decides for a CPU once the shared checks (end of run, hotplug work, parked CPUs) pass.
enum ModelDecision: Equatable {
    case step(CPUStep)
    /// Nothing to do until the CPU is woken.
    case wait
    /// Nothing to do until the CPU is woken or `seconds` have passed (state only KVM sees may change meanwhile).
    case waitAtMost(seconds: Double)
}

/// An SMM backend (DESIGN.md §2): how SMIs reach a CPU, how SMM code runs and is observed, how SMBASE is read and
/// set, and how hotplug treats a CPU. The run loop, the exit dispatcher and the hotplug path call only this; the
/// SMI entry, RSM, RESET and hotplug records both backends feed live in `ObservationRecorder.swift`.
///
/// - `EmulatedSMMBackend`: the VMM models SMM (SDM Vol. 3C ch. 34, KVM's smm.c) on a second VM, the SMRAM view.
/// - `KVMSMMBackend`: KVM's own SMM (address space 1, `KVM_SMI`, MSR 0x9E), observed from exits.
protocol SMMBackend: AnyObject {
    var kind: SMMBackendKind { get }

    /// Maps `region` (already in the normal view) into the view SMM code sees: the SMRAM-view VM (emulated) or
    /// memslot address space 1 (kvm). Also called for SMRAM windows, which stay mapped there for good.
    func mapIntoSMMView(_ region: MemoryRegion) throws

    /// Removes a slot from the view SMM code sees (the PAM regions and the A-segment change there too).
    func unmapFromSMMView(slot: UInt16) throws

    /// Whether CPUs absent at boot get their vCPU at boot too (and are hidden until their hot-add RESET) rather
    /// than when they are hot-added.
    var createsAbsentVCPUsAtBoot: Bool { get }
    /// vCPUs the backend created besides one per CPU (the emulated backend's SMRAM-view vCPUs), for the report's
    /// host memory figures.
    var extraVCPUs: Int { get }

    /// A vCPU was created (machine construction, before any CPU thread runs): read what the backend tracks.
    func attach(_ cpu: CPUContext) throws

    /// The model's next step for `cpu` (lock held), after the end of the run, hotplug work and parked CPUs.
    func decide(_ cpu: CPUContext) -> ModelDecision

    /// Performs a model step on the CPU's own thread (its last exit is complete).
    func perform(_ step: ModelStep, on cpu: CPUContext) throws

    /// Performs hotplug work on the CPU's own thread and records it (lock not held).
    func perform(_ work: HotplugWork, on cpu: CPUContext) throws

    /// The vCPU that runs the CPU now (the emulated backend runs SMM code on its SMRAM-view vCPU).
    func vcpuToRun(_ cpu: CPUContext) -> VCPU

    /// Whether the VMM's userspace local APIC injects interrupts into this vCPU (emulated) or KVM's does.
    var injectsInterrupts: Bool { get }

    /// Whether `cpu` was in SMM at this exit of `vcpu` (emulated: the VMM's flag; kvm: `KVM_RUN_X86_SMM`).
    func inSMM(_ cpu: CPUContext, exitedVCPU vcpu: VCPU) -> Bool

    /// Looks at every exit before it is dispatched (kvm: SMM transitions seen in `kvm_run->flags`). Returns true
    /// when the exit was only an observation step and needs no further handling.
    func observe(_ exit: VCPUExit, cpu: CPUContext) throws -> Bool

    /// Handles the SMM-specific actions (`smmStep`, `smmTrap`, a triple fault at RSM). Returns false when the
    /// action is not the backend's to handle.
    func handle(_ action: ExitAction, cpu: CPUContext, vcpu: VCPU) throws -> Bool

    /// Whether an I/O, MMIO or MSR exit of `cpu` is completed by its next KVM_RUN of the normal-view vCPU.
    func exitCompletesOnNextRun(_ cpu: CPUContext) -> Bool

    /// Runs after an exit of `vcpu` was handled (emulated: completes an SMM exit at once where the next
    /// instruction must be seen first).
    func afterExit(_ exit: VCPUExit, cpu: CPUContext, vcpu: VCPU) throws

    /// Raises the hotplug controller's SCI (lock held).
    func raiseSCI()

    /// Sets the run state of a CPU being hot-added, before its hotplug work runs (lock held).
    func stateAtHotAdd(_ action: HotAddAction) -> CPURunState

    /// Right before the machine's phase or SMRAM decode changes (lock held): the kvm backend looks at every CPU that
    /// ran since its last look, so that an SMI it finds later is known to have entered under the new state.
    func beforeObservedStateChange()

    /// After the CPU threads stopped: updates run states from what the backend holds and returns every way in
    /// which that differs from what the VMM observed.
    func endOfRun(_ cpus: [CPUContext]) -> [String]

    /// On the CPU's own thread before it first runs: per-CPU set-up the backend would otherwise do on a serial
    /// path later (the emulated backend creates the CPU's SMRAM-view vCPU here, not inside its first SMI entry).
    func prepareOnCPUThread(_ cpu: CPUContext) throws
}

extension SMMBackend {
    func afterExit(_ exit: VCPUExit, cpu: CPUContext, vcpu: VCPU) throws {}

    /// Called with the lock held right before the machine's phase or SMRAM decode changes (no-op by default).
    func beforeObservedStateChange() {}

    func prepareOnCPUThread(_ cpu: CPUContext) throws {}
}

/// The backend for a machine (`kind` is never `.auto`: the CLI resolves it with `BackendChoice.choose`).
func makeSMMBackend(_ kind: SMMBackendKind, machine: Machine) throws -> SMMBackend {
    switch kind {
    case .kvm: try KVMSMMBackend(machine: machine)
    case .emulated, .auto: try EmulatedSMMBackend(machine: machine)
    }
}
