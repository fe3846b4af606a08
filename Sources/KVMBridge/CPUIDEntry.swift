// SPDX-License-Identifier: MIT
internal import CKVM

/// One CPUID leaf as KVM exchanges it (`struct kvm_cpuid_entry2`).
public struct CPUIDEntry: Sendable, Equatable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(
        function: UInt32, index: UInt32 = 0, flags: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0,
        edx: UInt32 = 0
    ) {
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }

    init(_ e: kvm_cpuid_entry2) {
        self.init(function: e.function, index: e.index, flags: e.flags, eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
    }

    var raw: kvm_cpuid_entry2 {
        var e = kvm_cpuid_entry2()
        e.function = function
        e.index = index
        e.flags = flags
        e.eax = eax
        e.ebx = ebx
        e.ecx = ecx
        e.edx = edx
        return e
    }

    /// CPUID.80000001H:EDX bit 29, "LM": the bit KVM's `enter_smm` uses to choose the AMD64 save-state map.
    public static let longModeBit: UInt32 = 1 << 29
}

extension Array where Element == CPUIDEntry {
    /// The entry for `function`/`index`, if present.
    public func leaf(_ function: UInt32, index: UInt32 = 0) -> CPUIDEntry? {
        first { $0.function == function && $0.index == index }
    }

    /// Whether the guest CPUID advertises long mode (CPUID.80000001H:EDX.LM).
    public var hasLongMode: Bool {
        guard let e = leaf(0x8000_0001) else { return false }
        return e.edx & CPUIDEntry.longModeBit != 0
    }
}
