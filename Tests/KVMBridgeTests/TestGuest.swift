// SPDX-License-Identifier: MIT
import CKVM
import Foundation
import KVMBridge
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Whether KVM tests run: on a host with an openable /dev/kvm, and always under CI=true (where a missing
/// /dev/kvm must fail the run, not skip it).
enum KVMGate {
    static let underCI = ProcessInfo.processInfo.environment["CI"] == "true"
    static let enabled = underCI || KVM.isAvailable
    static let reason: Comment =
        "needs an openable /dev/kvm (run as root or in the kvm group); CI=true forces these tests"
}

/// A one-vCPU real-mode test VM: `memSize` bytes of RAM at guest-physical 0, code loaded at `codeAt`, the vCPU
/// starting in real mode with CS base 0 at `codeAt`. Hand-assembled guests carry their mnemonics beside the bytes.
final class TestGuest {
    let kvm: KVM
    let vm: VirtualMachine
    let vcpu: VCPU
    let mem: UnsafeMutableRawPointer
    let memSize: Int

    init(
        code: [UInt8], codeAt: UInt64 = 0x1000, memSize: Int = 0x10000,
        extra: (VirtualMachine) throws -> Void = { _ in }
    )
        throws
    {
        kvm = try KVM()
        vm = try kvm.createVM()
        self.memSize = memSize
        // SAFETY: anonymous private mapping owned by this object, unmapped in deinit.
        mem = mmap(nil, memSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        try vm.setMemoryRegion(
            MemoryRegion(
                slot: 0, guestPhysicalAddress: 0, size: UInt64(memSize), hostAddress: UInt64(UInt(bitPattern: mem))))
        try extra(vm)
        for (i, b) in code.enumerated() { mem.storeBytes(of: b, toByteOffset: Int(codeAt) + i, as: UInt8.self) }
        vcpu = try vm.createVCPU(id: 0)
        var s = try vcpu.getSregs()
        s.cs.base = 0
        s.cs.selector = 0
        try vcpu.setSregs(s)
        var r = try vcpu.getRegs()
        r.rip = codeAt
        r.rflags = 2
        try vcpu.setRegs(r)
    }

    deinit { munmap(mem, memSize) }

    func byte(at gpa: Int) -> UInt8 { mem.load(fromByteOffset: gpa, as: UInt8.self) }
    func store(_ bytes: [UInt8], at gpa: Int) {
        for (i, b) in bytes.enumerated() { mem.storeBytes(of: b, toByteOffset: gpa + i, as: UInt8.self) }
    }

    /// Runs until an exit other than `.interrupted`, at most `limit` times.
    func next(limit: Int = 100) throws -> VCPUExit {
        for _ in 0..<limit {
            let e = try vcpu.runOnce()
            if case .interrupted = e { continue }
            return e
        }
        Issue.record("vCPU never exited")
        return .unknown(0xFFFF)
    }
}
