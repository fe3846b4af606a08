// SPDX-License-Identifier: MIT
// Compile-time layout checks for what Swift cannot verify, and the kick-signal installer.
#include "CKVM.h"

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>

// kvm_regs / kvm_sregs sizes (rust-vmm kvm-bindings asserts the same).
_Static_assert(sizeof(struct kvm_regs) == 144, "kvm_regs size");
_Static_assert(sizeof(struct kvm_sregs) == 312, "kvm_sregs size");
_Static_assert(sizeof(struct kvm_vcpu_events) == 64, "kvm_vcpu_events size");
_Static_assert(offsetof(struct kvm_vcpu_events, smi) == 24, "kvm_vcpu_events.smi offset");
// kvm_run header and the anonymous-union members minivmm decodes (offset(of:) returns nil for these in Swift).
_Static_assert(offsetof(struct kvm_run, exit_reason) == 8, "kvm_run.exit_reason");
_Static_assert(offsetof(struct kvm_run, flags) == 14, "kvm_run.flags");
_Static_assert(offsetof(struct kvm_run, io) == 32, "kvm_run.io");
_Static_assert(offsetof(struct kvm_run, mmio) == 32, "kvm_run.mmio");
_Static_assert(offsetof(struct kvm_run, mmio.data) == 40, "kvm_run.mmio.data (VCPUExit.decode)");
_Static_assert(offsetof(struct kvm_run, debug) == 32, "kvm_run.debug");
_Static_assert(offsetof(struct kvm_run, msr) == 32, "kvm_run.msr");
_Static_assert(offsetof(struct kvm_run, internal) == 32, "kvm_run.internal");
_Static_assert(offsetof(struct kvm_run, fail_entry) == 32, "kvm_run.fail_entry");
_Static_assert(offsetof(struct kvm_run, system_event) == 32, "kvm_run.system_event");
_Static_assert(offsetof(struct kvm_run, kvm_valid_regs) == 288, "kvm_run.kvm_valid_regs");
_Static_assert(offsetof(struct kvm_run, kvm_dirty_regs) == 296, "kvm_run.kvm_dirty_regs");
_Static_assert(offsetof(struct kvm_run, s) == 304, "kvm_run.s (sync regs)");
_Static_assert(sizeof(struct kvm_sync_regs) <= SYNC_REGS_SIZE_BYTES, "sync regs fit");

static void ckvm_kick_handler(int signo) { (void)signo; }

int ckvm_install_kick_signal(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = ckvm_kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    return sigaction(signo, &sa, NULL);
}

int ckvm_unblock_signal(int signo) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}
