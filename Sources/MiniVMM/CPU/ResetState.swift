// SPDX-License-Identifier: MIT
import CKVM

/// The SMBASE register across RESET and INIT (Intel SDM Vol. 3C §34.11 "SMBASE Relocation"; KVM
/// `kvm_vcpu_reset()` in arch/x86/kvm/x86.c).
///
/// SMBASE is not part of ``ArchState``: like KVM's `vcpu->arch.smbase` (reachable from the host only as
/// `MSR_IA32_SMBASE`, 0x9E) the VMM keeps it per vCPU next to the architectural state.
/// - A hardware RESET sets it to 0x30000 (`if (!init_event) vcpu->arch.smbase = 0x30000;`).
/// - An INIT leaves it unchanged ("does not change it on an INIT", SDM §34.11), so a relocated SMBASE survives the
///   INIT of an INIT-SIPI-SIPI sequence.
/// - RSM reloads it from the save-state map (see ``SaveStateFormat/smbaseFieldOffset``).
public enum SMBASERule {
    /// SMBASE after a hardware RESET (SDM §34.4 "SMRAM": "the default … SMBASE is 30000H").
    public static let afterReset: UInt32 = 0x30000

    /// SMBASE after an INIT: the value it had before.
    public static func afterINIT(current: UInt32) -> UInt32 { current }
}

/// Values of the local APIC base MSR (`MSR_IA32_APICBASE`, 0x1B) used at RESET.
public enum APICBase {
    /// `APIC_DEFAULT_PHYS_BASE`.
    public static let defaultPhysicalBase: UInt64 = 0xFEE0_0000
    /// `MSR_IA32_APICBASE_BSP` (bit 8).
    public static let bsp: UInt64 = 1 << 8
    /// `MSR_IA32_APICBASE_ENABLE` (bit 11).
    public static let enable: UInt64 = 1 << 11
}

extension ArchState {
    /// CPUID.1:EAX signature KVM puts in RDX when the guest has no CPUID leaf 1 (`kvm_vcpu_reset`: `0x600`).
    public static let defaultCPUIDSignature: UInt32 = 0x600

    /// The state after power-on / hardware RESET.
    ///
    /// Models Intel SDM Vol. 3A Table 10-1 "IA-32 and Intel 64 Processor States Following Power-up, Reset, or INIT"
    /// (§10.1.1 "Processor State After Reset"; Table 9-1 / §9.1.1 in older editions) as KVM implements it in
    /// `kvm_vcpu_reset(vcpu, false)` plus `vmx_vcpu_reset()` / `init_vmcb()` and `kvm_lapic_reset()`:
    /// CS 0xF000 / base 0xFFFF0000, RIP 0xFFF0 (first fetch at 0xFFFFFFF0), CR0 = ET|CD|NW, APIC enabled at
    /// 0xFEE00000 (BSP bit on the bootstrap processor). SMBASE becomes ``SMBASERule/afterReset``.
    public static func powerOn(isBSP: Bool, cpuidSignature: UInt32 = defaultCPUIDSignature) -> ArchState {
        var state = initState(cpuidSignature: cpuidSignature, cr0CacheBits: X86.CR0.cd | X86.CR0.nw)
        state.sregs.apic_base = APICBase.defaultPhysicalBase | APICBase.enable | (isBSP ? APICBase.bsp : 0)
        return state
    }

    /// The state after an INIT signal applied to `self`.
    ///
    /// Models `kvm_vcpu_reset(vcpu, true)`: the same register state as RESET except that CR0.CD and CR0.NW keep their
    /// values (`new_cr0 = X86_CR0_ET | (old_cr0 & (X86_CR0_NW | X86_CR0_CD))`) and the APIC base MSR is kept
    /// (`kvm_lapic_reset` only sets it `if (!init_event)`). SMBASE is kept as well (``SMBASERule/afterINIT(current:)``).
    /// An AP then waits for SIPI; see ``atSIPI(vector:)``.
    public func afterINIT(cpuidSignature: UInt32 = defaultCPUIDSignature) -> ArchState {
        var state = ArchState.initState(
            cpuidSignature: cpuidSignature, cr0CacheBits: sregs.cr0 & (X86.CR0.cd | X86.CR0.nw))
        state.sregs.apic_base = sregs.apic_base
        return state
    }

