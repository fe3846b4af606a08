// SPDX-License-Identifier: MIT
public import CKVM

#if canImport(Glibc)
    import Glibc
#endif

/// A KVM vCPU fd and its mmapped `kvm_run` (rust-vmm `VcpuFd`): run, register state, events, MSRs, CPUID,
/// guest debug, SMI/NMI/interrupt injection, `KVM_CAP_SYNC_REGS` access and kicking from other threads.
///
/// Threading: one thread runs a vCPU (`run()`); any thread may `kick()` it.
public final class VCPU: @unchecked Sendable {
    let fd: OwnedFD
    /// The vCPU id given to `KVM_CREATE_VCPU` (minivmm: = APIC ID = CPU index).
    public let id: UInt32
    /// The mmapped `struct kvm_run`.
    public let run: UnsafeMutablePointer<kvm_run>
    let mmapSize: Int
    /// The thread currently inside `run()`, for `kick()`.
    private let runner = RunnerThread()

    init(fd: OwnedFD, id: UInt32, mmapSize: Int) throws(KVMError) {
        self.fd = fd
        self.id = id
        self.mmapSize = mmapSize
        let p = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.raw, 0)
        guard let p, p != MAP_FAILED else { throw .ioctl(name: "mmap(kvm_run)", errno: Glibc.errno) }
        // SAFETY: KVM maps a kvm_run structure at offset 0 of the vCPU fd; size ≥ sizeof(kvm_run).
        self.run = p.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit {
        // SAFETY: unmapping exactly the region mapped in init; no references escape the object.
        munmap(UnsafeMutableRawPointer(run), mmapSize)
    }

    // MARK: running

    /// `KVM_RUN`, decoded. EINTR (a kick, a signal, or `immediate_exit`) becomes `.interrupted`; EAGAIN
    /// (KVM's "nothing to run yet", e.g. a vCPU in wait-for-SIPI with an SMI held) is also `.interrupted`, and
    /// ``lastRunNotRunnable`` tells the two apart.
    public func runOnce() throws(KVMError) -> VCPUExit {
        runner.enter()
        defer { runner.leave() }
        let r = ckvm_ioctl_none(fd.raw, CKVM_RUN)
        lastRunNotRunnable = false
        if r < 0 {
            let e = Glibc.errno
            if e == EINTR || e == EAGAIN {
                ckvm_set_immediate_exit(run, 0)
                lastRunNotRunnable = e == EAGAIN
                return .interrupted
            }
            throw .ioctl(name: "KVM_RUN", errno: e)
        }
        return VCPUExit.decode(run, mappingSize: mmapSize)
    }

    /// The last `KVM_RUN` failed with EAGAIN: KVM found the vCPU not runnable and returned without blocking
    /// (`kvm_arch_vcpu_ioctl_run` for a vCPU never started, `KVM_MP_STATE_UNINITIALIZED`, whose `kvm_vcpu_block`
    /// returns at once while a held SMI makes it "runnable"). Only the thread that runs the vCPU reads it.
    public private(set) var lastRunNotRunnable = false

    /// Makes a `run()` on another thread return `.interrupted` as soon as possible: sets `immediate_exit`
    /// (covers the window before the thread enters the kernel) and signals the thread (Firecracker's kick).
    /// Requires `VCPU.installKickSignal()` once per process.
    public func kick() {
        ckvm_set_immediate_exit(run, 1)
        runner.signal(VCPU.kickSignal)
    }

    /// Asks the next `KVM_RUN` to complete any pending I/O or MSR exit and return at once with EINTR
    /// (`KVM_CAP_IMMEDIATE_EXIT`), without running guest code.
    public func requestImmediateExit() { ckvm_set_immediate_exit(run, 1) }

    /// The signal used to kick vCPU threads out of `KVM_RUN`.
    public static let kickSignal: Int32 = SIGUSR1

    /// Unblocks the kick signal on the calling thread; every thread that calls `runOnce()` must do this
    /// once (threads made by Foundation or the Swift runtime may inherit a mask that blocks it).
    public static func prepareCurrentThreadForKicks() throws(KVMError) {
        let r = ckvm_unblock_signal(kickSignal)
        if r != 0 { throw .ioctl(name: "pthread_sigmask", errno: r) }
    }

    /// Installs the no-op, non-restarting kick handler (idempotent).
    public static func installKickSignal() throws(KVMError) {
        if ckvm_install_kick_signal(kickSignal) != 0 { throw .ioctl(name: "sigaction", errno: Glibc.errno) }
    }

