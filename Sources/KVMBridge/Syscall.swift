// SPDX-License-Identifier: MIT
internal import CKVM

#if canImport(Glibc)
    import Glibc
#endif

/// The single funnel every KVM ioctl goes through (swift-system's `valueOrErrno` pattern): −1 plus errno
/// becomes a `KVMError.ioctl` carrying the ioctl's name. EINTR is retried only where the caller asks, since
/// for `KVM_RUN` an EINTR is a meaningful "kicked" result the VMM handles itself.
enum Syscall {
    @inline(__always)
    static func check(_ name: String, retryOnInterrupt: Bool = true, _ body: () -> Int32) throws(KVMError) -> Int32 {
        while true {
            let r = body()
            if r >= 0 { return r }
            let e = Glibc.errno
            if e == EINTR && retryOnInterrupt { continue }
            throw .ioctl(name: name, errno: e)
        }
    }

    /// ioctl without argument.
    static func ioctl(_ fd: Int32, _ request: UInt, _ name: String) throws(KVMError) -> Int32 {
        try check(name) { ckvm_ioctl_none(fd, request) }
    }

    /// ioctl with an integer argument.
    static func ioctl(_ fd: Int32, _ request: UInt, _ name: String, value: UInt) throws(KVMError) -> Int32 {
        try check(name) { ckvm_ioctl_int(fd, request, value) }
    }

    /// ioctl with a pointer to a struct.
    static func ioctl<T>(_ fd: Int32, _ request: UInt, _ name: String, _ arg: inout T) throws(KVMError) -> Int32 {
        // SAFETY: `arg` is a live inout value of the struct type the ioctl expects; the kernel reads/writes at
        // most sizeof(T) bytes (the size encoded in the request number) during the call.
        try withUnsafeMutablePointer(to: &arg) { p throws(KVMError) in
            try check(name) { ckvm_ioctl_ptr(fd, request, UnsafeMutableRawPointer(p)) }
        }
    }

    /// ioctl with a raw buffer (structs with flexible array members: kvm_cpuid2, kvm_msrs).
    static func ioctl(_ fd: Int32, _ request: UInt, _ name: String, raw: UnsafeMutableRawPointer) throws(KVMError)
        -> Int32
    {
        try check(name) { ckvm_ioctl_ptr(fd, request, raw) }
    }
}

/// An owned file descriptor that is closed exactly once when its owner goes away (rust-vmm wraps the raw fd
/// in a `File` for the same reason: "in case the following ? returns early").
final class OwnedFD: @unchecked Sendable {
    let raw: Int32
    init(_ raw: Int32) { self.raw = raw }
    deinit { if raw >= 0 { _ = Glibc.close(raw) } }
}