    /// The state after a Startup IPI with `vector` is accepted by a vCPU in wait-for-SIPI (normally the INIT state).
    ///
    /// Models `kvm_vcpu_deliver_sipi_vector()`: CS selector = vector << 8, CS base = vector << 12, RIP = 0; every other
    /// register is left as it is.
    public func atSIPI(vector: UInt8) -> ArchState {
        var state = self
        state.sregs.cs.selector = UInt16(vector) << 8
        state.sregs.cs.base = UInt64(vector) << 12
        state.regs.rip = 0
        return state
    }

    /// The register state common to RESET and INIT (KVM `kvm_vcpu_reset` + `vmx_vcpu_reset`'s `seg_setup`).
    private static func initState(cpuidSignature: UInt32, cr0CacheBits: UInt64) -> ArchState {
        var regs = kvm_regs()  // kvm_vcpu_reset: memset(vcpu->arch.regs, 0, ...)
        regs.rdx = UInt64(cpuidSignature)
        regs.rip = ResetValues.rip
        regs.rflags = X86.rflagsFixed

        var sregs = kvm_sregs()
        // seg_setup(): access rights 0x93 (present, S, type 3 = read/write accessed data), 0x9B for CS (type 0xB).
        let data = kvm_segment(
            selector: 0, base: 0, limit: ResetValues.segmentLimit, type: ResetValues.dataType, s: 1)
        sregs.ds = data
        sregs.es = data
        sregs.fs = data
        sregs.gs = data
        sregs.ss = data
        sregs.cs = kvm_segment(
            selector: ResetValues.csSelector, base: ResetValues.csBase, limit: ResetValues.segmentLimit,
            type: ResetValues.codeType, s: 1)
        // LDTR: AR 0x82 (present, type 2 = LDT). TR: AR 0x8B (present, type 0xB = busy 32-bit TSS).
        sregs.ldt = kvm_segment(
            selector: 0, base: 0, limit: ResetValues.segmentLimit, type: ResetValues.ldtType, s: 0)
        sregs.tr = kvm_segment(
            selector: 0, base: 0, limit: ResetValues.segmentLimit, type: ResetValues.busyTSSType, s: 0)
        sregs.gdt = kvm_dtable(base: 0, limit: ResetValues.descriptorTableLimit)
        sregs.idt = kvm_dtable(base: 0, limit: ResetValues.descriptorTableLimit)
        sregs.cr0 = X86.CR0.et | cr0CacheBits
        // CR2, CR3, CR4, CR8 (TPR) and EFER are 0: kvm_vcpu_reset sets arch.cr2/cr3 = 0, set_cr4(0), set_efer(0).
        return ArchState(
            regs: regs, sregs: sregs, dr6: X86.DR.dr6ActiveLow, dr7: X86.DR.dr7Fixed1, interruptShadow: 0,
            nmiMasked: false)
    }
}

/// Named RESET/INIT values (SDM Table 10-1; KVM `vmx_vcpu_reset` / `init_vmcb`).
enum ResetValues {
    static let rip: UInt64 = 0xFFF0
    static let csSelector: UInt16 = 0xF000
    static let csBase: UInt64 = 0xFFFF_0000
    static let segmentLimit: UInt32 = 0xFFFF
    static let descriptorTableLimit: UInt16 = 0xFFFF
    /// Code segment, execute/read, accessed.
    static let codeType: UInt8 = 0xB
    /// Data segment, read/write, accessed.
    static let dataType: UInt8 = 0x3
    /// System segment type 2: LDT.
    static let ldtType: UInt8 = 0x2
    /// System segment type 0xB: busy 32-bit TSS.
    static let busyTSSType: UInt8 = 0xB
}
