// SPDX-License-Identifier: MIT

/// Architectural bit names used by the CPU and SMM models, spelled as in the Linux headers
/// (`arch/x86/include/uapi/asm/processor-flags.h`, `msr-index.h`, `arch/x86/kvm/kvm_host.h`).
public enum X86 {
    /// RFLAGS bit 1, always 1 (`X86_EFLAGS_FIXED`).
    public static let rflagsFixed: UInt64 = 0x2
    /// RFLAGS.TF (bit 8): single-step trap after each instruction.
    public static let trapFlag: UInt64 = 1 << 8
    /// RFLAGS.IF: maskable interrupts enabled.
    public static let rflagsIF: UInt64 = 1 << 9

    /// CR0 bits (`X86_CR0_*`).
    public enum CR0 {
        public static let pe: UInt64 = 1 << 0
        public static let mp: UInt64 = 1 << 1
        public static let em: UInt64 = 1 << 2
        public static let ts: UInt64 = 1 << 3
        public static let et: UInt64 = 1 << 4
        public static let ne: UInt64 = 1 << 5
        public static let wp: UInt64 = 1 << 16
        public static let am: UInt64 = 1 << 18
        public static let nw: UInt64 = 1 << 29
        public static let cd: UInt64 = 1 << 30
        public static let pg: UInt64 = 1 << 31
        /// KVM's `CR0_RESERVED_BITS`: every bit that is not one of the above. Writes to them are ignored.
        public static let reservedBits: UInt64 = ~(pe | mp | em | ts | et | ne | wp | am | nw | cd | pg)
    }

    /// CR4 bits (`X86_CR4_*`).
    public enum CR4 {
        public static let pae: UInt64 = 1 << 5
        public static let la57: UInt64 = 1 << 12
        public static let pcide: UInt64 = 1 << 17
        /// Bits no x86 CPU defines: 15, 26–27, 29–31 and 33–63. A conservative subset of KVM's `CR4_RESERVED_BITS` |
        /// `cr4_guest_rsvd_bits`: the feature-dependent bits (which vary with guest CPUID and kernel version, e.g.
        /// SMXE, KL, PKS, UINTR, LAM_SUP, FRED) are accepted.
        public static let reservedBits: UInt64 = (1 << 15) | (0b11 << 26) | (0b111 << 29) | ~((1 << 33) - 1)
    }

    /// The CR3 PCID field (`X86_CR3_PCID_MASK`), meaningful only with CR4.PCIDE.
    public static let cr3PCIDMask: UInt64 = 0xFFF
    /// CR3 bit 63 with CR4.PCIDE: "do not flush this PCID" (`X86_CR3_PCID_NOFLUSH`), never stored.
    public static let cr3PCIDNoFlush: UInt64 = 1 << 63
    /// CR3 bits 61/62 (`X86_CR3_LAM_U57`, `X86_CR3_LAM_U48`), legal with LAM.
    public static let cr3LAMBits: UInt64 = 0b11 << 61
    /// The widest MAXPHYADDR any x86 CPU reports (52). KVM rejects CR3 values with bits at or above the guest's
    /// MAXPHYADDR (`kvm_vcpu_is_legal_cr3`); the model checks only this architectural maximum.
    public static let maxPhysicalAddressBits: UInt64 = 52

    /// IA32_EFER bits (`EFER_*`, MSR 0xC000_0080).
    public enum EFER {
        public static let sce: UInt64 = 1 << 0
        public static let lme: UInt64 = 1 << 8
        public static let lma: UInt64 = 1 << 10
        public static let nx: UInt64 = 1 << 11
        public static let svme: UInt64 = 1 << 12
        public static let lmsle: UInt64 = 1 << 13
        public static let ffxsr: UInt64 = 1 << 14
        public static let tce: UInt64 = 1 << 15
        public static let autoIBRS: UInt64 = 1 << 21
        /// KVM's `efer_reserved_bits`, conservatively: every bit some host can enable through `kvm_enable_efer_bits`
        /// is accepted.
        public static let reservedBits: UInt64 = ~(sce | lme | lma | nx | svme | lmsle | ffxsr | tce | autoIBRS)
    }

    /// Debug-register constants from `arch/x86/include/asm/debugreg.h` / `arch/x86/kvm/kvm_host.h`.
    public enum DR {
        /// `DR6_ACTIVE_LOW`: the DR6 reset value and the value of every fixed-1 or active-low bit.
        public static let dr6ActiveLow: UInt64 = 0xFFFF_0FF0
        /// `DR6_VOLATILE`: the DR6 bits a write can change (B0–B3, BLD, BD, BS, BT, RTM).
        public static let dr6Volatile: UInt64 = 0x0001_E80F
        /// `DR7_FIXED_1`: DR7 bit 10, always 1; also the DR7 reset value.
        public static let dr7Fixed1: UInt64 = 0x400
        /// `DR7_VOLATILE`: the DR7 bits a write can change.
        public static let dr7Volatile: UInt64 = 0xFFFF_2BFF
    }

    /// `KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI`, the bits of `kvm_vcpu_events.interrupt.shadow`.
    public static let interruptShadowMask: UInt8 = 0x3
}
