// SPDX-License-Identifier: MIT
import Foundation
import GuestFirmware
import KVMBridge

/// Exit handling: `ExitClassifier` decides (pure, tested without KVM), this dispatches to the port bus, the MMIO and
/// MSR handlers and the SMM backend.
extension Machine {
    func handle(_ e: VCPUExit, cpu: CPUContext, vcpu v: VCPU) throws {
        let regs = v.syncedRegs
        let sregs = v.syncedSregs
        let inSMM = backend.inSMM(cpu, exitedVCPU: v)
        let record = ExitRecord(exit: e, inSMM: inSMM, cs: sregs.cs.selector, rip: regs.rip)
        cpu.remember(record)
        if config.trace { traceLine("cpu\(cpu.index) \(record)") }
        if try backend.observe(e, cpu: cpu) { return }
        let action = ExitClassifier.classify(e, inSMM: inSMM, csBase: sregs.cs.base, rip: regs.rip)
        let ctx = AccessContext(cpu: cpu.index, inSMM: inSMM)
        // KVM completes an I/O, MMIO or MSR exit on the next KVM_RUN: before the VMM replaces registers it must
        // let that happen.
        let completes = backend.exitCompletesOnNextRun(cpu)
        switch (e, action) {
        case (.ioOut(let port, let size, let count, let data), _):
            lock.withLock {
                for i in 0..<count {
                    let value = loadLE(data, offset: i * size, size: size)
                    let effects = devices.bus.write(port: port, size: size, value: value, context: ctx)
                    apply(effects, from: cpu)
                }
            }
            if completes { cpu.needsCompletion = true }
        case (.ioIn(let port, let size, let count, let data), _):
            lock.withLock {
                for i in 0..<count {
                    let value = devices.bus.read(port: port, size: size, context: ctx)
                    storeLE(data, offset: i * size, size: size, value: value)
                }
            }
            if completes { cpu.needsCompletion = true }
        case (.mmioRead(let addr, let data), _):
            let value = lock.withLock {
                mmioRead(cpu, address: addr, size: data.count, ctx: ctx, apicBase: sregs.apic_base)
            }
            storeLE(data, offset: 0, size: data.count, value: UInt32(truncatingIfNeeded: value))
            // SAFETY: an 8-byte MMIO read buffer (kvm_run.mmio.data) holds exactly 8 bytes.
            if data.count == 8 { data.storeBytes(of: value, as: UInt64.self) }
            if completes { cpu.needsCompletion = true }
        case (.mmioWrite(let addr, let data), _):
            // SAFETY: kvm_run.mmio.data holds `len` ≤ 8 bytes; the 8-byte load only happens when len is 8.
            let value = data.count == 8 ? data.load(as: UInt64.self) : UInt64(loadLE(data, offset: 0, size: data.count))
            if config.trace { traceLine("cpu\(cpu.index) mmio-write \(hex(addr)) value \(hex(value))") }
            lock.withLock {
                mmioWrite(cpu, address: addr, size: data.count, value: value, ctx: ctx, apicBase: sregs.apic_base)
            }
            if completes { cpu.needsCompletion = true }
        case (.rdmsr(let index, _), _):
            let value = lock.withLock { msrRead(cpu, index: index, apicBase: sregs.apic_base) }
            v.completeMSRRead(value)
            if completes { cpu.needsCompletion = true }
        case (.wrmsr(let index, let value, _), _):
            let ok = lock.withLock { msrWrite(cpu, index: index, value: value, apicBase: sregs.apic_base) }
            v.completeMSRWrite(accepted: ok)
            if completes { cpu.needsCompletion = true }
        case (_, .halt):
            lock.withLock { cpu.state = .halted }
            if completes { cpu.needsCompletion = false }
        case (_, .resume):
            if case .irqWindowOpen = e { v.requestInterruptWindow = false }
        case (_, .smmStep), (_, .smmTrap), (_, .tripleFault):
            if try backend.handle(action, cpu: cpu, vcpu: v) { return }
            if case .tripleFault(let why) = action {
                tripleFault(cpu, why)
            } else {
                stopCPU(cpu, .cpuStopped, "unexpected SMM exit \(e.summary)")
            }
        case (_, .fatal(let why)):
            stopCPU(cpu, .cpuStopped, why)
        default:
            stopCPU(cpu, .cpuStopped, "unhandled exit \(e.summary)")
        }
    }

    // MARK: MMIO and MSRs (lock held)

    func isX2APIC(_ apicBase: UInt64) -> Bool {
        apicBase & UInt64(APIC_BASE_EN | APIC_BASE_EXTD) == UInt64(APIC_BASE_EN | APIC_BASE_EXTD)
    }

