// SPDX-License-Identifier: MIT
import CKVM
import Foundation
import KVMBridge

#if canImport(Glibc)
    import Glibc
#endif

/// The host floors of DESIGN.md §6, measured in the bench's own process: what one bare `KVM_RUN` round trip
/// and one vCPU creation cost on this machine right now. Boot times are reported as ratios to these.
public struct HostFloors: Codable, Sendable, Equatable {
    /// Median µs per `KVM_RUN` round trip (guest `out` → userspace → guest).
    public var kvmRunExitMicros: Double
    /// µs per exit of each timed batch.
    public var kvmRunBatchMicros: [Double]
    /// Exits per batch.
    public var exitsPerBatch: Int
    /// Median µs per `KVM_CREATE_VCPU` (with its `kvm_run` mmap).
    public var vcpuCreationMicros: Double
    /// µs per vCPU of each fresh VM.
    public var vcpuCreationBatchMicros: [Double]
    /// vCPUs created per fresh VM.
    public var vcpusPerBatch: Int
    /// This KVM's `KVM_CAP_MAX_VCPUS`.
    public var kvmMaxVCPUs: Int

    public init(
        kvmRunExitMicros: Double, kvmRunBatchMicros: [Double], exitsPerBatch: Int, vcpuCreationMicros: Double,
        vcpuCreationBatchMicros: [Double], vcpusPerBatch: Int, kvmMaxVCPUs: Int
    ) {
        self.kvmRunExitMicros = kvmRunExitMicros
        self.kvmRunBatchMicros = kvmRunBatchMicros
        self.exitsPerBatch = exitsPerBatch
        self.vcpuCreationMicros = vcpuCreationMicros
        self.vcpuCreationBatchMicros = vcpuCreationBatchMicros
        self.vcpusPerBatch = vcpusPerBatch
        self.kvmMaxVCPUs = kvmMaxVCPUs
    }

    /// The floor model of relocating every possible CPU, in seconds: F = maxCPUs × (one vCPU creation + 2 bare
    /// `KVM_RUN` round trips), the two exits standing in for the least an SMI round trip (entry, RSM) can cost.
    /// A strategy that creates no vCPU for CPUs absent at boot (B, C, N on the emulated backend) can beat it.
    public func modelSeconds(maxCPUs: Int) -> Double {
        Double(maxCPUs) * (vcpuCreationMicros + 2 * kvmRunExitMicros) / 1e6
    }
}

/// Measures `HostFloors`.
public enum Floors {
    /// The floor guest, real mode at 0x1000 (CS base 0):
    ///
    ///     1000: E6 80    out 0x80, al
    ///     1002: EB FC    jmp 0x1000        ; rel8 −4 from 0x1004
    static let exitLoopCode: [UInt8] = [0xE6, 0x80, 0xEB, 0xFC]
    static let exitLoopAt: UInt64 = 0x1000
    static let exitLoopPort: UInt16 = 0x80

    /// Measures both floors: `batches` batches of `exitsPerBatch` exits (after a short warm-up), and
    /// `batches` fresh VMs of `vcpusPerBatch` vCPUs each (capped at this KVM's limit).
    public static func measure(
        kvm: KVM, exitsPerBatch: Int = 20_000, vcpusPerBatch: Int = 256, batches: Int = 3
    ) throws(MachineError) -> HostFloors {
        do {
            let exits = try measureExitRoundTrip(kvm: kvm, exitsPerBatch: exitsPerBatch, batches: batches)
            let perVM = max(1, min(vcpusPerBatch, kvm.maxVCPUs()))
            try ResourceLimits.ensureOpenFiles(perVM + 128)
            var creation: [Double] = []
            for _ in 0..<batches { creation.append(try measureVCPUCreation(kvm: kvm, count: perVM)) }
            return HostFloors(
                kvmRunExitMicros: BenchMath.median(exits) ?? 0, kvmRunBatchMicros: exits,
                exitsPerBatch: exitsPerBatch, vcpuCreationMicros: BenchMath.median(creation) ?? 0,
                vcpuCreationBatchMicros: creation, vcpusPerBatch: perVM, kvmMaxVCPUs: kvm.maxVCPUs())
        } catch let e as MachineError {
            throw e
        } catch let e as KVMError {
            throw .kvm("floor measurement: \(e.description)")
        } catch {
            throw .kvm("floor measurement: \(error)")
        }
    }

    /// µs per exit for each batch of the `out 0x80` loop on a fresh 1-vCPU VM.
    static func measureExitRoundTrip(kvm: KVM, exitsPerBatch: Int, batches: Int) throws -> [Double] {
        let memSize = 0x10000
        let vm = try kvm.createVM()
        // SAFETY: anonymous private mapping owned by this function; unmapped after the VM (and its vCPU) are gone.
        guard let mem = mmap(nil, memSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            mem != MAP_FAILED
        else { throw MachineError.hostResources("cannot map 64 KiB for the floor guest") }
        defer { munmap(mem, memSize) }
        for (i, b) in exitLoopCode.enumerated() {
            mem.storeBytes(of: b, toByteOffset: Int(exitLoopAt) + i, as: UInt8.self)
        }
        try vm.setMemoryRegion(
            MemoryRegion(
                slot: 0, guestPhysicalAddress: 0, size: UInt64(memSize), hostAddress: UInt64(UInt(bitPattern: mem))))
        let vcpu = try vm.createVCPU(id: 0)
        var s = try vcpu.getSregs()
        s.cs.base = 0
        s.cs.selector = 0
        try vcpu.setSregs(s)
        var r = try vcpu.getRegs()
        r.rip = exitLoopAt
        r.rflags = 2
        try vcpu.setRegs(r)

        func runExits(_ n: Int) throws {
            var seen = 0
            while seen < n {
                switch try vcpu.runOnce() {
                case .ioOut(let port, _, _, _) where port == exitLoopPort: seen += 1
                case .interrupted: continue
                case let other: throw MachineError.kvm("floor guest: unexpected exit \(other)")
                }
            }
        }
        try runExits(min(1000, exitsPerBatch))  // warm-up
        var out: [Double] = []
        for _ in 0..<batches {
            let t0 = BenchMath.now()
            try runExits(exitsPerBatch)
            out.append((BenchMath.now() - t0) * 1e6 / Double(max(exitsPerBatch, 1)))
        }
        withExtendedLifetime(vm) {}
        return out
    }

    /// µs per vCPU to create `count` vCPUs in a fresh VM.
    static func measureVCPUCreation(kvm: KVM, count: Int) throws -> Double {
        let vm = try kvm.createVM()
        var vcpus: [VCPU] = []
        vcpus.reserveCapacity(count)
        let t0 = BenchMath.now()
        for i in 0..<count { vcpus.append(try vm.createVCPU(id: UInt32(i))) }
        let dt = BenchMath.now() - t0
        withExtendedLifetime((vm, vcpus)) {}
        return dt * 1e6 / Double(max(count, 1))
    }
}
