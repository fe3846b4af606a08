// SPDX-License-Identifier: MIT
#if canImport(Glibc)
    import Glibc
#endif

/// SIGINT and SIGTERM stop the guest and still produce the report (outcome `interrupted`, exit status 128 + the
/// signal, as a shell reports it); SIGPIPE is ignored, so a closed stdout (`| head -1`) cannot kill a run. The
/// signals are blocked in every thread and taken by one `sigwait(3)` thread, so no handler runs in signal context;
/// a second SIGINT or SIGTERM exits at once.
public enum RunInterrupts {
    private static let lock = MachineLock()
    nonisolated(unsafe) private static var machine: Machine?
    nonisolated(unsafe) private static var signalNumber: Int32?
    nonisolated(unsafe) private static var installed = false

    /// Blocks SIGINT/SIGTERM in this thread (and every thread it starts later) and starts the waiting thread. Call
    /// from the main thread before any other thread exists.
    public static func install() {
        lock.withLock {
            guard !installed else { return }
            installed = true
            signal(SIGPIPE, SIG_IGN)
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGINT)
            sigaddset(&set, SIGTERM)
            pthread_sigmask(SIG_BLOCK, &set, nil)
            let blocked = set
            _ = startThread(name: "signals", stackSize: 64 * 1024) { waitForSignals(blocked) }
        }
    }

    private static func waitForSignals(_ set: sigset_t) {
        var set = set
        while true {
            var sig: Int32 = 0
            guard sigwait(&set, &sig) == 0 else { continue }
            let again = lock.withLock { () -> Bool in
                if signalNumber != nil { return true }
                signalNumber = sig
                return false
            }
            if again { _exit(128 + sig) }
            let m = lock.withLock { machine }
            m?.lock.withLock { m?.finish(.interrupted, "stopped by signal \(sig == SIGINT ? "SIGINT" : "SIGTERM")") }
        }
    }

    /// The signal that stopped the run, if any.
    public static var received: Int32? { lock.withLock { signalNumber } }

    /// The exit status for an interrupted run: 130 for SIGINT, 143 for SIGTERM.
    public static var exitStatus: Int32? { received.map { 128 + $0 } }

    /// The machine a signal stops (one at a time: bench and the attack matrix run machines one after another).
    static func running(_ m: Machine?) {
        let pending = lock.withLock { () -> Bool in
            machine = m
            return signalNumber != nil
        }
        // A signal that came between two machines stops the next one at once.
        if pending, let m { m.lock.withLock { m.finish(.interrupted, "stopped by a signal") } }
    }
}
