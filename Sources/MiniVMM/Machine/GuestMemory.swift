// SPDX-License-Identifier: MIT
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The guest's RAM and ROM as host memory. One anonymous mapping backs all RAM (untouched pages cost
/// nothing); both KVM views (normal and SMRAM) map the same host pages, as KVM's address space 1 mirrors RAM.
public final class GuestMemory: @unchecked Sendable {
    public let ramSize: UInt64
    let ram: UnsafeMutableRawPointer
    public let romSize: UInt64
    let rom: UnsafeMutableRawPointer
    /// Guest-physical base of the ROM (ends at 4 GiB).
    public var romBase: UInt64 { Layout.fourGiB - romSize }
    /// Bytes of the ROM also visible below 1 MiB (QEMU's isa-bios alias).
    public var romAliasSize: UInt64 { min(romSize, UInt64(0x20000)) }
    /// The trap IVT page for the emulated SMM backend.
    let trapPage: UnsafeMutableRawPointer

    public init(ramSize: UInt64, firmware: [UInt8]) throws {
        self.ramSize = ramSize
        guard
            let r = mmap(nil, Int(ramSize), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
            r != MAP_FAILED
        else { throw MachineError.hostResources("cannot map \(ramSize >> 20) MiB of guest RAM") }
        ram = r
        romSize = UInt64(firmware.count)
        guard let m = mmap(nil, firmware.count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            m != MAP_FAILED
        else { throw MachineError.hostResources("cannot map the firmware ROM") }
        firmware.withUnsafeBytes { m.copyMemory(from: $0.baseAddress!, byteCount: firmware.count) }
        rom = m
        guard let t = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), t != MAP_FAILED
        else {
            throw MachineError.hostResources("cannot map the SMM trap page")
        }
        trapPage = t
        // IVT[v] = smmTrapSegment:v (offset first, then segment, little-endian).
        for v in 0..<256 {
            trapPage.storeBytes(of: UInt16(v), toByteOffset: v * 4, as: UInt16.self)
            trapPage.storeBytes(of: Layout.smmTrapSegment, toByteOffset: v * 4 + 2, as: UInt16.self)
        }
    }

    deinit {
        munmap(ram, Int(ramSize))
        munmap(rom, Int(romSize))
        munmap(trapPage, 4096)
    }

    func hostAddress(ofRAM gpa: UInt64) -> UInt64 { UInt64(UInt(bitPattern: ram)) + gpa }
    var romHost: UInt64 { UInt64(UInt(bitPattern: rom)) }
    var romAliasHost: UInt64 { romHost + romSize - romAliasSize }
    var trapHost: UInt64 { UInt64(UInt(bitPattern: trapPage)) }

    /// Whether [gpa, gpa+count) is RAM. Any guest value is safe here: nothing overflows or traps.
    public func isRAM(_ gpa: UInt64, count: Int) -> Bool {
        count >= 0 && gpa < ramSize && UInt64(count) <= ramSize - gpa
    }

    /// Zeroes RAM (the VMM's own view). False, and nothing written, when any byte is outside RAM.
    @discardableResult
    public func zero(_ gpa: UInt64, count: Int) -> Bool {
        guard isRAM(gpa, count: count) else { return false }
        // SAFETY: bounds checked against the mapping above.
        (ram + Int(gpa)).initializeMemory(as: UInt8.self, repeating: 0, count: count)
        return true
    }

    /// Reads RAM directly (the VMM's own view: SMRAM included).
    public func read(_ gpa: UInt64, count: Int) -> [UInt8]? {
        guard isRAM(gpa, count: count) else { return nil }
        // SAFETY: bounds checked against the mapping above.
        return Array(UnsafeRawBufferPointer(start: ram + Int(gpa), count: count))
    }

    /// Runs `body` over RAM [gpa, gpa+count) in place (no copy); nil, and `body` not run, when any byte is outside
    /// RAM. `body` must not keep the buffer.
    public func withRAM<T>(_ gpa: UInt64, count: Int, _ body: (UnsafeRawBufferPointer) -> T) -> T? {
        guard isRAM(gpa, count: count) else { return nil }
        // SAFETY: bounds checked against the mapping above; the buffer does not outlive the call.
        return body(UnsafeRawBufferPointer(start: ram + Int(gpa), count: count))
    }

    /// Writes RAM directly (the VMM's own view).
    @discardableResult
    public func write(_ bytes: [UInt8], at gpa: UInt64) -> Bool {
        guard isRAM(gpa, count: bytes.count) else { return false }
        // SAFETY: bounds checked against the mapping above.
        bytes.withUnsafeBytes { (ram + Int(gpa)).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        return true
    }

    public func readU32(_ gpa: UInt64) -> UInt32? {
        guard isRAM(gpa, count: 4) else { return nil }
        // SAFETY: bounds checked.
        return (ram + Int(gpa)).loadUnaligned(as: UInt32.self)
    }

    public func readU16(_ gpa: UInt64) -> UInt16? {
        guard isRAM(gpa, count: 2) else { return nil }
        // SAFETY: bounds checked.
        return (ram + Int(gpa)).loadUnaligned(as: UInt16.self)
    }

    /// Reads guest-physical memory as a CPU would see it (RAM or ROM), for instruction checks.
    public func fetch(_ gpa: UInt64, count: Int) -> [UInt8]? {
        if let b = read(gpa, count: count) { return b }
        guard count >= 0 else { return nil }
        // Guest RIPs and CS bases are any 64-bit value: the range's end is computed without overflow.
        let (end, overflow) = gpa.addingReportingOverflow(UInt64(count))
        guard !overflow else { return nil }
        // SAFETY: [gpa, end) lies inside the ROM mapping (romBase ..< 4 GiB) or its isa-bios alias.
        if gpa >= romBase, end <= Layout.fourGiB {
            return Array(UnsafeRawBufferPointer(start: rom + Int(gpa - romBase), count: count))
        }
        let aliasBase = Layout.oneMiB - romAliasSize
        if gpa >= aliasBase, end <= Layout.oneMiB {
            return Array(
                UnsafeRawBufferPointer(start: rom + Int(romSize - romAliasSize + (gpa - aliasBase)), count: count))
        }
        return nil
    }
}

/// fw_cfg DMA as a bus master in the normal (non-SMM) view: closed SMRAM is a black hole for it too (QEMU's
/// blackhole regions sit in system memory, which DMA uses). Every blocked transfer is counted. Called with the
/// machine lock held (fw_cfg runs under it).
final class DMAView: GuestMemoryAccess, @unchecked Sendable {
    let memory: GuestMemory
    unowned let smram: SMRAMMap

    init(memory: GuestMemory, smram: SMRAMMap) {
        self.memory = memory
        self.smram = smram
    }

    func readBytes(at gpa: UInt64, count: Int) -> [UInt8]? {
        if smram.isClosed(gpa, count: count) {
            smram.accesses.dmaBlocked += 1
            return [UInt8](repeating: 0xFF, count: count)
        }
        return memory.read(gpa, count: count)
    }

    func writeBytes(_ bytes: [UInt8], at gpa: UInt64) -> Bool {
        if smram.isClosed(gpa, count: bytes.count) {
            smram.accesses.dmaBlocked += 1
            return true  // dropped, like QEMU's tseg_blackhole
        }
        return memory.write(bytes, at: gpa)
    }

    func zeroBytes(at gpa: UInt64, count: Int) -> Bool {
        if smram.isClosed(gpa, count: count) {
            smram.accesses.dmaBlocked += 1
            return true
        }
        return memory.zero(gpa, count: count)
    }
}
