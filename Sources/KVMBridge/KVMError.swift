// SPDX-License-Identifier: MIT
#if canImport(Glibc)
    import Glibc
#endif

/// An error from the kernel's KVM interface. Every case keeps the failing operation's name and the errno,
/// as rust-vmm's `errno::Error` and Firecracker's per-module errors do.
public enum KVMError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `/dev/kvm` does not exist (ENOENT/ENXIO/ENODEV on open): no KVM on this host.
    case notAvailable(path: String)
    /// Opening `/dev/kvm` failed with EACCES/EPERM.
    case permissionDenied(path: String)
    /// `KVM_GET_API_VERSION` returned something other than 12.
    case unsupportedAPIVersion(Int32)
    /// An ioctl (or other syscall such as `mmap`) failed. `name` is the kernel's name, e.g. `KVM_CREATE_VCPU`.
    case ioctl(name: String, errno: Int32)
    /// The host's KVM lacks a capability or ioctl the operation needs (e.g. `KVM_SMI` → ENOTTY without
    /// `KVM_CAP_X86_SMM`). Distinct from `.ioctl` so callers can fall back instead of failing.
    case unsupported(name: String, capability: String)
    /// A call got an argument the kernel ABI cannot express (e.g. a memory region that is not page aligned).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .notAvailable(let path): "KVM is not available on this host (\(path) does not exist)"
        case .permissionDenied(let path):
            "permission denied on \(path): run with sudo or join the kvm group"
        case .unsupportedAPIVersion(let v): "KVM API version \(v) is not supported (need 12)"
        case .ioctl(let name, let errno): "\(name) failed: \(Self.errnoName(errno)) (\(Self.message(errno)))"
        case .unsupported(let name, let cap): "\(name) is not supported by this host's KVM (\(cap) is absent)"
        case .invalidArgument(let what): "invalid argument: \(what)"
        }
    }

    /// The errno of an `.ioctl` failure, if this is one.
    public var errno: Int32? {
        if case .ioctl(_, let e) = self { return e }
        return nil
    }

    /// The C name of an errno value, e.g. `EBADF` (falls back to the number).
    public static func errnoName(_ e: Int32) -> String {
        switch e {
        case EPERM: "EPERM"
        case ENOENT: "ENOENT"
        case EINTR: "EINTR"
        case EIO: "EIO"
        case ENXIO: "ENXIO"
        case E2BIG: "E2BIG"
        case EBADF: "EBADF"
        case EAGAIN: "EAGAIN"
        case ENOMEM: "ENOMEM"
        case EACCES: "EACCES"
        case EFAULT: "EFAULT"
        case EBUSY: "EBUSY"
        case EEXIST: "EEXIST"
        case ENODEV: "ENODEV"
        case EINVAL: "EINVAL"
        case EMFILE: "EMFILE"
        case ENFILE: "ENFILE"
        case ENOTTY: "ENOTTY"
        case ENOSPC: "ENOSPC"
        case ENOSYS: "ENOSYS"
        case EOPNOTSUPP: "EOPNOTSUPP"
        default: "errno \(e)"
        }
    }

    static func message(_ e: Int32) -> String {
        guard let s = strerror(e) else { return "unknown error" }
        return String(cString: s)
    }
}
