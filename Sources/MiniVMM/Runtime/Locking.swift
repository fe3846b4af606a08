// SPDX-License-Identifier: MIT
#if canImport(Glibc)
    import Glibc
#endif

/// A pthread mutex with condition variables bound to it: the machine's one lock (devices, CPU run states,
/// the scenario) and one condition per vCPU thread, so a blocked vCPU costs no CPU time.
final class MachineLock: @unchecked Sendable {
    let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A condition variable used with `MachineLock` (caller holds the lock).
final class Condition: @unchecked Sendable {
    let cond: UnsafeMutablePointer<pthread_cond_t>

    init() {
        cond = .allocate(capacity: 1)
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
    }

    /// Waits at most `seconds` (the lock is released while waiting).
    func wait(_ lock: MachineLock, seconds: Double) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let ns = Int(now.tv_nsec) + Int(seconds * 1e9)
        var deadline = timespec(tv_sec: now.tv_sec + ns / 1_000_000_000, tv_nsec: ns % 1_000_000_000)
        pthread_cond_timedwait(cond, lock.mutex, &deadline)
    }

    func signal() { pthread_cond_signal(cond) }
    func broadcast() { pthread_cond_broadcast(cond) }
}

/// Monotonic seconds.
func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}

/// Starts a named OS thread with a small stack (1024 vCPU threads must stay cheap). The thread is detached unless
/// `joinable`: nothing joins the machine's threads (it waits for them on its own condition variables), so their
/// stacks and descriptors are freed when they return instead of leaking until process exit (ThreadSanitizer's
/// "thread leak", 1 per vCPU per run). A `joinable` thread must be joined with `pthread_join` exactly once.
func startThread(
    name: String, stackSize: Int = 512 * 1024, joinable: Bool = false, _ body: @escaping @Sendable () -> Void
) -> pthread_t? {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        let name: String
        init(_ b: @escaping @Sendable () -> Void, _ n: String) {
            body = b
            name = n
        }
    }
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    defer { pthread_attr_destroy(&attr) }
    pthread_attr_setstacksize(&attr, stackSize)
    if !joinable { pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED)) }
    // SAFETY: the retained box is released exactly once, by the new thread (or here if creation fails).
    let box = Unmanaged.passRetained(Box(body, name)).toOpaque()
    var tid = pthread_t()
    let r = pthread_create(
        &tid, &attr,
        { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body()
            return nil
        }, box)
    if r != 0 {
        Unmanaged<Box>.fromOpaque(box).release()
        return nil
    }
    return tid
}
