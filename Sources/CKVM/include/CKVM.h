// SPDX-License-Identifier: MIT
//
// CKVM: the C side of minivmm's KVM bridge.
//
// Why this shim exists: <linux/kvm.h> defines its ioctl numbers with the function-like _IO/_IOR/_IOW/_IOWR
// macros, which Swift does not import, and ioctl(2) is variadic, which Swift cannot call. So every ioctl
// number KVMBridge uses is re-exported here as `static const unsigned long` (a non-const static would be
// rejected by Swift 6's concurrency checking), and ioctl is wrapped in three non-variadic helpers.
// Layout facts Swift cannot check (members of kvm_run's anonymous unions) are asserted in shim.c.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/types.h>

// MARK: system ioctls (/dev/kvm)
static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
/* Available with KVM_CAP_EXT_CPUID */
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CKVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;

// MARK: VM ioctls
static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
/* Available with KVM_CAP_IRQCHIP */
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
/* Available with KVM_CAP_SET_TSS_ADDR */
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
/* Available with KVM_CAP_ENABLE_CAP_VM (VM) and KVM_CAP_ENABLE_CAP (vCPU) */
static const unsigned long CKVM_ENABLE_CAP = KVM_ENABLE_CAP;
/* Available with KVM_CAP_X86_MSR_FILTER */
static const unsigned long CKVM_X86_SET_MSR_FILTER = KVM_X86_SET_MSR_FILTER;
/* Available with KVM_CAP_SIGNAL_MSI (and an in-kernel irqchip) */
static const unsigned long CKVM_SIGNAL_MSI = KVM_SIGNAL_MSI;
/* Available with KVM_CAP_ADJUST_CLOCK */
static const unsigned long CKVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long CKVM_SET_CLOCK = KVM_SET_CLOCK;

// MARK: flags defined with shifts (not imported by Swift)
/* KVM_ENABLE_CAP(KVM_CAP_X2APIC_API) arguments */
static const uint64_t CKVM_X2APIC_API_USE_32BIT_IDS = KVM_X2APIC_API_USE_32BIT_IDS;
static const uint64_t CKVM_X2APIC_API_DISABLE_BROADCAST_QUIRK = KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK;

// MARK: vCPU ioctls
static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_INTERRUPT = KVM_INTERRUPT;
/* Available with KVM_CAP_MP_STATE */
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
/* Available with KVM_CAP_VCPU_EVENTS */
static const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
/* Available with KVM_CAP_DEBUGREGS */
static const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long CKVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
/* Available with KVM_CAP_XSAVE / KVM_CAP_XSAVE2 (the latter gives the buffer size) */
static const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
#ifdef KVM_GET_XSAVE2
static const unsigned long CKVM_GET_XSAVE2 = KVM_GET_XSAVE2;
#else
static const unsigned long CKVM_GET_XSAVE2 = _IOR(KVMIO, 0xcf, struct kvm_xsave);
#endif
/* vCPU device attributes (KVM_CAP_VCPU_ATTRIBUTES): the TSC offset (KVM_VCPU_TSC_CTRL / KVM_VCPU_TSC_OFFSET) */
static const unsigned long CKVM_HAS_DEVICE_ATTR = KVM_HAS_DEVICE_ATTR;
static const unsigned long CKVM_GET_DEVICE_ATTR = KVM_GET_DEVICE_ATTR;
static const unsigned long CKVM_SET_DEVICE_ATTR = KVM_SET_DEVICE_ATTR;
#ifdef KVM_VCPU_TSC_CTRL
static const uint32_t CKVM_VCPU_TSC_CTRL = KVM_VCPU_TSC_CTRL;
static const uint64_t CKVM_VCPU_TSC_OFFSET = KVM_VCPU_TSC_OFFSET;
#else
static const uint32_t CKVM_VCPU_TSC_CTRL = 0;
static const uint64_t CKVM_VCPU_TSC_OFFSET = 0;
#endif
/* Available with KVM_CAP_XCRS */
static const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
/* Available with KVM_CAP_SET_GUEST_DEBUG */
static const unsigned long CKVM_SET_GUEST_DEBUG = KVM_SET_GUEST_DEBUG;
/* Basic vCPU ioctl (no capability): linear -> guest-physical through the vCPU's current paging mode */
static const unsigned long CKVM_TRANSLATE = KVM_TRANSLATE;
/* Available with KVM_CAP_IRQCHIP (in-kernel local APIC) */
static const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CKVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long CKVM_NMI = KVM_NMI;
/* Available with KVM_CAP_X86_SMM */
static const unsigned long CKVM_SMI = KVM_SMI;

