// SPDX-License-Identifier: MIT
public import CKVM

/// Why `KVM_RUN` returned: one case per `KVM_EXIT_*` minivmm meets (rust-vmm `VcpuExit`). I/O and MMIO
/// payloads point into the vCPU's `kvm_run` page and are valid until the next `KVM_RUN`.
public enum VCPUExit {
    /// Corresponds to `KVM_EXIT_IO` with `KVM_EXIT_IO_IN`: fill `data` (`count` × `size` bytes) for the guest.
    case ioIn(port: UInt16, size: Int, count: Int, data: UnsafeMutableRawBufferPointer)
    /// Corresponds to `KVM_EXIT_IO` with `KVM_EXIT_IO_OUT`: `data` holds `count` × `size` bytes.
    case ioOut(port: UInt16, size: Int, count: Int, data: UnsafeRawBufferPointer)
    /// Corresponds to `KVM_EXIT_MMIO` for a read: fill `data`.
    case mmioRead(address: UInt64, data: UnsafeMutableRawBufferPointer)
    /// Corresponds to `KVM_EXIT_MMIO` for a write (also a write to a read-only memslot).
    case mmioWrite(address: UInt64, data: UnsafeRawBufferPointer)
    /// Corresponds to `KVM_EXIT_HLT` (userspace local APIC: the VMM decides when the vCPU wakes).
    case hlt
    /// Corresponds to `KVM_EXIT_DEBUG` (`struct kvm_debug_exit_arch`): single-step or breakpoint.
    case debug(exception: UInt32, pc: UInt64, dr6: UInt64, dr7: UInt64)
    /// Corresponds to `KVM_EXIT_SHUTDOWN`: triple fault.
    case shutdown
    /// Corresponds to `KVM_EXIT_INTERNAL_ERROR` with `KVM_INTERNAL_ERROR_*` suberror and its data words.
    case internalError(suberror: UInt32, data: [UInt64])
    /// Corresponds to `KVM_EXIT_FAIL_ENTRY`: hardware refused the entry.
    case failEntry(reason: UInt64, cpu: UInt32)
    /// Corresponds to `KVM_EXIT_SYSTEM_EVENT` (`KVM_SYSTEM_EVENT_*`).
    case systemEvent(type: UInt32)
    /// Corresponds to `KVM_EXIT_X86_RDMSR` (`KVM_CAP_X86_USER_SPACE_MSR`): answer with `VCPU.completeMSRRead`.
    case rdmsr(index: UInt32, reason: UInt32)
    /// Corresponds to `KVM_EXIT_X86_WRMSR`: accept or refuse with `VCPU.completeMSRWrite`.
    case wrmsr(index: UInt32, value: UInt64, reason: UInt32)
    /// Corresponds to `KVM_EXIT_IRQ_WINDOW_OPEN`: the guest can take an interrupt now.
    case irqWindowOpen
    /// Corresponds to `KVM_EXIT_INTR`, or `KVM_RUN` failing with EINTR: a kick or `immediate_exit`.
    case interrupted
    /// Any other `KVM_EXIT_*` value (never a crash).
    case unknown(UInt32)
    /// A `KVM_EXIT_IO` whose data (`data_offset`, `size` × `count`) does not lie inside the vCPU mapping: never
    /// dereferenced, reported as what it is.
    case malformedIO(port: UInt16, dataOffset: UInt64, length: Int)

