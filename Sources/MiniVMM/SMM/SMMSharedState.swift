// SPDX-License-Identifier: MIT
import CKVM
import KVMBridge

/// The per-CPU state that SMI entry and RSM leave alone, which the emulated backend must carry between a CPU's
/// normal-view vCPU and its SMRAM-view vCPU (two KVM vCPUs standing for one CPU).
///
/// On hardware and on KVM the SMI handler runs with the interrupted code's x87/SSE/AVX registers, XCR0, DR0–DR3
/// and model-specific registers, and whatever it changes in them is still there after RSM: SDM Vol. 3C §34.5 (the
/// processor saves only the state-save map; "the processor does not save the FPU state", so a handler that uses
/// the FPU saves and restores it itself), and KVM's `enter_smm` / `emulator_leave_smm` (arch/x86/kvm/smm.c) touch
/// none of it. DR6 and DR7 are in the map: entry saves the live values (`kvm_get_dr`) and loads DR7 = 0x400, RSM
/// reloads both from the map (`rsm_load_state_*` → `kvm_set_dr`).
struct SharedCPUState {
    /// `struct kvm_debugregs`: DR0–DR3, DR6, DR7.
    var debug: kvm_debugregs
    /// `KVM_GET_XSAVE(2)`'s buffer (empty without `KVM_CAP_XSAVE`).
    var xsave: [UInt8]
    /// `struct kvm_xcrs` (nil without `KVM_CAP_XCRS`).
    var xcrs: kvm_xcrs?
    /// Values of ``SharedStatePlan/msrs``, in that order.
    var msrs: [UInt64]
    /// The TSC offset (nil without the attribute): both vCPUs then read the same TSC.
    var tscOffset: UInt64?

    /// Which parts differ from `other`: each differing part costs one SET ioctl.
    func differingParts(from other: SharedCPUState?) -> Parts {
        guard let o = other else { return .all }
        var p: Parts = []
        if !bytesEqual(debug, o.debug) { p.insert(.debug) }
        if xsave != o.xsave { p.insert(.xsave) }
        switch (xcrs, o.xcrs) {
        case (let a?, let b?): if !bytesEqual(a, b) { p.insert(.xcrs) }
        case (nil, nil): break
        default: p.insert(.xcrs)
        }
        if msrs != o.msrs { p.insert(.msrs) }
        if tscOffset != o.tscOffset { p.insert(.tsc) }
        return p
    }

    struct Parts: OptionSet {
        let rawValue: UInt8
        static let debug = Parts(rawValue: 1)
        static let xsave = Parts(rawValue: 2)
        static let xcrs = Parts(rawValue: 4)
        static let msrs = Parts(rawValue: 8)
        static let tsc = Parts(rawValue: 16)
        static let all: Parts = [.debug, .xsave, .xcrs, .msrs, .tsc]
    }
}

/// What the backend carries for every CPU of a machine, decided once from the host's capabilities and
/// `KVM_GET_MSR_INDEX_LIST` (the same for every vCPU: they share one CPUID apart from the APIC ID).
struct SharedStatePlan: Sendable {
    /// The XSAVE buffer size (`KVM_CAP_XSAVE2`, else 4096 with `KVM_CAP_XSAVE`), nil without XSAVE support.
    let xsaveSize: Int?
    let carriesXCRs: Bool
    /// The TSC offset attribute exists: the TSC is carried as its offset, exactly (the two vCPUs belong to two VMs
    /// created at different times, and KVM starts each vCPU's TSC at 0 on most hosts).
    let carriesTSCOffset: Bool
    /// The MSRs carried, in `KVM_GET_MSRS` order.
    let msrs: [UInt32]

    /// MSRs of `KVM_GET_MSR_INDEX_LIST` that are not carried, and why:
    /// - the TSC and what derives from it (0x10 IA32_TSC, 0x3B TSC_ADJUST, 0x6E0 TSC_DEADLINE): a value copied
    ///   between vCPUs is stale by the time it lands; the TSC is carried as the vCPU's TSC offset instead (exact),
    ///   where KVM has that attribute (the TSC deadline timer is the userspace local APIC's business here);
    /// - KVM's paravirtual MSRs (0x11, 0x12, 0x4B564D00–0x4B564DFF: kvmclock, steal time, async PF, PV EOI, poll
    ///   control): they configure the hypervisor rather than the CPU, and enabling them on the SMRAM-view vCPU
    ///   would make KVM write the guest's pvclock and steal-time areas from a second vCPU;
    /// - MSR_SMI_COUNT (0x34): KVM's count of the SMIs it took, never written by the guest (and always 0 here,
    ///   where KVM takes none);
    /// - read-only identification MSRs, the same on every vCPU of the same CPUID: 0x8B IA32_BIOS_SIGN_ID, 0xCE
    ///   MSR_PLATFORM_INFO, 0x10A ARCH_CAPABILITIES, 0x345 PERF_CAPABILITIES, 0xFE MTRRcap;
    /// - the last-branch records 0x1DB–0x1DE (KVM reads them as 0 and ignores writes).
    static let excluded = Set<UInt32>([0x10, 0x3B, 0x6E0, 0x11, 0x12, 0x34, 0x8B, 0xCE, 0x10A, 0x345, 0xFE])
        .union(0x1DB...0x1DE)

    /// MTRRs: KVM emulates them (`kvm_mtrr_get_msr`) but leaves them out of `KVM_GET_MSR_INDEX_LIST`; QEMU saves
    /// them when the guest CPUID has MTRR: IA32_MTRR_DEF_TYPE, the eleven fixed-range MTRRs and the eight
    /// variable-range pairs KVM offers (`KVM_NR_VAR_MTRR`).
    static let mtrrs: [UInt32] = [0x2FF, 0x250, 0x258, 0x259] + Array(0x268...0x26F) + Array(0x200...0x20F)

