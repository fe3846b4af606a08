// SPDX-License-Identifier: MIT
import CKVM
import Testing

@testable import KVMBridge

/// Process limits a VMM with one thread per vCPU raises. No KVM needed.
struct ResourceLimitsTests {
    /// Where the process has a private futex hash (Linux 6.16+, and this multi-threaded test process), it grows to a
    /// power of two covering the waiters and never shrinks; elsewhere the call does nothing and says so.
    @Test func futexHashGrowsToCoverTheWaiters() {
        let before = Int(ckvm_futex_hash_slots())
        guard let slots = ResourceLimits.ensureFutexHash(waiters: 5000) else {
            #expect(before <= 0, "a private hash of \(before) buckets was left alone")
            return
        }
        #expect(slots >= 5000 && slots & (slots - 1) == 0, "\(slots) buckets")
        #expect(Int(ckvm_futex_hash_slots()) == slots)
        #expect(ResourceLimits.ensureFutexHash(waiters: 10) == slots, "a smaller request must not shrink it")
    }
}