    /// Decodes the exit recorded in a `kvm_run` (pure: tests feed synthetic `kvm_run` pages). `mappingSize` is the
    /// size of the vCPU mapping that starts at `run` (`KVM_GET_VCPU_MMAP_SIZE`): I/O data outside it is never pointed
    /// at (`.malformedIO`), whatever `data_offset` holds.
    public static func decode(_ run: UnsafeMutablePointer<kvm_run>, mappingSize: Int) -> VCPUExit {
        let base = UnsafeMutableRawPointer(run)
        switch Int32(run.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = run.pointee.io
            let size = Int(io.size)
            let count = Int(io.count)
            let length = size * count  // at most 255 × (2^32 - 1): no overflow in a 64-bit Int
            // data_offset is a u64 from the page: checked against the mapping before any pointer is formed.
            guard mappingSize >= 0, io.data_offset <= UInt64(mappingSize),
                UInt64(length) <= UInt64(mappingSize) - io.data_offset
            else {
                return .malformedIO(port: io.port, dataOffset: io.data_offset, length: length)
            }
            // SAFETY: [data_offset, data_offset + length) was just checked to lie inside the mapping at `run`.
            let data = base + Int(io.data_offset)
            if io.direction == UInt8(KVM_EXIT_IO_IN) {
                return .ioIn(
                    port: io.port, size: size, count: count,
                    data: UnsafeMutableRawBufferPointer(start: data, count: length))
            }
            return .ioOut(
                port: io.port, size: size, count: count, data: UnsafeRawBufferPointer(start: data, count: length))
        case KVM_EXIT_MMIO:
            let len = Int(min(run.pointee.mmio.len, 8))
            // SAFETY: `mmio.data` is an 8-byte array inside kvm_run; the pointer stays valid while `run` is mapped.
            let dataOffset = 32 + 8  // offsetof(kvm_run, mmio.data), asserted via mmio offset in shim.c
            let data = base + dataOffset
            if run.pointee.mmio.is_write != 0 {
                return .mmioWrite(
                    address: run.pointee.mmio.phys_addr, data: UnsafeRawBufferPointer(start: data, count: len))
            }
            return .mmioRead(
                address: run.pointee.mmio.phys_addr, data: UnsafeMutableRawBufferPointer(start: data, count: len))
        case KVM_EXIT_HLT:
            return .hlt
        case KVM_EXIT_DEBUG:
            let d = run.pointee.debug.arch
            return .debug(exception: d.exception, pc: d.pc, dr6: d.dr6, dr7: d.dr7)
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_INTERNAL_ERROR:
            let i = run.pointee.internal
            let n = Int(min(i.ndata, 16))
            let words = withUnsafeBytes(of: i.data) { Array($0.bindMemory(to: UInt64.self).prefix(n)) }
            return .internalError(suberror: i.suberror, data: words)
        case KVM_EXIT_FAIL_ENTRY:
            let f = run.pointee.fail_entry
            return .failEntry(reason: f.hardware_entry_failure_reason, cpu: f.cpu)
        case KVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(type: run.pointee.system_event.type)
        case KVM_EXIT_X86_RDMSR:
            return .rdmsr(index: run.pointee.msr.index, reason: run.pointee.msr.reason)
        case KVM_EXIT_X86_WRMSR:
            let m = run.pointee.msr
            return .wrmsr(index: m.index, value: m.data, reason: m.reason)
        case KVM_EXIT_IRQ_WINDOW_OPEN:
            return .irqWindowOpen
        case KVM_EXIT_INTR:
            return .interrupted
        default:
            return .unknown(run.pointee.exit_reason)
        }
    }

    /// A short name for traces and reports, e.g. `io-out 0x402`.
    public var summary: String {
        func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case .ioIn(let port, let size, let count, _): return "io-in \(hex(port)) size \(size)x\(count)"
        case .ioOut(let port, let size, let count, _): return "io-out \(hex(port)) size \(size)x\(count)"
        case .mmioRead(let a, let d): return "mmio-read \(hex(a)) len \(d.count)"
        case .mmioWrite(let a, let d): return "mmio-write \(hex(a)) len \(d.count)"
        case .hlt: return "hlt"
        case .debug(let e, let pc, _, _): return "debug #\(e) pc \(hex(pc))"
        case .shutdown: return "shutdown (triple fault)"
        case .internalError(let s, let d): return "internal-error suberror \(s) data \(d.map { hex($0) })"
        case .failEntry(let r, let cpu): return "fail-entry reason \(hex(r)) cpu \(cpu)"
        case .systemEvent(let t): return "system-event \(t)"
        case .rdmsr(let i, _): return "rdmsr \(hex(i))"
        case .wrmsr(let i, let v, _): return "wrmsr \(hex(i)) = \(hex(v))"
        case .irqWindowOpen: return "irq-window-open"
        case .interrupted: return "interrupted"
        case .unknown(let r): return "unknown exit \(r)"
        case .malformedIO(let port, let offset, let length):
            return "malformed io \(hex(port)): \(length) bytes at offset \(hex(offset)) outside kvm_run"
        }
    }
}