    /// Whether MSR `index` of the index list is per-CPU architectural state to carry.
    static func carries(_ index: UInt32) -> Bool {
        !excluded.contains(index) && index >> 8 != 0x4B56_4D
    }

    /// Decides the plan with `vcpu` (a normal-view vCPU that has not run yet): every MSR of the index list that
    /// ``carries(_:)`` accepts and the MTRRs, each kept only if KVM reads it and takes the value back
    /// (host-initiated `KVM_GET_MSRS` / `KVM_SET_MSRS` of one MSR; done once per machine). Returns the plan and the
    /// ioctls it took.
    static func probe(kvm: KVM, vcpu: VCPU) throws -> (SharedStatePlan, ioctls: Int) {
        var xsaveSize: Int?
        if kvm.has(.xsave) {
            let size2 = (try? kvm.checkExtensionInt(.xsave2)) ?? 0
            xsaveSize = max(size2, MemoryLayout<kvm_xsave>.size)
        }
        var ioctls = 0
        var candidates = try kvm.msrIndexList().filter(carries)
        ioctls += 1
        for m in mtrrs where !candidates.contains(m) { candidates.append(m) }
        var kept: [UInt32] = []
        for m in candidates {
            ioctls += 1
            guard let v = try vcpu.getMSRs([m])[m] else { continue }
            ioctls += 1
            if try vcpu.setMSRs([(m, v)]) == 1 { kept.append(m) }
        }
        ioctls += 1
        let plan = SharedStatePlan(
            xsaveSize: xsaveSize, carriesXCRs: kvm.has(.xcrs), carriesTSCOffset: vcpu.hasTSCOffsetAttribute, msrs: kept)
        return (plan, ioctls)
    }

    /// Reads the state from `vcpu`: one ioctl per part (`KVM_GET_DEBUGREGS`, `KVM_GET_XSAVE(2)`, `KVM_GET_XCRS`,
    /// `KVM_GET_MSRS`, `KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)`).
    func read(_ vcpu: VCPU) throws -> (SharedCPUState, ioctls: Int) {
        var n = 1
        let debug = try vcpu.getDebugRegs()
        var xsave: [UInt8] = []
        if let size = xsaveSize {
            xsave = try vcpu.getXSAVE(size: size)
            n += 1
        }
        var xcrs: kvm_xcrs?
        if carriesXCRs {
            xcrs = try vcpu.getXCRs()
            n += 1
        }
        var msrValues: [UInt64] = []
        if !msrs.isEmpty {
            let got = try vcpu.getMSRs(msrs)
            n += 1
            msrValues = try msrs.map { m throws(MachineError) in
                guard let v = got[m] else {
                    throw MachineError.kvm("KVM_GET_MSRS stopped at MSR 0x\(String(m, radix: 16)) on vCPU \(vcpu.id)")
                }
                return v
            }
        }
        var tscOffset: UInt64?
        if carriesTSCOffset {
            tscOffset = try vcpu.getTSCOffset()
            n += 1
        }
        return (SharedCPUState(debug: debug, xsave: xsave, xcrs: xcrs, msrs: msrValues, tscOffset: tscOffset), n)
    }

    /// Loads into `vcpu`, which holds `old`, the parts of `state` that differ, and of the MSRs only those whose value
    /// differs (a write to an MTRR makes KVM zap the guest's mappings, so unchanged MSRs are never rewritten).
    /// Returns the ioctls it took.
    func write(_ state: SharedCPUState, over old: SharedCPUState?, to vcpu: VCPU) throws -> Int {
        let parts = state.differingParts(from: old)
        var changedMSRs = Array(zip(msrs, state.msrs))
        if let o = old, o.msrs.count == state.msrs.count {
            changedMSRs = changedMSRs.enumerated().filter { o.msrs[$0.offset] != $0.element.1 }.map(\.element)
        }
        return try write(state, parts: parts, msrs: changedMSRs, to: vcpu)
    }

    /// Loads `parts` of `state` into `vcpu` (XCR0 before the XSAVE image, so every component it holds is enabled),
    /// and `changedMSRs` when `parts` has `.msrs`. Returns the ioctls it took.
    private func write(
        _ state: SharedCPUState, parts: SharedCPUState.Parts, msrs changedMSRs: [(UInt32, UInt64)], to vcpu: VCPU
    ) throws -> Int {
        var n = 0
        if parts.contains(.debug) {
            var d = state.debug
            d.flags = 0
            try vcpu.setDebugRegs(d)
            n += 1
        }
        if parts.contains(.xcrs), let x = state.xcrs {
            try vcpu.setXCRs(x)
            n += 1
        }
        if parts.contains(.xsave), !state.xsave.isEmpty {
            try vcpu.setXSAVE(state.xsave)
            n += 1
        }
        if parts.contains(.tsc), let t = state.tscOffset {
            try vcpu.setTSCOffset(t)
            n += 1
        }
        if parts.contains(.msrs), !changedMSRs.isEmpty {
            let accepted = try vcpu.setMSRs(changedMSRs)
            n += 1
            if accepted != changedMSRs.count {
                let m = changedMSRs[min(accepted, changedMSRs.count - 1)].0
                throw MachineError.kvm(
                    "KVM_SET_MSRS refused MSR 0x\(String(m, radix: 16)) (\(accepted) of \(changedMSRs.count) set) on vCPU \(vcpu.id)"
                )
            }
        }
        return n
    }
}
