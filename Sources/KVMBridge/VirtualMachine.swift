// SPDX-License-Identifier: MIT
internal import CKVM

#if canImport(Glibc)
    import Glibc
#endif

/// A guest-physical memory slot (`struct kvm_userspace_memory_region`).
public struct MemoryRegion: Sendable, Equatable {
    /// Slot id (bits 0–15 of `slot`).
    public var slot: UInt16
    /// Address space (bits 16–31 of `slot`; 1 is SMM's when `KVM_CAP_MULTI_ADDRESS_SPACE` ≥ 2).
    public var addressSpace: UInt16
    public var guestPhysicalAddress: UInt64
    public var size: UInt64
    /// Host virtual address of the backing memory (page aligned).
    public var hostAddress: UInt64
    /// `KVM_MEM_READONLY`: guest writes exit as `KVM_EXIT_MMIO` (needs `KVM_CAP_READONLY_MEM`).
    public var readOnly: Bool

    public init(
        slot: UInt16, addressSpace: UInt16 = 0, guestPhysicalAddress: UInt64, size: UInt64, hostAddress: UInt64,
        readOnly: Bool = false
    ) {
        self.slot = slot
        self.addressSpace = addressSpace
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.hostAddress = hostAddress
        self.readOnly = readOnly
    }
}

/// A KVM virtual machine fd (rust-vmm `VmFd`): memory slots, vCPU creation, irqchip and VM-wide setup.
public final class VirtualMachine: @unchecked Sendable {
    let fd: OwnedFD
    /// The system object this VM came from.
    public let kvm: KVM
    /// `KVM_GET_VCPU_MMAP_SIZE`, read once.
    public let vcpuMmapSize: Int

    init(fd: OwnedFD, kvm: KVM) throws(KVMError) {
        self.fd = fd
        self.kvm = kvm
        self.vcpuMmapSize = try kvm.vcpuMmapSize()
    }

    /// Wraps a raw fd without checks (error-path tests).
    init(unchecked rawFD: Int32, kvm: KVM, vcpuMmapSize: Int) {
        self.fd = OwnedFD(rawFD)
        self.kvm = kvm
        self.vcpuMmapSize = vcpuMmapSize
    }

