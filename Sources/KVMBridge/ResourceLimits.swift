// SPDX-License-Identifier: MIT
internal import CKVM

#if canImport(Glibc)
    import Glibc
#endif

/// Process limits a VMM with one fd per vCPU must raise.
public enum ResourceLimits {
    /// Raises `RLIMIT_NOFILE`'s soft limit to at least `needed` (up to the hard limit, or beyond it when
    /// running as root). 1024 vCPUs need 1024+ fds, the default soft limit is often exactly 1024.
    /// - Returns: the soft limit now in force.
    @discardableResult
    public static func ensureOpenFiles(_ needed: Int) throws(KVMError) -> Int {
        var lim = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else {
            throw .ioctl(name: "getrlimit(RLIMIT_NOFILE)", errno: Glibc.errno)
        }
        let want = rlim_t(needed)
        if lim.rlim_cur >= want { return Int(lim.rlim_cur) }
        var new = lim
        new.rlim_cur = want
        if lim.rlim_max < want { new.rlim_max = want }
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &new) != 0 {
            // Not root: take what the hard limit allows.
            new.rlim_cur = lim.rlim_max
            new.rlim_max = lim.rlim_max
            guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &new) == 0 else {
                throw .ioctl(name: "setrlimit(RLIMIT_NOFILE)", errno: Glibc.errno)
            }
        }
        return Int(new.rlim_cur)
    }

    /// Gives the process-private futex hash (Linux 6.16+, `PR_FUTEX_HASH`) at least `waiters` buckets, rounded up
    /// to a power of two. The kernel sizes that hash from the online CPUs, not from the threads (16 buckets on a 2-CPU
    /// host), and every futex wake walks its bucket's waiters: with one thread per vCPU blocked on its own condition
    /// variable, each lock hand-off and wake-up cost O(threads / 16). Best effort: nothing to do where the process
    /// uses the global hash (0 buckets) or the kernel predates the private hash; a refusal keeps the hash as it was.
    /// - Returns: the buckets now, or nil when the private hash is not in use.
    @discardableResult
    public static func ensureFutexHash(waiters: Int) -> Int? {
        let current = ckvm_futex_hash_slots()
        guard current > 0 else { return nil }
        var want = 1
        while want < waiters && want < 1 << 20 { want <<= 1 }
        if Int(current) >= want { return Int(current) }
        return ckvm_set_futex_hash_slots(UInt(want)) == 0 ? want : Int(current)
    }

    /// The address-space limit (`RLIMIT_AS`, `ulimit -v`) in bytes, nil when unlimited.
    public static func addressSpaceLimit() -> UInt64? {
        var lim = rlimit()
        guard getrlimit(Int32(RLIMIT_AS.rawValue), &lim) == 0, lim.rlim_cur != rlim_t.max else { return nil }
        return UInt64(lim.rlim_cur)
    }

    /// The process's virtual size now (`/proc/self/statm`, first field, in pages), 0 when unreadable.
    public static func virtualSize() -> UInt64 {
        guard let f = fopen("/proc/self/statm", "r") else { return 0 }
        defer { fclose(f) }
        var pages: UInt = 0
        guard withUnsafeMutablePointer(to: &pages, { p in withVaList([p]) { vfscanf(f, "%lu", $0) } }) == 1 else {
            return 0
        }
        return UInt64(pages) * UInt64(sysconf(Int32(_SC_PAGESIZE)))
    }
}
