// SPDX-License-Identifier: MIT
internal import CKVM

#if canImport(Glibc)
    import Glibc
#endif

/// The KVM system file descriptor (`/dev/kvm`): API version, capabilities, supported CPUID, vCPU mmap size,
/// and the factory for virtual machines (rust-vmm `Kvm`).
public final class KVM: @unchecked Sendable {
    /// The KVM API version this bridge speaks (`KVM_API_VERSION`).
    public static let apiVersion: Int32 = 12
    /// The default device path.
    public static let defaultPath = "/dev/kvm"

    let fd: OwnedFD
    /// Where it was opened from.
    public let path: String

    /// Opens `/dev/kvm` and checks the API version.
    /// - Throws: `.notAvailable` when the device is missing, `.permissionDenied` on EACCES/EPERM,
    ///   `.unsupportedAPIVersion` when `KVM_GET_API_VERSION` is not 12.
    public init(path: String = KVM.defaultPath) throws(KVMError) {
        let raw = Glibc.open(path, O_RDWR | O_CLOEXEC)
        if raw < 0 {
            let e = Glibc.errno
            switch e {
            case ENOENT, ENXIO, ENODEV: throw .notAvailable(path: path)
            case EACCES, EPERM: throw .permissionDenied(path: path)
            default: throw .ioctl(name: "open(\(path))", errno: e)
            }
        }
        self.fd = OwnedFD(raw)
        self.path = path
        let version = try Syscall.ioctl(raw, CKVM_GET_API_VERSION, "KVM_GET_API_VERSION")
        guard version == KVM.apiVersion else { throw .unsupportedAPIVersion(version) }
    }

    /// Wraps an existing fd (tests use a bad fd to check every call fails with EBADF).
    init(unchecked rawFD: Int32, path: String) {
        self.fd = OwnedFD(rawFD)
        self.path = path
    }

    /// True when `/dev/kvm` can be opened by this process (used to gate KVM tests).
    public static var isAvailable: Bool {
        (try? KVM()) != nil
    }

    /// `KVM_GET_API_VERSION`.
    public func apiVersion() throws(KVMError) -> Int32 {
        try Syscall.ioctl(fd.raw, CKVM_GET_API_VERSION, "KVM_GET_API_VERSION")
    }

    /// `KVM_CHECK_EXTENSION` returning the raw integer (0 = absent).
    public func checkExtensionRaw(_ raw: UInt32) throws(KVMError) -> Int32 {
        try Syscall.ioctl(fd.raw, CKVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", value: UInt(raw))
    }

    /// `KVM_CHECK_EXTENSION` as an integer (capabilities such as `maxVCPUs` return counts).
    public func checkExtensionInt(_ cap: Capability) throws(KVMError) -> Int {
        Int(try checkExtensionRaw(cap.rawValue))
    }

    /// `KVM_CHECK_EXTENSION` as a yes/no answer.
    public func has(_ cap: Capability) -> Bool {
        ((try? checkExtensionRaw(cap.rawValue)) ?? 0) > 0
    }

    /// `KVM_GET_VCPU_MMAP_SIZE`: bytes to mmap from each vCPU fd (`kvm_run` plus the PIO page etc.).
    public func vcpuMmapSize() throws(KVMError) -> Int {
        Int(try Syscall.ioctl(fd.raw, CKVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE"))
    }

    /// `KVM_CAP_NR_VCPUS` (the kernel's recommendation; 4 if the capability is absent, per api.rst).
    public func recommendedVCPUs() -> Int {
        let n = (try? checkExtensionInt(.recommendedVCPUs)) ?? 0
        return n > 0 ? n : 4
    }

    /// `KVM_CAP_MAX_VCPUS` (falls back to the recommendation when absent, per api.rst).
    public func maxVCPUs() -> Int {
        let n = (try? checkExtensionInt(.maxVCPUs)) ?? 0
        return n > 0 ? n : recommendedVCPUs()
    }

    /// `KVM_CAP_MAX_VCPU_ID`: the vCPU ids `KVM_CREATE_VCPU` accepts are 0..<this (falls back to `maxVCPUs()` when
    /// absent, per api.rst).
    public func maxVCPUID() -> Int {
        let n = (try? checkExtensionInt(.maxVCPUID)) ?? 0
        return n > 0 ? n : maxVCPUs()
    }

    /// `KVM_GET_SUPPORTED_CPUID`: the CPUID leaves KVM can present to a guest.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        var capacity: UInt32 = 128
        while true {
            let size = ckvm_cpuid2_size(capacity)
            let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            defer { buf.deallocate() }
            buf.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            // SAFETY: buf holds a kvm_cpuid2 header followed by `capacity` kvm_cpuid_entry2 slots.
            let header = buf.assumingMemoryBound(to: kvm_cpuid2.self)
            header.pointee.nent = capacity
            do {
                _ = try Syscall.ioctl(fd.raw, CKVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID", raw: buf)
            } catch {
                if error.errno == E2BIG && capacity < 4096 {
                    capacity *= 2
                    continue
                }
                throw error
            }
            let n = Int(header.pointee.nent)
            // SAFETY: the kernel filled `nent` ≤ capacity entries right after the header.
            let entries = (buf + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
            return (0..<n).map { CPUIDEntry(entries[$0]) }
        }
    }

    /// `KVM_GET_MSR_INDEX_LIST`: the MSRs KVM saves and restores for a vCPU (`msrs_to_save` and the emulated
    /// MSRs), as `KVM_GET_MSRS` / `KVM_SET_MSRS` accept them.
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        var capacity: UInt32 = 256
        while true {
            let size = MemoryLayout<kvm_msr_list>.size + Int(capacity) * MemoryLayout<UInt32>.size
            let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            defer { buf.deallocate() }
            buf.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            // SAFETY: buf holds a kvm_msr_list header followed by `capacity` u32 slots.
            let header = buf.assumingMemoryBound(to: kvm_msr_list.self)
            header.pointee.nmsrs = capacity
            do {
                _ = try Syscall.ioctl(fd.raw, CKVM_GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST", raw: buf)
            } catch {
                // E2BIG: nmsrs now holds the count KVM needs.
                if error.errno == E2BIG && header.pointee.nmsrs > capacity && capacity < 65536 {
                    capacity = min(header.pointee.nmsrs, 65536)
                    continue
                }
                throw error
            }
            let n = Int(min(header.pointee.nmsrs, capacity))
            // SAFETY: the kernel filled `nmsrs` ≤ capacity indices right after the header.
            let indices = (buf + MemoryLayout<kvm_msr_list>.size).assumingMemoryBound(to: UInt32.self)
            return (0..<n).map { indices[$0] }
        }
    }

    /// `KVM_CREATE_VM` (type 0: the default x86 VM).
    public func createVM() throws(KVMError) -> VirtualMachine {
        let raw = try Syscall.ioctl(fd.raw, CKVM_CREATE_VM, "KVM_CREATE_VM", value: 0)
        return try VirtualMachine(fd: OwnedFD(raw), kvm: self)
    }
}
