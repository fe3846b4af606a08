// SPDX-License-Identifier: MIT
import CKVM
import Testing

@testable import KVMBridge

#if canImport(Glibc)
    import Glibc
#endif

/// Pure tests: exit decoding from a synthetic `kvm_run` page, errors, capabilities, bad fds. No KVM needed.
struct ExitDecodingTests {
    /// A zeroed 4 KiB "vCPU mapping" standing in for KVM's.
    final class FakeRun {
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096 * 2, alignment: 4096)
        var run: UnsafeMutablePointer<kvm_run> { page.assumingMemoryBound(to: kvm_run.self) }
        init() { page.initializeMemory(as: UInt8.self, repeating: 0, count: 8192) }
        deinit { page.deallocate() }
    }

    @Test func decodesPortOutWithData() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
        f.run.pointee.io.direction = UInt8(KVM_EXIT_IO_OUT)
        f.run.pointee.io.port = 0x402
        f.run.pointee.io.size = 1
        f.run.pointee.io.count = 3
        f.run.pointee.io.data_offset = 4096
        (f.page + 4096).copyMemory(from: [UInt8(0x41), 0x42, 0x43], byteCount: 3)
        guard case .ioOut(let port, let size, let count, let data) = VCPUExit.decode(f.run, mappingSize: 8192) else {
            Issue.record("not io-out")
            return
        }
        #expect(port == 0x402 && size == 1 && count == 3)
        #expect(Array(data) == [0x41, 0x42, 0x43])
    }

    @Test func decodesPortInBufferPointsIntoRun() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
        f.run.pointee.io.direction = UInt8(KVM_EXIT_IO_IN)
        f.run.pointee.io.port = 0x511
        f.run.pointee.io.size = 2
        f.run.pointee.io.count = 1
        f.run.pointee.io.data_offset = 4096
        guard case .ioIn(let port, 2, 1, let data) = VCPUExit.decode(f.run, mappingSize: 8192) else {
            Issue.record("not io-in")
            return
        }
        #expect(port == 0x511)
        data.storeBytes(of: UInt16(0xBEEF), as: UInt16.self)
        #expect((f.page + 4096).load(as: UInt16.self) == 0xBEEF)
    }

    @Test func decodesMMIOReadAndWrite() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_MMIO)
        f.run.pointee.mmio.phys_addr = 0xFEE0_0300
        f.run.pointee.mmio.len = 4
        f.run.pointee.mmio.is_write = 1
        withUnsafeMutableBytes(of: &f.run.pointee.mmio.data) { $0.storeBytes(of: UInt32(0x4500), as: UInt32.self) }
        guard case .mmioWrite(0xFEE0_0300, let d) = VCPUExit.decode(f.run, mappingSize: 8192) else {
            Issue.record("not mmio-write")
            return
        }
        #expect(d.load(as: UInt32.self) == 0x4500)
        f.run.pointee.mmio.is_write = 0
        guard case .mmioRead(0xFEE0_0300, let r) = VCPUExit.decode(f.run, mappingSize: 8192) else {
            Issue.record("not mmio-read")
            return
        }
        r.storeBytes(of: UInt32(7), as: UInt32.self)
        #expect(withUnsafeBytes(of: f.run.pointee.mmio.data) { $0.load(as: UInt32.self) } == 7)
    }

    @Test func decodesEveryOtherExit() {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_HLT)
        if case .hlt = VCPUExit.decode(f.run, mappingSize: 8192) {} else { Issue.record("hlt") }
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_SHUTDOWN)
        if case .shutdown = VCPUExit.decode(f.run, mappingSize: 8192) {} else { Issue.record("shutdown") }
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_DEBUG)
        f.run.pointee.debug.arch.pc = 0x1234
        f.run.pointee.debug.arch.exception = 1
        if case .debug(1, 0x1234, _, _) = VCPUExit.decode(f.run, mappingSize: 8192) {} else { Issue.record("debug") }
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_INTERNAL_ERROR)
        f.run.pointee.internal.suberror = UInt32(KVM_INTERNAL_ERROR_EMULATION)
        f.run.pointee.internal.ndata = 2
        withUnsafeMutableBytes(of: &f.run.pointee.internal.data) {
            $0.storeBytes(of: UInt64(0), toByteOffset: 0, as: UInt64.self)
            $0.storeBytes(of: UInt64(9), toByteOffset: 8, as: UInt64.self)
        }
        if case .internalError(1, let d) = VCPUExit.decode(f.run, mappingSize: 8192) {
            #expect(d == [0, 9])
        } else {
            Issue.record("internal")
        }
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_FAIL_ENTRY)
        f.run.pointee.fail_entry.hardware_entry_failure_reason = 0x21
        if case .failEntry(0x21, _) = VCPUExit.decode(f.run, mappingSize: 8192) {} else { Issue.record("fail entry") }
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_SYSTEM_EVENT)
        f.run.pointee.system_event.type = UInt32(KVM_SYSTEM_EVENT_RESET)
        if case .systemEvent(2) = VCPUExit.decode(f.run, mappingSize: 8192) {} else { Issue.record("system event") }
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_X86_RDMSR)
        f.run.pointee.msr.index = 0x9E
        if case .rdmsr(0x9E, _) = VCPUExit.decode(f.run, mappingSize: 8192) {} else { Issue.record("rdmsr") }
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_X86_WRMSR)
        f.run.pointee.msr.index = 0x830
        f.run.pointee.msr.data = 0x4200
        if case .wrmsr(0x830, 0x4200, _) = VCPUExit.decode(f.run, mappingSize: 8192) {} else { Issue.record("wrmsr") }
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_INTR)
        if case .interrupted = VCPUExit.decode(f.run, mappingSize: 8192) {} else { Issue.record("intr") }
        f.run.pointee.exit_reason = 0xDEAD
        if case .unknown(0xDEAD) = VCPUExit.decode(f.run, mappingSize: 8192) {} else { Issue.record("unknown") }
    }

    /// Found by fuzz-exit (seed Fuzz/corpus/exit/regression-io-data-offset): a `data_offset` of 2^63 or more trapped
    /// in `Int(_:)`, and any offset or `size × count` past the mapping gave a buffer pointing outside it.
    @Test(arguments: [
        (UInt64(1) << 63, UInt32(1)), (UInt64.max, UInt32(1)), (UInt64(8192), UInt32(1)), (UInt64(4096), UInt32.max),
        (UInt64(0x2_0000_0000), UInt32(4)),
    ])
    func ioDataOutsideTheMappingIsMalformedNotAPointer(offset: UInt64, count: UInt32) {
        let f = FakeRun()
        f.run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
        f.run.pointee.io.direction = UInt8(KVM_EXIT_IO_IN)
        f.run.pointee.io.port = 0x510
        f.run.pointee.io.size = 4
        f.run.pointee.io.count = count
        f.run.pointee.io.data_offset = offset
        let exit = VCPUExit.decode(f.run, mappingSize: 8192)
        guard case .malformedIO(0x510, offset, let length) = exit else {
            Issue.record("decoded as \(exit.summary)")
            return
        }
        #expect(length == 4 * Int(count))
        #expect(exit.summary.hasPrefix("malformed io 0x510"))
        // The last byte of the mapping is still fine.
        f.run.pointee.io.data_offset = 8188
        f.run.pointee.io.count = 1
        if case .ioIn(0x510, 4, 1, let d) = VCPUExit.decode(f.run, mappingSize: 8192) {
            #expect(d.count == 4)
        } else {
            Issue.record("4 bytes at 8188 of 8192 are inside")
        }
    }

    @Test func errorsCarryIoctlNameAndErrno() {
        let e = KVMError.ioctl(name: "KVM_CREATE_VCPU", errno: EEXIST)
        #expect(e.errno == EEXIST)
        #expect(e.description.hasPrefix("KVM_CREATE_VCPU failed: EEXIST"))
        #expect(
            KVMError.permissionDenied(path: "/dev/kvm").description
                == "permission denied on /dev/kvm: run with sudo or join the kvm group")
        #expect(KVMError.notAvailable(path: "/dev/kvm").description.hasPrefix("KVM is not available on this host"))
        #expect(
            KVMError.unsupported(name: "KVM_SMI", capability: "KVM_CAP_X86_SMM").description.contains("KVM_CAP_X86_SMM")
        )
    }

    @Test func openingAMissingDeviceIsNotAvailable() {
        #expect(throws: KVMError.notAvailable(path: "/nonexistent/kvm")) { try KVM(path: "/nonexistent/kvm") }
    }

    @Test func capabilityRoundTrip() {
        for c in Capability.allCases {
            #expect(Capability(rawValue: c.rawValue) == c)
            #expect(Capability(kernelName: c.kernelName) == c)
        }
        #expect(Capability.x86SMM.rawValue == UInt32(KVM_CAP_X86_SMM))
        #expect(Capability.syncRegisters.rawValue == UInt32(KVM_CAP_SYNC_REGS))
        #expect(Capability.userSpaceMSR.rawValue == UInt32(KVM_CAP_X86_USER_SPACE_MSR))
    }

    /// rust-vmm's `test_faulty_vcpu_fd`: every call on a bad fd fails with EBADF, named by its ioctl.
    @Test func badFileDescriptorsGiveEBADF() throws {
        let kvm = KVM(unchecked: -2, path: "bad")
        #expect(throws: KVMError.ioctl(name: "KVM_GET_API_VERSION", errno: EBADF)) { try kvm.apiVersion() }
        #expect(throws: KVMError.ioctl(name: "KVM_CREATE_VM", errno: EBADF)) { try kvm.createVM() }
        #expect(throws: KVMError.ioctl(name: "KVM_GET_SUPPORTED_CPUID", errno: EBADF)) { try kvm.supportedCPUID() }
        #expect(kvm.has(.x86SMM) == false)
        let vm = VirtualMachine(unchecked: -2, kvm: kvm, vcpuMmapSize: 4096)
        #expect(throws: KVMError.ioctl(name: "KVM_CREATE_VCPU", errno: EBADF)) { try vm.createVCPU(id: 0) }
        #expect(throws: KVMError.ioctl(name: "KVM_SET_TSS_ADDR", errno: EBADF)) { try vm.setTSSAddress(0xFFFB_D000) }
        #expect(throws: KVMError.ioctl(name: "KVM_SET_USER_MEMORY_REGION", errno: EBADF)) {
            try vm.setMemoryRegion(MemoryRegion(slot: 0, guestPhysicalAddress: 0, size: 4096, hostAddress: 4096))
        }
        #expect(throws: KVMError.ioctl(name: "mmap(kvm_run)", errno: EBADF)) {
            try VCPU(fd: OwnedFD(-2), id: 0, mmapSize: 4096)
        }
        #expect(throws: KVMError.invalidArgument("memory region 0x10 is not page aligned")) {
            try vm.setMemoryRegion(MemoryRegion(slot: 0, guestPhysicalAddress: 0x10, size: 4096, hostAddress: 4096))
        }
    }
}
