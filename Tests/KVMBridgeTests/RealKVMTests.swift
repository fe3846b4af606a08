// SPDX-License-Identifier: MIT
import CKVM
import Foundation
import KVMBridge
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Tests against the host's real /dev/kvm with hand-assembled real-mode guests (mnemonics beside the bytes).
@Suite(.enabled(if: KVMGate.enabled, KVMGate.reason))
struct RealKVMTests {
    @Test func systemQueries() throws {
        let kvm = try KVM()
        #expect(try kvm.apiVersion() == 12)
        #expect(try kvm.vcpuMmapSize() >= 4096)
        #expect(kvm.maxVCPUs() >= kvm.recommendedVCPUs())
        #expect(kvm.has(.userMemory))
        let cpuid = try kvm.supportedCPUID()
        #expect(cpuid.leaf(0) != nil)
    }

    @Test func portOutAndInWithGuestCheckingTheInValue() throws {
        let code: [UInt8] = [
            0xB0, 0x5A,  // mov al, 0x5a
            0xE6, 0x80,  // out 0x80, al
            0xE4, 0x81,  // in al, 0x81
            0x3C, 0xA5,  // cmp al, 0xa5
            0x75, 0x01,  // jne +1 (skip the hlt: the guest only halts when IN delivered 0xa5)
            0xF4,  // hlt
            0xE6, 0xEE,  // out 0xee, al  (failure marker)
            0xF4,
        ]
        let g = try TestGuest(code: code)
        guard case .ioOut(0x80, 1, 1, let d) = try g.next() else {
            Issue.record("expected OUT 0x80")
            return
        }
        #expect(d[0] == 0x5A)
        guard case .ioIn(0x81, 1, 1, let buf) = try g.next() else {
            Issue.record("expected IN 0x81")
            return
        }
        buf[0] = 0xA5
        let e = try g.next()
        guard case .hlt = e else {
            Issue.record("guest did not see the IN value: \(e.summary)")
            return
        }
    }

    @Test func mmioReadWriteAndReadOnlySlot() throws {
        // ROM slot at 0x20000 (read-only), unmapped MMIO at 0x30000 (reached with es=0x3000).
        let code: [UInt8] = [
            0xB8, 0x00, 0x30,  // mov ax, 0x3000
            0x8E, 0xC0,  // mov es, ax
            0x26, 0xA1, 0x10, 0x00,  // mov ax, es:[0x10]   -> MMIO read at 0x30010
            0x26, 0xA3, 0x20, 0x00,  // mov es:[0x20], ax   -> MMIO write at 0x30020 (value read back)
            0xB8, 0x00, 0x20,  // mov ax, 0x2000
            0x8E, 0xC0,  // mov es, ax
            0x26, 0xC6, 0x06, 0x00, 0x00, 0x77,  // mov byte es:[0], 0x77 -> write to read-only slot exits as MMIO
            0xF4,  // hlt
        ]
        let rom = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        defer { munmap(rom, 4096) }
        let g = try TestGuest(code: code, memSize: 0x10000) { vm in
            try vm.setMemoryRegion(
                MemoryRegion(
                    slot: 1, guestPhysicalAddress: 0x20000, size: 4096, hostAddress: UInt64(UInt(bitPattern: rom)),
                    readOnly: true))
        }
        guard case .mmioRead(0x30010, let r) = try g.next() else {
            Issue.record("expected MMIO read")
            return
        }
        #expect(r.count == 2)
        r.storeBytes(of: UInt16(0xC0DE), as: UInt16.self)
        guard case .mmioWrite(0x30020, let w) = try g.next() else {
            Issue.record("expected MMIO write")
            return
        }
        #expect(w.load(as: UInt16.self) == 0xC0DE)
        guard case .mmioWrite(0x20000, let ro) = try g.next() else {
            Issue.record("expected read-only slot write to exit as MMIO")
            return
        }
        #expect(ro[0] == 0x77)
        #expect(rom.load(as: UInt8.self) == 0)
        guard case .hlt = try g.next() else {
            Issue.record("expected hlt")
            return
        }
    }

    @Test func singleStepAndHardwareBreakpoint() throws {
        let code: [UInt8] = [0x90, 0x90, 0x40, 0x90, 0xF4]  // nop; nop; inc ax; nop; hlt
        let g = try TestGuest(code: code)
        try g.vcpu.setGuestDebug(singleStep: true)
        guard case .debug(_, let pc1, _, _) = try g.next() else {
            Issue.record("expected single-step exit")
            return
        }
        #expect(pc1 == 0x1001)
        guard case .debug(_, let pc2, _, _) = try g.next() else {
            Issue.record("expected second single-step exit")
            return
        }
        #expect(pc2 == 0x1002)
        try g.vcpu.setGuestDebug(breakpoints: [0x1004])
        guard case .debug(_, let pc3, _, _) = try g.next() else {
            Issue.record("expected breakpoint exit")
            return
        }
        #expect(pc3 == 0x1004)
        #expect(try g.vcpu.getRegs().rax & 0xFFFF == 1)
    }

    @Test func translateIsIdentityWithPagingOff() throws {
        let g = try TestGuest(code: [0xF4])
        let t = try g.vcpu.translate(0x1234)
        #expect(t?.physical == 0x1234)
        #expect(t?.writeable == true)
    }

