// SPDX-License-Identifier: MIT

/// How the emulated backend spreads the vCPUs of one view (normal or SMRAM) over KVM VMs that share guest memory:
/// CPU `i` is vCPU id `i % perVM` of VM `i / perVM`. KVM caps the vCPUs of one VM (`KVM_CAP_MAX_VCPUS`, 1024 on
/// this kvm_pvm host) and their ids (`KVM_CAP_MAX_VCPU_ID`), but the emulated backend keeps nothing per VM that
/// ties its CPUs together: the local APICs, IPIs, SMI entry and RSM are the VMM's, the APIC ID comes from the
/// CPUID each vCPU gets (`Machine.cpuid(for:)`), and every memslot change is applied to every VM of the view. The
/// kvm backend needs one VM (KVM's SMM and in-kernel local APICs), so it only ever has one shard.
struct VCPUShards: Equatable, Sendable {
    /// Possible CPUs.
    let cpus: Int
    /// vCPUs per KVM VM (≥ 1).
    let perVM: Int

    init(cpus: Int, perVM: Int) {
        self.cpus = max(0, cpus)
        self.perVM = max(1, perVM)
    }

    /// The vCPUs a VM may hold on this host: `KVM_CAP_MAX_VCPUS`, and ids below `KVM_CAP_MAX_VCPU_ID` (vCPU ids
    /// restart at 0 in every VM), or `override` when it is smaller (tests inject a small limit).
    static func perVMLimit(maxVCPUs: Int, maxVCPUID: Int, override: Int? = nil) -> Int {
        var n = min(maxVCPUs, maxVCPUID)
        if let o = override { n = min(n, o) }
        return max(1, n)
    }

    /// VMs needed for `cpus` vCPUs (at least one: a machine has a VM before it has vCPUs).
    var vmCount: Int { max(1, (cpus + perVM - 1) / perVM) }

    /// The VM of CPU `index` and its vCPU id there (`index` in 0..<cpus).
    func location(of index: Int) -> (vm: Int, vcpuID: UInt32) {
        (index / perVM, UInt32(index % perVM))
    }

    /// The CPUs of VM `vm`, in order.
    func cpus(ofVM vm: Int) -> Range<Int> {
        let lo = min(cpus, vm * perVM)
        return lo..<min(cpus, lo + perVM)
    }
}
