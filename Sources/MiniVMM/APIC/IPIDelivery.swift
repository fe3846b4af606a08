// SPDX-License-Identifier: MIT
import GuestFirmware

/// Interrupts and IPIs between CPUs of the userspace local APIC model (the emulated backend; KVM's in-kernel local
/// APIC does this itself on the kvm backend), and the APM broadcast SMI. Lock held.
extension Machine {
    /// Delivers an IPI with the local APIC's semantics (APIC ID = CPU index, x2APIC or xAPIC alike):
    /// SMI, NMI and INIT are latched, SIPI only reaches a CPU in wait-for-SIPI (otherwise it is dropped, as in
    /// KVM), fixed vectors go to the IRR.
    func deliver(_ ipi: InterruptCommand, from sender: CPUContext) {
        if ipi.isINITDeassert { return }
        guard ipi.destination.isSupported else {
            log.debug("dropped IPI with unsupported destination \(ipi.destination)")
            return
        }
        let targets: [Int]
        switch ipi.destination {
        case .physical(let id):
            // One CPU: no list of every present CPU (a boot relocation sends two directed IPIs per CPU).
            let i = Int(id)
            targets = i < cpus.count && cpus[i].present ? [i] : []
        case .selfOnly:
            targets = [sender.index]
        default:
            let present = cpus.filter { $0.present }.map { $0.index }
            targets = ipi.destination.targets(sender: sender.index, present: present)
        }
        for t in targets {
            let c = cpus[t]
            switch ipi.mode {
            case .fixed:
                c.apic.acceptFixed(vector: ipi.vector)
                wakeOrKick(c)
            case .smi:
                c.pendingSMI = true
                wakeOrKick(c)
            case .nmi:
                c.pendingNMI = true
                wakeOrKick(c)
            case .initIPI:
                c.latchedINIT = true
                wakeOrKick(c)
            case .startup:
                CPUEventModel.acceptSIPI(c, vector: ipi.vector)
                c.wake.signal()
            default:
                log.debug("IPI delivery mode \(ipi.mode) not modelled; dropped")
            }
        }
    }

    /// APM_CNT write: ICH9 raises an SMI on every present CPU when broadcast was negotiated, else only on the
    /// writing CPU (QEMU `ich9_apm_ctrl_changed`). Each backend delivers the pending SMI its own way.
    func apmSMI(from cpu: CPUContext) {
        if devices.smiFeatures.negotiatedFeatures & UInt64(ICH9_LPC_SMI_F_BROADCAST) != 0 {
            for c in cpus where c.present {
                c.pendingSMI = true
                wakeOrKick(c)
            }
        } else {
            cpu.pendingSMI = true
        }
    }
}