// MARK: non-variadic ioctl wrappers (ioctl(2) is variadic and cannot be called from Swift)

/// ioctl with no argument (e.g. KVM_RUN, KVM_SMI).
/* The calling thread's kernel thread ID (QMP query-cpus-fast thread-id); gettid(2) needs _GNU_SOURCE. */
static inline int ckvm_gettid(void) { return (int)syscall(SYS_gettid); }

/// `kvm_run->immediate_exit` is written by the vCPU thread (clearing it after EINTR) and by kicking threads, and read
/// by the kernel: every userspace access is an atomic store (found by ThreadSanitizer as a data race).
static inline void ckvm_set_immediate_exit(struct kvm_run *run, uint8_t value) {
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST);
}

static inline int ckvm_ioctl_none(int fd, unsigned long request) { return ioctl(fd, request, 0); }
/// ioctl with an integer argument (e.g. KVM_CHECK_EXTENSION, KVM_CREATE_VCPU, KVM_SET_TSS_ADDR).
static inline int ckvm_ioctl_int(int fd, unsigned long request, unsigned long value) {
    return ioctl(fd, request, value);
}
/// ioctl with a pointer argument (everything that passes a struct).
static inline int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }

// MARK: process futex hash

/* prctl(PR_FUTEX_HASH) (Linux 6.16+): the process-private futex hash. prctl(2) is variadic. */
#define CKVM_PR_FUTEX_HASH 78
#define CKVM_PR_FUTEX_HASH_SET_SLOTS 1
#define CKVM_PR_FUTEX_HASH_GET_SLOTS 2
/// The buckets of the process-private futex hash (0: the global hash), or -1/errno (EINVAL before Linux 6.16).
static inline int ckvm_futex_hash_slots(void) {
    return prctl(CKVM_PR_FUTEX_HASH, CKVM_PR_FUTEX_HASH_GET_SLOTS, 0UL, 0UL, 0UL);
}
/// Gives the process-private futex hash `slots` buckets (a power of two). Returns 0 or -1/errno.
static inline int ckvm_set_futex_hash_slots(unsigned long slots) {
    return prctl(CKVM_PR_FUTEX_HASH, CKVM_PR_FUTEX_HASH_SET_SLOTS, slots, 0UL, 0UL);
}

// MARK: vCPU kick signal

/// Installs an empty handler for `signo` without SA_RESTART, so a signal sent to a thread blocked in KVM_RUN
/// makes KVM_RUN return EINTR (the vCPU "kick", as Firecracker does with SIGRTMIN). Returns 0 or -1/errno.
int ckvm_install_kick_signal(int signo);

/// Unblocks `signo` in the calling thread's signal mask (vCPU threads call this once: threads created by
/// runtimes may start with signals blocked, and a blocked kick signal never interrupts KVM_RUN).
int ckvm_unblock_signal(int signo);

/// Size in bytes of `struct kvm_cpuid2` with `n` entries (flexible array member).
static inline size_t ckvm_cpuid2_size(uint32_t n) {
    return sizeof(struct kvm_cpuid2) + (size_t)n * sizeof(struct kvm_cpuid_entry2);
}
/// Size in bytes of `struct kvm_msrs` with `n` entries (flexible array member).
static inline size_t ckvm_msrs_size(uint32_t n) {
    return sizeof(struct kvm_msrs) + (size_t)n * sizeof(struct kvm_msr_entry);
}

#endif