    /// `KVM_SET_USER_MEMORY_REGION`: adds or replaces a slot. A size of 0 deletes it.
    public func setMemoryRegion(_ r: MemoryRegion) throws(KVMError) {
        guard r.guestPhysicalAddress % 4096 == 0, r.size % 4096 == 0, r.hostAddress % 4096 == 0 else {
            throw .invalidArgument("memory region 0x\(String(r.guestPhysicalAddress, radix: 16)) is not page aligned")
        }
        var k = kvm_userspace_memory_region()
        k.slot = UInt32(r.slot) | (UInt32(r.addressSpace) << 16)
        k.flags = r.readOnly ? UInt32(KVM_MEM_READONLY) : 0
        k.guest_phys_addr = r.guestPhysicalAddress
        k.memory_size = r.size
        k.userspace_addr = r.hostAddress
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &k)
    }

    /// Deletes a slot (`KVM_SET_USER_MEMORY_REGION` with size 0).
    public func deleteMemoryRegion(slot: UInt16, addressSpace: UInt16 = 0) throws(KVMError) {
        var k = kvm_userspace_memory_region()
        k.slot = UInt32(slot) | (UInt32(addressSpace) << 16)
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &k)
    }

    /// `KVM_CREATE_VCPU` with the given vCPU id (= APIC ID), then mmaps its `kvm_run`.
    public func createVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let raw = try Syscall.ioctl(fd.raw, CKVM_CREATE_VCPU, "KVM_CREATE_VCPU", value: UInt(id))
        // Own the fd before anything else can fail, so it is closed on every error path.
        let owned = OwnedFD(raw)
        return try VCPU(fd: owned, id: id, mmapSize: vcpuMmapSize)
    }

    /// `KVM_GET_CLOCK` then `KVM_SET_CLOCK` with the value read (flags 0): the VM's kvmclock stays where it is and
    /// KVM recomputes the VM's masterclock (`pvclock_update_vm_gtod_copy`) now. Called right after the VM's first
    /// vCPU exists, it turns the masterclock on while every vCPU's TSC matches; vCPUs created afterwards with
    /// matching TSCs then leave it alone, where otherwise each new vCPU toggles it (`kvm_track_tsc_matching`) and
    /// requests an update that walks every vCPU of the VM at its first `KVM_RUN` (`kvm_end_pvclock_update`):
    /// quadratic in the vCPU count. Needs `KVM_CAP_ADJUST_CLOCK`.
    public func refreshMasterClock() throws(KVMError) {
        var c = kvm_clock_data()
        _ = try Syscall.ioctl(fd.raw, CKVM_GET_CLOCK, "KVM_GET_CLOCK", &c)
        c.flags = 0
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_CLOCK, "KVM_SET_CLOCK", &c)
    }

    /// `KVM_CREATE_IRQCHIP`: in-kernel PIC, IOAPIC and local APICs (needs `KVM_CAP_IRQCHIP`).
    public func createIRQChip() throws(KVMError) {
        _ = try Syscall.ioctl(fd.raw, CKVM_CREATE_IRQCHIP, "KVM_CREATE_IRQCHIP")
    }

    /// `KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)`: in-kernel local APICs only, `pins` IOAPIC routes in userspace.
    public func createSplitIRQChip(pins: UInt64 = 24) throws(KVMError) {
        try enableCapability(.splitIRQChip, args: [pins])
    }

    /// `KVM_ENABLE_CAP(KVM_CAP_X2APIC_API)` with `KVM_X2APIC_API_USE_32BIT_IDS` and
    /// `KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK`: x2APIC IDs above 255 for the in-kernel local APICs (and MSI
    /// destinations in the address's high half). Call before creating vCPUs.
    public func enableX2APICAPI() throws(KVMError) {
        try enableCapability(
            .x2APICAPI, args: [CKVM_X2APIC_API_USE_32BIT_IDS | CKVM_X2APIC_API_DISABLE_BROADCAST_QUIRK])
    }

    /// `KVM_SIGNAL_MSI`: deliver one MSI through the in-kernel irqchip (`kvm_set_msi` → `kvm_irq_delivery_to_apic`).
    /// `address` is the MSI address (0xFEE00000 | destination << 12, upper bits in the high half with
    /// `KVM_X2APIC_API_USE_32BIT_IDS`), `data` the vector and delivery mode. Returns KVM's answer: the number of
    /// local APICs that accepted it (0 when masked or coalesced).
    @discardableResult
    public func signalMSI(address: UInt64, data: UInt32) throws(KVMError) -> Int32 {
        var m = kvm_msi()
        m.address_lo = UInt32(truncatingIfNeeded: address)
        m.address_hi = UInt32(truncatingIfNeeded: address >> 32)
        m.data = data
        return try Syscall.ioctl(fd.raw, CKVM_SIGNAL_MSI, "KVM_SIGNAL_MSI", &m)
    }

    /// `KVM_SET_TSS_ADDR`: three pages KVM needs on Intel for real-mode emulation.
    public func setTSSAddress(_ gpa: UInt64) throws(KVMError) {
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_TSS_ADDR, "KVM_SET_TSS_ADDR", value: UInt(gpa))
    }

    /// `KVM_SET_IDENTITY_MAP_ADDR`: one page for the EPT identity map on Intel.
    public func setIdentityMapAddress(_ gpa: UInt64) throws(KVMError) {
        var a = gpa
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR", &a)
    }

    /// `KVM_ENABLE_CAP` on the VM.
    public func enableCapability(_ cap: Capability, args: [UInt64] = []) throws(KVMError) {
        var c = kvm_enable_cap()
        c.cap = cap.rawValue
        withUnsafeMutableBytes(of: &c.args) { buf in
            let a = buf.bindMemory(to: UInt64.self)
            for (i, v) in args.prefix(4).enumerated() { a[i] = v }
        }
        _ = try Syscall.ioctl(fd.raw, CKVM_ENABLE_CAP, "KVM_ENABLE_CAP(\(cap.kernelName))", &c)
    }

    /// Exit reasons for `KVM_CAP_X86_USER_SPACE_MSR` (`KVM_MSR_EXIT_REASON_*`).
    public struct MSRExitReasons: OptionSet, Sendable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// `KVM_MSR_EXIT_REASON_INVAL`: accesses KVM would answer with #GP.
        public static let invalid = MSRExitReasons(rawValue: UInt64(KVM_MSR_EXIT_REASON_INVAL))
        /// `KVM_MSR_EXIT_REASON_UNKNOWN`: MSRs KVM does not know.
        public static let unknown = MSRExitReasons(rawValue: UInt64(KVM_MSR_EXIT_REASON_UNKNOWN))
        /// `KVM_MSR_EXIT_REASON_FILTER`: MSRs denied by `KVM_X86_SET_MSR_FILTER`.
        public static let filter = MSRExitReasons(rawValue: UInt64(KVM_MSR_EXIT_REASON_FILTER))
    }

    /// Enables `KVM_EXIT_X86_RDMSR/WRMSR` exits for the given reasons (`KVM_CAP_X86_USER_SPACE_MSR`).
    public func enableUserSpaceMSR(_ reasons: MSRExitReasons) throws(KVMError) {
        guard kvm.has(.userSpaceMSR) else {
            throw .unsupported(
                name: "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)", capability: "KVM_CAP_X86_USER_SPACE_MSR")
        }
        try enableCapability(.userSpaceMSR, args: [reasons.rawValue])
    }

    /// `KVM_X86_SET_MSR_FILTER` with a default-allow policy that denies (and so sends to userspace) every
    /// MSR in `deniedRanges` for both reads and writes.
    public func denyMSRs(_ deniedRanges: [ClosedRange<UInt32>]) throws(KVMError) {
        guard deniedRanges.count <= Int(KVM_MSR_FILTER_MAX_RANGES) else {
            throw .invalidArgument("at most \(KVM_MSR_FILTER_MAX_RANGES) MSR filter ranges")
        }
        var filter = kvm_msr_filter()
        filter.flags = UInt32(KVM_MSR_FILTER_DEFAULT_ALLOW)
        // One bitmap per range, all zero bits = deny; kept alive across the ioctl.
        let bitmaps = deniedRanges.map { r -> UnsafeMutablePointer<UInt8> in
            let bytes = (Int(r.upperBound - r.lowerBound) + 1 + 7) / 8
            let p = UnsafeMutablePointer<UInt8>.allocate(capacity: bytes)
            p.initialize(repeating: 0, count: bytes)
            return p
        }
        defer { bitmaps.forEach { $0.deallocate() } }
        withUnsafeMutableBytes(of: &filter.ranges) { buf in
            let ranges = buf.bindMemory(to: kvm_msr_filter_range.self)
            for (i, r) in deniedRanges.enumerated() {
                ranges[i].flags = UInt32(KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE)
                ranges[i].base = r.lowerBound
                ranges[i].nmsrs = r.upperBound - r.lowerBound + 1
                ranges[i].bitmap = bitmaps[i]
            }
        }
        _ = try Syscall.ioctl(fd.raw, CKVM_X86_SET_MSR_FILTER, "KVM_X86_SET_MSR_FILTER", &filter)
    }
}