    private func isAPICPage(_ address: UInt64, apicBase: UInt64) -> Bool {
        address >= Layout.apicBase && address - Layout.apicBase < Layout.apicSize && !isX2APIC(apicBase)
    }

    func mmioRead(_ cpu: CPUContext, address: UInt64, size: Int, ctx: AccessContext, apicBase: UInt64) -> UInt64 {
        let ones: UInt64 = size >= 8 ? ~0 : (1 << (UInt64(size) * 8)) - 1
        if isAPICPage(address, apicBase: apicBase) {
            return UInt64(cpu.apic.readMMIO(offset: UInt32(address - Layout.apicBase), size: size))
        }
        if !ctx.inSMM && smram.isClosed(address, count: size) {
            smram.countBlocked(address, write: false)
            return ones
        }
        if let v = pflashRead(address: address, size: size, ctx: ctx) { return v & ones }
        if let v = devices.hostBridge.ecamRead(address: address, size: size) { return v & ones }
        if let v = aSegmentTrapPageAccess(address: address, size: size, write: nil, inSMM: ctx.inSMM) { return v }
        counters.unknownMMIO += 1
        return ones
    }

    func mmioWrite(_ cpu: CPUContext, address: UInt64, size: Int, value: UInt64, ctx: AccessContext, apicBase: UInt64) {
        if isAPICPage(address, apicBase: apicBase) {
            if let ipi = cpu.apic.writeMMIO(
                offset: UInt32(address - Layout.apicBase), value: UInt32(truncatingIfNeeded: value), size: size)
            {
                deliver(ipi, from: cpu)
            }
            return
        }
        if !ctx.inSMM && smram.isClosed(address, count: size) {
            smram.countBlocked(address, write: true)  // dropped, like QEMU's tseg_blackhole
            return
        }
        if let effects = devices.hostBridge.ecamWrite(address: address, size: size, value: value) {
            apply(effects, from: cpu)
            return
        }
        if pflashWrite(address: address, size: size, value: value, ctx: ctx) { return }
        if pamWrite(address: address, size: size, value: value) { return }
        if aSegmentTrapPageAccess(address: address, size: size, write: value, inSMM: ctx.inSMM) != nil { return }
        if address >= memory.romBase || (address >= Layout.oneMiB - memory.romAliasSize && address < Layout.oneMiB) {
            counters.romWrites += 1
            return
        }
        counters.unknownMMIO += 1
    }

    /// RDMSR that KVM sent to userspace: x2APIC registers; everything else (MSR_IA32_SMBASE included, which
    /// only the host may access) raises #GP as KVM would.
    func msrRead(_ cpu: CPUContext, index: UInt32, apicBase: UInt64) -> UInt64? {
        if index >= UInt32(MSR_X2APIC_BASE) && index <= UInt32(MSR_X2APIC_BASE) + 0xFF {
            switch cpu.apic.readMSR(index, x2APICEnabled: isX2APIC(apicBase)) {
            case .value(let v): return v
            case .generalProtection: return nil
            }
        }
        counters.unknownMSRs += 1
        return nil
    }

    func msrWrite(_ cpu: CPUContext, index: UInt32, value: UInt64, apicBase: UInt64) -> Bool {
        if index >= UInt32(MSR_X2APIC_BASE) && index <= UInt32(MSR_X2APIC_BASE) + 0xFF {
            let r = cpu.apic.writeMSR(index, value: value, x2APICEnabled: isX2APIC(apicBase))
            if let ipi = r.ipi { deliver(ipi, from: cpu) }
            return !r.gp
        }
        counters.unknownMSRs += 1
        return false
    }
}

// SAFETY (loadLE/storeLE): callers pass the I/O or MMIO buffer decoded from kvm_run, which holds count × size
// bytes; indices stay below offset + size within it.
@inline(__always)
func loadLE(_ data: UnsafeRawBufferPointer, offset: Int, size: Int) -> UInt32 {
    var v: UInt32 = 0
    for i in 0..<min(size, 4) { v |= UInt32(data[offset + i]) << (8 * UInt32(i)) }
    return v
}

@inline(__always)
func loadLE(_ data: UnsafeMutableRawBufferPointer, offset: Int, size: Int) -> UInt32 {
    loadLE(UnsafeRawBufferPointer(data), offset: offset, size: size)
}

@inline(__always)
func storeLE(_ data: UnsafeMutableRawBufferPointer, offset: Int, size: Int, value: UInt32) {
    for i in 0..<min(size, 4) { data[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
}