    @Test func syncRegsRoundTripWithoutExtraIoctls() throws {
        let code: [UInt8] = [
            0xE6, 0x80,  // out 0x80, al   (the host changes AX through the synced copy here)
            0x89, 0xC3,  // mov bx, ax
            0xE6, 0x81,  // out 0x81, al
            0xF4,
        ]
        let g = try TestGuest(code: code)
        g.vcpu.enableSyncRegisters(.all)
        guard case .ioOut(0x80, _, _, _) = try g.next() else {
            Issue.record("expected OUT 0x80")
            return
        }
        var r = g.vcpu.syncedRegs
        #expect(r.rip == 0x1002)
        r.rax = 0x1234
        g.vcpu.syncedRegs = r
        guard case .ioOut(0x81, 1, 1, let d) = try g.next() else {
            Issue.record("expected OUT 0x81")
            return
        }
        #expect(d[0] == 0x34)
        #expect(g.vcpu.syncedRegs.rbx & 0xFFFF == 0x1234)
        #expect(g.vcpu.syncedSregs.cs.base == 0)
    }

    @Test func immediateExitReturnsInterrupted() throws {
        let g = try TestGuest(code: [0xEB, 0xFE])  // jmp $
        g.vcpu.requestImmediateExit()
        guard case .interrupted = try g.vcpu.runOnce() else {
            Issue.record("expected interrupted")
            return
        }
    }

    @Test func kickFromAnotherThreadInterruptsASpinningGuest() throws {
        try VCPU.installKickSignal()
        let g = try TestGuest(code: [0xEB, 0xFE])  // jmp $
        let vcpu = g.vcpu
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<String>("")
        // A real thread, not a Task: KVM_RUN blocks its thread, which must not be a cooperative-pool thread.
        let t = Thread {
            try? VCPU.prepareCurrentThreadForKicks()
            let exit = (try? vcpu.runOnce())?.summary ?? "error"
            result.withLock { $0 = exit }
            done.signal()
        }
        t.start()
        usleep(50_000)
        vcpu.kick()
        #expect(done.wait(timeout: .now() + 5) == .success)
        #expect(result.withLock { $0 } == "interrupted")
    }

    @Test func userSpaceMSRExitsAndInterruptInjection() throws {
        let code: [UInt8] = [
            0x66, 0xB9, 0x30, 0x08, 0x00, 0x00,  // mov ecx, 0x830 (x2APIC ICR)
            0x66, 0xB8, 0x00, 0x42, 0x00, 0x00,  // mov eax, 0x4200
            0x66, 0x31, 0xD2,  // xor edx, edx
            0x0F, 0x30,  // wrmsr        -> KVM_EXIT_X86_WRMSR
            0xFB,  // sti
            0xF4,  // hlt          -> KVM_EXIT_HLT, then the host injects vector 0x30
            0xF4,  // hlt
        ]
        let g = try TestGuest(code: code) { vm in try vm.enableUserSpaceMSR([.invalid, .unknown, .filter]) }
        g.store([0x00, 0x11, 0x00, 0x00], at: 0x30 * 4)  // IVT[0x30] = 0000:1100
        g.store([0xE6, 0x90, 0xCF], at: 0x1100)  // out 0x90, al; iret
        guard case .wrmsr(0x830, 0x4200, _) = try g.next() else {
            Issue.record("expected WRMSR exit")
            return
        }
        g.vcpu.completeMSRWrite(accepted: true)
        guard case .hlt = try g.next() else {
            Issue.record("expected hlt")
            return
        }
        #expect(g.vcpu.readyForInterrupt)
        try g.vcpu.interrupt(vector: 0x30)
        guard case .ioOut(0x90, _, _, _) = try g.next() else {
            Issue.record("expected the interrupt handler to run")
            return
        }
    }

    /// The emulated SMM backend's RSM trap relies on this: RSM outside SMM raises #UD through the IVT, and an
    /// IVT entry pointing into an unmapped hole stops the vCPU with RIP = the handler offset.
    @Test func rsmOutsideSMMRaisesUDThroughTheIVT() throws {
        let g = try TestGuest(code: [0x0F, 0xAA, 0xF4])  // rsm; hlt
        for v in 0..<256 { g.store([UInt8(v), 0x00, 0x00, 0xB0], at: 0x2000 + v * 4) }  // IVT[v] = B000:v
        var s = try g.vcpu.getSregs()
        s.idt.base = 0x2000
        s.idt.limit = 0x3FF
        try g.vcpu.setSregs(s)
        var r = try g.vcpu.getRegs()
        r.rsp = 0x8000
        try g.vcpu.setRegs(r)
        let e = try g.next()
        guard case .internalError = e else {
            Issue.record("expected an emulation failure at the trap, got \(e.summary)")
            return
        }
        #expect(try g.vcpu.getRegs().rip == 6)  // vector 6 = #UD
        #expect(try g.vcpu.getSregs().cs.base == 0xB0000)
        #expect(g.byte(at: 0x7FFA) == 0x00 && g.byte(at: 0x7FFB) == 0x10)  // pushed IP 0x1000 (the RSM)
    }

    @Test func smiIsGatedOnTheCapability() throws {
        let g = try TestGuest(code: [0xF4])
        if g.kvm.has(.x86SMM) {
            try g.vcpu.smi()
        } else {
            #expect(throws: KVMError.unsupported(name: "KVM_SMI", capability: "KVM_CAP_X86_SMM")) { try g.vcpu.smi() }
        }
    }

    @Test func createsTheMaximumNumberOfVCPUs() throws {
        let kvm = try KVM()
        let n = min(kvm.maxVCPUs(), 1024)
        try ResourceLimits.ensureOpenFiles(n + 64)
        let vm = try kvm.createVM()
        var vcpus: [VCPU] = []
        vcpus.reserveCapacity(n)
        for i in 0..<n { vcpus.append(try vm.createVCPU(id: UInt32(i))) }
        #expect(vcpus.count == n)
        #expect(n == 1024 || kvm.maxVCPUs() < 1024)
    }
}