    // MARK: KVM_CAP_SYNC_REGS

    /// Which register sets KVM copies into `kvm_run->s.regs` after every exit (`KVM_SYNC_X86_*`).
    public struct SyncSet: OptionSet, Sendable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// `KVM_SYNC_X86_REGS`
        public static let regs = SyncSet(rawValue: UInt64(KVM_SYNC_X86_REGS))
        /// `KVM_SYNC_X86_SREGS`
        public static let sregs = SyncSet(rawValue: UInt64(KVM_SYNC_X86_SREGS))
        /// `KVM_SYNC_X86_EVENTS`
        public static let events = SyncSet(rawValue: UInt64(KVM_SYNC_X86_EVENTS))
        public static let all: SyncSet = [.regs, .sregs, .events]
    }

    /// Enables `KVM_CAP_SYNC_REGS` for `sets`: after each `KVM_RUN` the synced copies are current, and
    /// writes through the `synced*` setters are loaded by the next `KVM_RUN` — no extra ioctls.
    public func enableSyncRegisters(_ sets: SyncSet = .all) {
        run.pointee.kvm_valid_regs = sets.rawValue
    }

    /// General registers as of the last exit (`kvm_run->s.regs.regs`); setting marks them dirty.
    public var syncedRegs: kvm_regs {
        get { run.pointee.s.regs.regs }
        set {
            run.pointee.s.regs.regs = newValue
            run.pointee.kvm_dirty_regs |= UInt64(KVM_SYNC_X86_REGS)
        }
    }

    /// Special registers as of the last exit; setting marks them dirty.
    public var syncedSregs: kvm_sregs {
        get { run.pointee.s.regs.sregs }
        set {
            run.pointee.s.regs.sregs = newValue
            run.pointee.kvm_dirty_regs |= UInt64(KVM_SYNC_X86_SREGS)
        }
    }

    /// vCPU events as of the last exit; setting marks them dirty (set `flags` to the `KVM_VCPUEVENT_VALID_*`
    /// bits that should apply).
    public var syncedEvents: kvm_vcpu_events {
        get { run.pointee.s.regs.events }
        set {
            run.pointee.s.regs.events = newValue
            run.pointee.kvm_dirty_regs |= UInt64(KVM_SYNC_X86_EVENTS)
        }
    }

    /// `kvm_run->flags & KVM_RUN_X86_SMM`: KVM reports the vCPU in SMM (kvm backend only).
    public var inKVMSMM: Bool { run.pointee.flags & UInt16(KVM_RUN_X86_SMM) != 0 }

    /// `kvm_run->if_flag` and `ready_for_interrupt_injection` after the last exit.
    public var readyForInterrupt: Bool {
        run.pointee.ready_for_interrupt_injection != 0 && run.pointee.if_flag != 0
    }

    /// `kvm_run->request_interrupt_window`.
    public var requestInterruptWindow: Bool {
        get { run.pointee.request_interrupt_window != 0 }
        set { run.pointee.request_interrupt_window = newValue ? 1 : 0 }
    }

    // MARK: user-space MSR exits

    /// Completes a `KVM_EXIT_X86_RDMSR`: `value` is returned in EDX:EAX, or `nil` injects #GP.
    public func completeMSRRead(_ value: UInt64?) {
        run.pointee.msr.data = value ?? 0
        run.pointee.msr.error = value == nil ? 1 : 0
    }

    /// Completes a `KVM_EXIT_X86_WRMSR`: `accepted == false` injects #GP.
    public func completeMSRWrite(accepted: Bool) {
        run.pointee.msr.error = accepted ? 0 : 1
    }

    // MARK: register ioctls

    /// `KVM_GET_REGS`.
    public func getRegs() throws(KVMError) -> kvm_regs {
        var r = kvm_regs()
        _ = try Syscall.ioctl(fd.raw, CKVM_GET_REGS, "KVM_GET_REGS", &r)
        return r
    }

    /// `KVM_SET_REGS`.
    public func setRegs(_ regs: kvm_regs) throws(KVMError) {
        var r = regs
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_REGS, "KVM_SET_REGS", &r)
    }

    /// `KVM_GET_SREGS`.
    public func getSregs() throws(KVMError) -> kvm_sregs {
        var s = kvm_sregs()
        _ = try Syscall.ioctl(fd.raw, CKVM_GET_SREGS, "KVM_GET_SREGS", &s)
        return s
    }

    /// `KVM_SET_SREGS`.
    public func setSregs(_ sregs: kvm_sregs) throws(KVMError) {
        var s = sregs
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_SREGS, "KVM_SET_SREGS", &s)
    }

    /// `KVM_GET_VCPU_EVENTS` (`KVM_CAP_VCPU_EVENTS`).
    public func getEvents() throws(KVMError) -> kvm_vcpu_events {
        var e = kvm_vcpu_events()
        _ = try Syscall.ioctl(fd.raw, CKVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", &e)
        return e
    }

    /// `KVM_SET_VCPU_EVENTS`.
    public func setEvents(_ events: kvm_vcpu_events) throws(KVMError) {
        var e = events
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", &e)
    }

    /// `KVM_GET_DEBUGREGS` (`KVM_CAP_DEBUGREGS`).
    public func getDebugRegs() throws(KVMError) -> kvm_debugregs {
        var d = kvm_debugregs()
        _ = try Syscall.ioctl(fd.raw, CKVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", &d)
        return d
    }

    /// `KVM_SET_DEBUGREGS`.
    public func setDebugRegs(_ regs: kvm_debugregs) throws(KVMError) {
        var d = regs
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", &d)
    }

    /// `KVM_TRANSLATE`: the guest-physical address of `linear` through the vCPU's current paging mode (identity
    /// when paging is off), and whether the page is writable. Nil when KVM reports no valid translation.
    public func translate(_ linear: UInt64) throws(KVMError) -> (physical: UInt64, writeable: Bool)? {
        var t = kvm_translation()
        t.linear_address = linear
        _ = try Syscall.ioctl(fd.raw, CKVM_TRANSLATE, "KVM_TRANSLATE", &t)
        guard t.valid != 0 else { return nil }
        return (t.physical_address, t.writeable != 0)
    }

    /// `KVM_GET_XSAVE2` (`size` > 4096, from `KVM_CAP_XSAVE2`) or `KVM_GET_XSAVE` (4096 bytes, `struct
    /// kvm_xsave`): the vCPU's x87/SSE/AVX state in the XSAVE layout (legacy area, header, extended components).
    public func getXSAVE(size: Int) throws(KVMError) -> [UInt8] {
        let n = max(size, MemoryLayout<kvm_xsave>.size)
        let big = n > MemoryLayout<kvm_xsave>.size
        let buf = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 8)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: n)
        // SAFETY: buf holds `n` ≥ sizeof(struct kvm_xsave) bytes, the size KVM writes for this request.
        _ = try Syscall.ioctl(
            fd.raw, big ? CKVM_GET_XSAVE2 : CKVM_GET_XSAVE, big ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE", raw: buf)
        return Array(UnsafeRawBufferPointer(start: buf, count: n))
    }

    /// `KVM_SET_XSAVE` with a buffer from ``getXSAVE(size:)`` (KVM reads as many bytes as the guest's XSAVE size).
    public func setXSAVE(_ state: [UInt8]) throws(KVMError) {
        guard state.count >= MemoryLayout<kvm_xsave>.size else {
            throw .invalidArgument("an XSAVE buffer is at least \(MemoryLayout<kvm_xsave>.size) bytes")
        }
        let buf = UnsafeMutableRawPointer.allocate(byteCount: state.count, alignment: 8)
        defer { buf.deallocate() }
        buf.copyMemory(from: state, byteCount: state.count)
        // SAFETY: buf holds the whole XSAVE image (≥ sizeof(struct kvm_xsave) bytes); the kernel only reads it.
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_XSAVE, "KVM_SET_XSAVE", raw: buf)
    }

    /// Whether the vCPU has the TSC offset attribute (`KVM_HAS_DEVICE_ATTR` of `KVM_VCPU_TSC_CTRL` /
    /// `KVM_VCPU_TSC_OFFSET`, Linux 5.16+): the guest TSC is the host's (scaled) plus this offset.
    public var hasTSCOffsetAttribute: Bool {
        var a = kvm_device_attr(flags: 0, group: CKVM_VCPU_TSC_CTRL, attr: CKVM_VCPU_TSC_OFFSET, addr: 0)
        return (try? Syscall.ioctl(fd.raw, CKVM_HAS_DEVICE_ATTR, "KVM_HAS_DEVICE_ATTR", &a)) != nil
    }

    /// `KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)`.
    public func getTSCOffset() throws(KVMError) -> UInt64 {
        try tscOffsetAttribute(CKVM_GET_DEVICE_ATTR, "KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)", 0)
    }

    /// `KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)`.
    public func setTSCOffset(_ offset: UInt64) throws(KVMError) {
        _ = try tscOffsetAttribute(CKVM_SET_DEVICE_ATTR, "KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)", offset)
    }

    /// The TSC offset attribute through `request` (get or set): `value` in, the u64 at `addr` afterwards out.
    private func tscOffsetAttribute(_ request: UInt, _ name: String, _ value: UInt64) throws(KVMError) -> UInt64 {
        let cell = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        defer { cell.deallocate() }
        cell.pointee = value
        // SAFETY: `addr` points at a live u64 the kernel reads (set) or writes (get) for the duration of the ioctl.
        var a = kvm_device_attr(
            flags: 0, group: CKVM_VCPU_TSC_CTRL, attr: CKVM_VCPU_TSC_OFFSET, addr: UInt64(UInt(bitPattern: cell)))
        _ = try Syscall.ioctl(fd.raw, request, name, &a)
        return cell.pointee
    }

    /// `KVM_GET_XCRS` (`KVM_CAP_XCRS`): the extended control registers (XCR0).
    public func getXCRs() throws(KVMError) -> kvm_xcrs {
        var x = kvm_xcrs()
        _ = try Syscall.ioctl(fd.raw, CKVM_GET_XCRS, "KVM_GET_XCRS", &x)
        return x
    }

    /// `KVM_SET_XCRS`.
    public func setXCRs(_ xcrs: kvm_xcrs) throws(KVMError) {
        var x = xcrs
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_XCRS, "KVM_SET_XCRS", &x)
    }

    /// KVM's multiprocessing states (`KVM_MP_STATE_*`).
    public enum MPState: UInt32, Sendable {
        case runnable = 0, uninitialized = 1, initReceived = 2, halted = 3, sipiReceived = 4
    }

    /// `KVM_GET_MP_STATE` (`KVM_CAP_MP_STATE`).
    public func getMPState() throws(KVMError) -> UInt32 {
        var m = kvm_mp_state()
        _ = try Syscall.ioctl(fd.raw, CKVM_GET_MP_STATE, "KVM_GET_MP_STATE", &m)
        return m.mp_state
    }

    /// `KVM_SET_MP_STATE`.
    public func setMPState(_ state: MPState) throws(KVMError) {
        var m = kvm_mp_state(mp_state: state.rawValue)
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_MP_STATE, "KVM_SET_MP_STATE", &m)
    }

    /// `KVM_GET_MSRS`: returns the values KVM processed (KVM stops at the first MSR it cannot read, so the
    /// result may hold fewer entries than asked).
    public func getMSRs(_ indices: [UInt32]) throws(KVMError) -> [UInt32: UInt64] {
        try withMSRBuffer(indices.map { ($0, 0) }, CKVM_GET_MSRS, "KVM_GET_MSRS") { entries, done in
            var out: [UInt32: UInt64] = [:]
            for i in 0..<done { out[entries[i].index] = entries[i].data }
            return out
        }
    }

    /// `KVM_SET_MSRS`: returns how many MSRs KVM accepted (in order).
    @discardableResult
    public func setMSRs(_ values: [(UInt32, UInt64)]) throws(KVMError) -> Int {
        try withMSRBuffer(values, CKVM_SET_MSRS, "KVM_SET_MSRS") { _, done in done }
    }

    /// Builds a `struct kvm_msrs` (flexible array member) from `values`, issues `request`, and hands the
    /// entries and the kernel's processed count to `result`.
    private func withMSRBuffer<T>(
        _ values: [(UInt32, UInt64)], _ request: UInt, _ name: String,
        _ result: (UnsafeMutablePointer<kvm_msr_entry>, Int) -> T
    ) throws(KVMError) -> T {
        let n = UInt32(values.count)
        let size = ckvm_msrs_size(n)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        // SAFETY: buf is a kvm_msrs header followed by n kvm_msr_entry slots, alive for the whole call.
        buf.assumingMemoryBound(to: kvm_msrs.self).pointee.nmsrs = n
        let entries = (buf + MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
        for (i, v) in values.enumerated() {
            entries[i].index = v.0
            entries[i].data = v.1
        }
        let done = try Syscall.ioctl(fd.raw, request, name, raw: buf)
        return result(entries, Int(done))
    }

    /// `KVM_SET_CPUID2`.
    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        let n = UInt32(entries.count)
        let size = ckvm_cpuid2_size(n)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        // SAFETY: buf is a kvm_cpuid2 header followed by n kvm_cpuid_entry2 slots.
        buf.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = n
        let slots = (buf + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
        for (i, e) in entries.enumerated() { slots[i] = e.raw }
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_CPUID2, "KVM_SET_CPUID2", raw: buf)
    }

    // MARK: guest debug

    /// `KVM_SET_GUEST_DEBUG`: `singleStep` traps after every instruction; `breakpoints` (≤ 4 linear
    /// addresses) are instruction breakpoints in DR0–DR3. Both exit as `KVM_EXIT_DEBUG`. Empty + false
    /// disables guest debugging.
    public func setGuestDebug(singleStep: Bool = false, breakpoints: [UInt64] = []) throws(KVMError) {
        guard breakpoints.count <= 4 else { throw .invalidArgument("at most 4 hardware breakpoints") }
        var g = kvm_guest_debug()
        var control: UInt32 = 0
        if singleStep { control |= UInt32(KVM_GUESTDBG_SINGLESTEP) }
        if !breakpoints.isEmpty { control |= UInt32(KVM_GUESTDBG_USE_HW_BP) }
        if control != 0 { control |= UInt32(KVM_GUESTDBG_ENABLE) }
        g.control = control
        withUnsafeMutableBytes(of: &g.arch.debugreg) { buf in
            let dr = buf.bindMemory(to: UInt64.self)
            var dr7: UInt64 = 0
            for (i, addr) in breakpoints.enumerated() {
                dr[i] = addr
                dr7 |= 1 << (UInt64(i) * 2)  // Ln: local enable; R/W=00 (execute), LEN=00
            }
            dr[7] = dr7
        }
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_GUEST_DEBUG, "KVM_SET_GUEST_DEBUG", &g)
    }

    // MARK: injection

    /// `KVM_SMI`: queue an SMI (`KVM_CAP_X86_SMM`). ENOTTY on a KVM built without SMM becomes `.unsupported`.
    public func smi() throws(KVMError) {
        do {
            _ = try Syscall.ioctl(fd.raw, CKVM_SMI, "KVM_SMI")
        } catch {
            if error.errno == ENOTTY || error.errno == EINVAL {
                throw .unsupported(name: "KVM_SMI", capability: "KVM_CAP_X86_SMM")
            }
            throw error
        }
    }

    /// `KVM_NMI`: queue an NMI.
    public func nmi() throws(KVMError) {
        _ = try Syscall.ioctl(fd.raw, CKVM_NMI, "KVM_NMI")
    }

    /// `KVM_INTERRUPT`: inject an external interrupt (userspace irqchip only).
    public func interrupt(vector: UInt8) throws(KVMError) {
        var i = kvm_interrupt(irq: UInt32(vector))
        _ = try Syscall.ioctl(fd.raw, CKVM_INTERRUPT, "KVM_INTERRUPT", &i)
    }

    /// `KVM_GET_LAPIC` (in-kernel local APIC).
    public func getLAPIC() throws(KVMError) -> kvm_lapic_state {
        var s = kvm_lapic_state()
        _ = try Syscall.ioctl(fd.raw, CKVM_GET_LAPIC, "KVM_GET_LAPIC", &s)
        return s
    }

    /// `KVM_SET_LAPIC`.
    public func setLAPIC(_ state: kvm_lapic_state) throws(KVMError) {
        var s = state
        _ = try Syscall.ioctl(fd.raw, CKVM_SET_LAPIC, "KVM_SET_LAPIC", &s)
    }
}

/// Tracks which thread is inside `KVM_RUN` so `kick()` can signal it.
final class RunnerThread: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var thread: pthread_t?

    init() { pthread_mutex_init(&lock, nil) }
    deinit { pthread_mutex_destroy(&lock) }

    func enter() {
        pthread_mutex_lock(&lock)
        thread = pthread_self()
        pthread_mutex_unlock(&lock)
    }

    func leave() {
        pthread_mutex_lock(&lock)
        thread = nil
        pthread_mutex_unlock(&lock)
    }

    func signal(_ signo: Int32) {
        pthread_mutex_lock(&lock)
        if let t = thread { pthread_kill(t, signo) }
        pthread_mutex_unlock(&lock)
    }
}
