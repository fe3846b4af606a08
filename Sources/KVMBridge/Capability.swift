// SPDX-License-Identifier: MIT

/// A KVM capability, queried with `KVM_CHECK_EXTENSION`. Raw values are the `KVM_CAP_*` constants of
/// `<linux/kvm.h>` (rust-vmm `Cap`). Only the ones minivmm uses or reports are listed.
public enum Capability: UInt32, CaseIterable, Sendable, Codable {
    /// `KVM_CAP_IRQCHIP`: in-kernel PIC/IOAPIC/local APIC (`KVM_CREATE_IRQCHIP`).
    case irqchip = 0
    /// `KVM_CAP_USER_MEMORY`: `KVM_SET_USER_MEMORY_REGION`.
    case userMemory = 3
    /// `KVM_CAP_SET_TSS_ADDR`.
    case setTSSAddress = 4
    /// `KVM_CAP_EXT_CPUID`: `KVM_GET_SUPPORTED_CPUID` / `KVM_SET_CPUID2`.
    case extendedCPUID = 7
    /// `KVM_CAP_NR_VCPUS`: recommended maximum vCPUs per VM (int).
    case recommendedVCPUs = 9
    /// `KVM_CAP_MP_STATE`: `KVM_GET/SET_MP_STATE`.
    case mpState = 14
    /// `KVM_CAP_SET_GUEST_DEBUG`: single-step and hardware breakpoints.
    case setGuestDebug = 23
    /// `KVM_CAP_VCPU_EVENTS`: `KVM_GET/SET_VCPU_EVENTS`.
    case vcpuEvents = 41
    /// `KVM_CAP_DEBUGREGS`: `KVM_GET/SET_DEBUGREGS`.
    case debugRegisters = 50
    /// `KVM_CAP_XSAVE`: `KVM_GET/SET_XSAVE` (the x87/SSE/AVX state in XSAVE format).
    case xsave = 55
    /// `KVM_CAP_XCRS`: `KVM_GET/SET_XCRS` (XCR0).
    case xcrs = 56
    /// `KVM_CAP_MAX_VCPUS`: maximum vCPUs per VM (int).
    case maxVCPUs = 66
    /// `KVM_CAP_SYNC_REGS`: registers shared through `kvm_run` (int: bitmap of `KVM_SYNC_X86_*`).
    case syncRegisters = 74
    /// `KVM_CAP_READONLY_MEM`: `KVM_MEM_READONLY` memslots (writes exit as MMIO).
    case readonlyMemory = 81
    /// `KVM_CAP_SIGNAL_MSI`: `KVM_SIGNAL_MSI` into the in-kernel irqchip.
    case signalMSI = 77
    /// `KVM_CAP_X86_SMM`: KVM's own System Management Mode (`KVM_SMI`, SMBASE MSR, address space 1).
    case x86SMM = 117
    /// `KVM_CAP_MULTI_ADDRESS_SPACE`: number of memslot address spaces (int; 2 with SMM).
    case multiAddressSpace = 118
    /// `KVM_CAP_GUEST_DEBUG_HW_BPS`: number of hardware breakpoints (int).
    case guestDebugHardwareBreakpoints = 119
    /// `KVM_CAP_SPLIT_IRQCHIP`: in-kernel local APIC with userspace IOAPIC/PIC.
    case splitIRQChip = 121
    /// `KVM_CAP_MAX_VCPU_ID` (int).
    case maxVCPUID = 128
    /// `KVM_CAP_X2APIC_API`: 32-bit APIC IDs with the in-kernel local APIC.
    case x2APICAPI = 129
    /// `KVM_CAP_IMMEDIATE_EXIT`: `kvm_run->immediate_exit`.
    case immediateExit = 136
    /// `KVM_CAP_X86_USER_SPACE_MSR`: RDMSR/WRMSR exits to userspace (`KVM_EXIT_X86_RDMSR/WRMSR`).
    case userSpaceMSR = 188
    /// `KVM_CAP_X86_MSR_FILTER`: `KVM_X86_SET_MSR_FILTER`.
    case msrFilter = 189
    /// `KVM_CAP_XSAVE2`: `KVM_GET_XSAVE2` (int: the size of the XSAVE buffer, at least 4096).
    case xsave2 = 208

    /// The kernel's name, e.g. `KVM_CAP_X86_SMM`.
    public var kernelName: String {
        switch self {
        case .irqchip: "KVM_CAP_IRQCHIP"
        case .userMemory: "KVM_CAP_USER_MEMORY"
        case .setTSSAddress: "KVM_CAP_SET_TSS_ADDR"
        case .extendedCPUID: "KVM_CAP_EXT_CPUID"
        case .recommendedVCPUs: "KVM_CAP_NR_VCPUS"
        case .mpState: "KVM_CAP_MP_STATE"
        case .setGuestDebug: "KVM_CAP_SET_GUEST_DEBUG"
        case .vcpuEvents: "KVM_CAP_VCPU_EVENTS"
        case .debugRegisters: "KVM_CAP_DEBUGREGS"
        case .xsave: "KVM_CAP_XSAVE"
        case .xcrs: "KVM_CAP_XCRS"
        case .maxVCPUs: "KVM_CAP_MAX_VCPUS"
        case .syncRegisters: "KVM_CAP_SYNC_REGS"
        case .readonlyMemory: "KVM_CAP_READONLY_MEM"
        case .signalMSI: "KVM_CAP_SIGNAL_MSI"
        case .x86SMM: "KVM_CAP_X86_SMM"
        case .multiAddressSpace: "KVM_CAP_MULTI_ADDRESS_SPACE"
        case .guestDebugHardwareBreakpoints: "KVM_CAP_GUEST_DEBUG_HW_BPS"
        case .splitIRQChip: "KVM_CAP_SPLIT_IRQCHIP"
        case .maxVCPUID: "KVM_CAP_MAX_VCPU_ID"
        case .x2APICAPI: "KVM_CAP_X2APIC_API"
        case .immediateExit: "KVM_CAP_IMMEDIATE_EXIT"
        case .userSpaceMSR: "KVM_CAP_X86_USER_SPACE_MSR"
        case .msrFilter: "KVM_CAP_X86_MSR_FILTER"
        case .xsave2: "KVM_CAP_XSAVE2"
        }
    }

    /// Looks a capability up by its kernel name (`KVM_CAP_X86_SMM`) — the inverse of `kernelName`.
    public init?(kernelName: String) {
        guard let c = Self.allCases.first(where: { $0.kernelName == kernelName }) else { return nil }
        self = c
    }
}
