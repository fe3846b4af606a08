// SPDX-License-Identifier: MIT
public import CKVM

/// Architectural vCPU state the VMM moves around: exactly what `KVM_SYNC_X86_REGS`, `KVM_SYNC_X86_SREGS` and
/// `KVM_SYNC_X86_EVENTS` carry (`struct kvm_regs`, `struct kvm_sregs`, the interrupt-shadow and NMI-mask parts of
/// `struct kvm_vcpu_events`), plus DR6/DR7 (`struct kvm_debugregs`).
///
/// SMBASE is deliberately not part of this state: like `vcpu->arch.smbase` in KVM it is a separate per-vCPU
/// register (see ``SMBASERule``).
public struct ArchState: Sendable, Equatable {
    /// `struct kvm_regs` (KVM_GET_REGS/KVM_SET_REGS).
    public var regs: kvm_regs
    /// `struct kvm_sregs` (KVM_GET_SREGS/KVM_SET_SREGS).
    public var sregs: kvm_sregs
    /// DR6, as `struct kvm_debugregs.dr6`.
    public var dr6: UInt64
    /// DR7, as `struct kvm_debugregs.dr7`.
    public var dr7: UInt64
    /// `kvm_vcpu_events.interrupt.shadow`: a mask of `KVM_X86_SHADOW_INT_MOV_SS` (1) and `KVM_X86_SHADOW_INT_STI` (2).
    public var interruptShadow: UInt8
    /// `kvm_vcpu_events.nmi.masked`.
    public var nmiMasked: Bool

    public init(
        regs: kvm_regs = kvm_regs(), sregs: kvm_sregs = kvm_sregs(), dr6: UInt64 = 0xFFFF_0FF0, dr7: UInt64 = 0x400,
        interruptShadow: UInt8 = 0, nmiMasked: Bool = false
    ) {
        self.regs = regs
        self.sregs = sregs
        self.dr6 = dr6
        self.dr7 = dr7
        self.interruptShadow = interruptShadow
        self.nmiMasked = nmiMasked
    }

    /// Compares `regs` and `sregs` byte for byte. Both C structs have no implicit padding (every padding byte is a
    /// named field such as `kvm_segment.padding`), so byte equality is field equality.
    public static func == (lhs: ArchState, rhs: ArchState) -> Bool {
        lhs.dr6 == rhs.dr6 && lhs.dr7 == rhs.dr7 && lhs.interruptShadow == rhs.interruptShadow
            && lhs.nmiMasked == rhs.nmiMasked && bytesEqual(lhs.regs, rhs.regs) && bytesEqual(lhs.sregs, rhs.sregs)
    }
}

/// Byte-wise equality of two values of a trivial C struct type.
func bytesEqual<T: BitwiseCopyable>(_ a: T, _ b: T) -> Bool {
    // SAFETY: `T` is BitwiseCopyable, so its bytes are its whole value; both buffers are valid for the duration of
    // the closures and are only read.
    withUnsafeBytes(of: a) { lhs in
        withUnsafeBytes(of: b) { rhs in lhs.elementsEqual(rhs) }
    }
}

/// The general-purpose registers by KVM register number (`enum kvm_reg`: VCPU_REGS_RAX = 0, RCX, RDX, RBX, RSP, RBP,
/// RSI, RDI, R8 … R15 = 15). This is the order KVM's SMM code indexes `gprs[]` with.
public enum GPR: Int, CaseIterable, Sendable {
    case rax = 0, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15
}

extension kvm_regs {
    /// Reads a general-purpose register by KVM register number (`kvm_register_read_raw(vcpu, i)`).
    public subscript(gpr: GPR) -> UInt64 {
        get {
            switch gpr {
            case .rax: rax
            case .rcx: rcx
            case .rdx: rdx
            case .rbx: rbx
            case .rsp: rsp
            case .rbp: rbp
            case .rsi: rsi
            case .rdi: rdi
            case .r8: r8
            case .r9: r9
            case .r10: r10
            case .r11: r11
            case .r12: r12
            case .r13: r13
            case .r14: r14
            case .r15: r15
            }
        }
        set {
            switch gpr {
            case .rax: rax = newValue
            case .rcx: rcx = newValue
            case .rdx: rdx = newValue
            case .rbx: rbx = newValue
            case .rsp: rsp = newValue
            case .rbp: rbp = newValue
            case .rsi: rsi = newValue
            case .rdi: rdi = newValue
            case .r8: r8 = newValue
            case .r9: r9 = newValue
            case .r10: r10 = newValue
            case .r11: r11 = newValue
            case .r12: r12 = newValue
            case .r13: r13 = newValue
            case .r14: r14 = newValue
            case .r15: r15 = newValue
            }
        }
    }
}

extension kvm_segment {
    /// A `struct kvm_segment` with every field named; `unusable` and `padding` default to 0.
    public init(
        selector: UInt16, base: UInt64, limit: UInt32, type: UInt8, s: UInt8, dpl: UInt8 = 0, present: UInt8 = 1,
        db: UInt8 = 0, l: UInt8 = 0, g: UInt8 = 0, avl: UInt8 = 0, unusable: UInt8 = 0
    ) {
        self.init()
        self.selector = selector
        self.base = base
        self.limit = limit
        self.type = type
        self.s = s
        self.dpl = dpl
        self.present = present
        self.db = db
        self.l = l
        self.g = g
        self.avl = avl
        self.unusable = unusable
    }
}

extension kvm_dtable {
    /// A `struct kvm_dtable` (GDTR/IDTR) with zero padding.
    public init(base: UInt64, limit: UInt16) {
        self.init()
        self.base = base
        self.limit = limit
    }
}
