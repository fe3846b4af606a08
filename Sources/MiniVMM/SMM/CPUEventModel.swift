// SPDX-License-Identifier: MIT

/// The emulated backend's CPU model of INIT, SIPI and SMI latching, on the VMM's CPU fields (machine lock held; no
/// vCPU access, so the rules are testable without KVM). It follows KVM:
///
/// - `kvm_apic_accept_events` (lapic.c): INIT and SIPI are blocked in SMM (`kvm_apic_init_sipi_allowed`); INIT stays
///   latched until RSM, a SIPI is dropped; INIT is processed before SIPI; a SIPI starts only a CPU waiting for it
///   and is dropped otherwise.
/// - wait-for-SIPI (`KVM_MP_STATE_INIT_RECEIVED`; SDM Vol. 3C, activity state wait-for-SIPI: "blocks external
///   interrupts, NMIs, INIT signals,
///   and SMIs"): `vcpu_block` never enters the guest, so the SMI stays a `KVM_REQ_SMI` request — a bit, so several
///   merge into one. The INIT that `vcpu_block` processes (`kvm_vcpu_reset(vcpu, true)`) clears only
///   `smi_pending`, not the request, so the SMI survives it; the SIPI makes the CPU runnable, `vcpu_enter_guest`
///   turns the request into `smi_pending` and `kvm_check_and_inject_events` takes it (before NMI and IRQ) ahead of
///   the first instruction at the SIPI entry point (reference/kvm-smm.md §8). A halted CPU also waits in
///   `vcpu_block`, so the same holds for it.
/// - A CPU that enters the guest (running, or in SMM) turns the request into `smi_pending` first
///   (`vcpu_enter_guest` checks `KVM_REQ_SMI` before `KVM_REQ_EVENT`), then processes a latched INIT, whose
///   `kvm_vcpu_reset` sets `smi_pending = 0` on both the INIT and RESET paths (reference/kvm-smm.md §4): an SMI
///   pending together with an INIT on such a CPU is lost, including an SMI held in SMM with an INIT latched there,
///   at RSM. RESET (hot-add) clears it too, which the hotplug path does.
/// - `inject_pending_event`: a pending SMI is taken outside SMM before a halted CPU's interrupt wake-up; a halted
///   CPU wakes on an injectable interrupt only with RFLAGS.IF set, and on an NMI (outside SMM) unless NMIs are
///   blocked (`kvm_vcpu_has_events`: `nmi_pending && nmi_allowed`).
enum CPUEventModel {
    /// The next step for `cpu`; `interruptsEnabled` is RFLAGS.IF of its normal-view vCPU and `nmiBlocked` its NMI
    /// mask (read only if it halted).
    static func decide(
        _ cpu: CPUContext, interruptsEnabled: @autoclosure () -> Bool, nmiBlocked: @autoclosure () -> Bool = false
    ) -> ModelDecision {
        if cpu.latchedINIT && !cpu.inSMM {
            if cpu.needsCompletion { return .step(.complete) }
            cpu.latchedINIT = false
            if cpu.state != .waitForSIPI && cpu.state != .halted { cpu.pendingSMI = false }
            return .step(.model(.initSignal))
        }
        if let v = cpu.pendingSIPI {
            cpu.pendingSIPI = nil
            if cpu.state == .waitForSIPI && !cpu.inSMM { return .step(.model(.sipi(v))) }
        }
        // Wait-for-SIPI holds a pending SMI (and everything else) until the SIPI.
        if cpu.state == .waitForSIPI { return .wait }
        if cpu.pendingSMI && !cpu.inSMM {
            if cpu.needsCompletion { return .step(.complete) }
            cpu.pendingSMI = false
            return .step(.model(.deliverSMI))
        }
        if cpu.state == .halted {
            if !cpu.inSMM && cpu.pendingNMI && !nmiBlocked() {
                cpu.state = .running
                return .step(.run)
            }
            if !cpu.inSMM && interruptsEnabled() && cpu.apic.nextInjectable() != nil {
                cpu.state = .running
                return .step(.run)
            }
            return .wait
        }
        return .step(.run)
    }

    /// A SIPI arrives (KVM's APIC_DM_STARTUP): it is recorded, and whether it starts the CPU is decided when the
    /// CPU processes its events (`decide`). A CPU in SMM drops it at once, as KVM does (the SIPI's KVM_REQ_EVENT
    /// kicks the vCPU, and `kvm_apic_accept_events` clears KVM_APIC_SIPI while INIT is blocked in SMM): it must not
    /// start the CPU after its RSM, when an INIT latched in SMM is processed.
    static func acceptSIPI(_ cpu: CPUContext, vector: UInt8) {
        cpu.pendingSIPI = cpu.inSMM ? nil : vector
    }

    /// INIT was performed: the BSP restarts at the reset vector, an AP waits for SIPI (a held SMI stays pending).
    static func didINIT(_ cpu: CPUContext) {
        cpu.state = cpu.isBSP ? .running : .waitForSIPI
    }

    /// A SIPI started the CPU at its vector.
    static func didSIPI(_ cpu: CPUContext) {
        cpu.state = .running
    }
}
