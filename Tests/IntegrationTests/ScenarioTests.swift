// SPDX-License-Identifier: MIT
import Firmware
import Foundation
import GuestFirmware
import KVMBridge
import Testing

@testable import MiniVMM

/// End-to-end runs of the scenario (DESIGN.md §5) on this host's KVM with the emulated SMM backend, through the
/// library entry point `MiniVMMRunner.run`. Serialized: every run starts one thread per possible CPU.
@Suite(
    .serialized,
    .needsKVM)
struct ScenarioTests {
    /// A quiet run of the built-in firmware with the default hot-add set.
    static func config(maxCPUs: Int, bootCPUs: Int, hotAdd: [Int]? = nil) -> MachineConfig {
        var c = MachineConfig()
        c.maxCPUs = maxCPUs
        c.bootCPUs = bootCPUs
        c.hotAdd = hotAdd ?? MachineConfig.defaultHotAdd(maxCPUs: maxCPUs, bootCPUs: bootCPUs)
        c.firmware = FirmwareImage.builtin
        c.console = false
        c.quiet = true
        c.timeoutSeconds = 120
        return c
    }

    /// Validates against this host's KVM, then runs.
    static func run(_ config: MachineConfig) throws -> RunReport {
        let kvm = try KVM()
        try config.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        return try MiniVMMRunner.run(config, kvm: kvm)
    }

    /// A 4 KiB flat image whose reset vector (0xFFFFFFF0, offset 0xFF0) holds `code`; the rest is HLT.
    static func tinyFirmware(resetVector code: [UInt8]) -> [UInt8] {
        var image = [UInt8](repeating: 0xF4, count: 4096)
        image.replaceSubrange(0xFF0..<(0xFF0 + code.count), with: code)
        return image
    }

    static func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }

    /// Everything a passing run must show, from the report alone (not only the invariant verdicts).
    static func expectPassingScenario(_ r: RunReport, _ config: MachineConfig) {
        #expect(r.outcome == .completed, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        #expect(r.passed, "\(r.summary)")
        #expect(r.invariants.map(\.id) == [1, 2, 3, 4])
        for inv in r.invariants { #expect(inv.passed, "invariant \(inv.id): \(inv.detail)") }
        #expect(r.cpus.count == config.maxCPUs)
        #expect(r.hotAdd == config.hotAdd)

        // Invariant 1 recomputed: first SMI at 0x38000, then distinct relocated SMBASEs whose SMRAM lies in TSEG.
        var relocated: [Int: UInt32] = [:]
        for c in r.cpus {
            #expect(c.smiEntries.first?.entry == 0x38000, "CPU \(c.apicID) first SMI: \(c.smiEntries.first as Any)")
            guard let reloc = c.smbaseHistory.first(where: { $0.cause == .rsm }) else {
                Issue.record("CPU \(c.apicID) was never relocated: \(c.smbaseHistory)")
                continue
            }
            let s = UInt64(reloc.smbase)
            #expect(
                s >= r.tsegBase && s <= r.tsegBase + r.tsegBytes - 0x10000,
                "CPU \(c.apicID) SMBASE \(hex(s)) outside TSEG \(hex(r.tsegBase))+\(hex(r.tsegBytes))")
            relocated[c.apicID] = reloc.smbase
        }
        #expect(Set(relocated.values).count == config.maxCPUs, "relocated SMBASEs are not distinct")

        // Invariants 2 and 3 recomputed for each hot-added CPU.
        #expect(Set(r.cpus.filter(\.hotAdded).map(\.apicID)) == Set(config.hotAdd))
        for n in config.hotAdd {
            let c = r.cpus[n]
            #expect(c.present, "CPU \(n) not present after hot-add")
            guard let addIndex = c.smbaseHistory.firstIndex(where: { $0.cause == .hotAdd }) else {
                Issue.record("CPU \(n) has no hot-add event: \(c.smbaseHistory)")
                continue
            }
            // The SMBASE when ejected is the last value before the hot-add event.
            let atEject = addIndex > 0 ? c.smbaseHistory[addIndex - 1].smbase : nil
            let atHotAdd = c.smbaseHistory[addIndex].smbase
            #expect(atEject == atHotAdd, "CPU \(n): \(c.smbaseHistory)")
            #expect(atHotAdd == relocated[n], "CPU \(n) SMBASE at hot-add is not its relocated one")
            #expect(!c.smbaseHistory.contains { $0.cause == .reset && $0.phase != .boot }, "CPU \(n) was RESET")
            // INIT happens inside KVM on the kvm backend, so it is not a history event: the SMBASE it kept shows
            // in the next SMI entry.
            #expect(c.smiEntries.last?.smbase == atHotAdd, "CPU \(n)'s SMBASE changed at INIT: \(c.smiEntries)")
            #expect(c.smbase == atHotAdd)
            guard let last = c.smiEntries.last else {
                Issue.record("CPU \(n) took no SMI")
                continue
            }
            #expect(last.entry == atHotAdd &+ 0x8000, "CPU \(n)'s last SMI at \(hex(last.entry))")
            #expect(last.inSMRAM, "CPU \(n)'s last SMI outside SMRAM")
            #expect(last.phase == .hotAdd || last.phase == .finish)
        }
        // The CPUs removed and not added back stay unplugged.
        for c in r.cpus[config.bootCPUs...] where !config.hotAdd.contains(c.apicID) {
            #expect(!c.present && c.state == .unplugged, "CPU \(c.apicID) is \(c.state.rawValue)")
        }
        #expect(r.smramClosed && r.smramLocked)
    }

    @Test(
        "default scenario passes for every size",
        .timeLimit(.minutes(5)),
        arguments: [1, 2, 8, 64, 255, 256, 1024])
    func defaultScenario(maxCPUs: Int) throws {
        let config = Self.config(maxCPUs: maxCPUs, bootCPUs: maxCPUs >= 2 ? 2 : 1)
        let r = try Self.run(config)
        Self.expectPassingScenario(r, config)
    }

    /// More CPUs than one KVM VM may hold (a per-VM limit of 4 injected, so it runs fast): 10 CPUs are vCPUs 0-3,
    /// 0-3 and 0-1 of three VMs in each view, sharing guest memory and every memslot change (PAM, SMRAM, A-segment).
    /// A creates every vCPU at boot; B and C create the hot-added CPUs' vCPUs at their hot-add, the first vCPU of
    /// their VM (CPU 5 of VM 1, CPU 9 of VM 2).
    @Test(
        "more CPUs than one KVM VM holds: vCPUs spread over VMs sharing memory", .timeLimit(.minutes(3)),
        arguments: [Strategy.relocateAllAtBoot, .hotplugSMBASERegister, .smramAtDefaultSMBASE])
    func cpusSpreadOverSeveralVMs(strategy: Strategy) throws {
        var config = Self.config(maxCPUs: 10, bootCPUs: 2)
        config.strategy = strategy
        config.vcpusPerVM = 4
        #expect(config.hotAdd == [2, 5, 9])
        let r = try Self.run(config)
        #expect(r.outcome == .completed, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        #expect(r.passed, "\(r.summary)")
        for inv in r.invariants { #expect(inv.passed, "invariant \(inv.id): \(inv.detail)") }
        if strategy == .relocateAllAtBoot { Self.expectPassingScenario(r, config) }
        let host = try #require(r.host)
        #expect(host.kvmVMs == 6, "three VMs per view")
        // Each hot-added CPU's SMIs entered its own tile: its APIC ID came from its CPUID, not its vCPU id.
        for n in config.hotAdd {
            let last = try #require(r.cpus[n].smiEntries.last, "CPU \(n) took no SMI")
            let tile = UInt32(r.tsegBase) + UInt32(n) * UInt32(MINIVMM_SMM_TILE)
            #expect(last.entry == tile + 0x8000 && last.inSMRAM, "CPU \(n): \(last)")
        }
    }

    /// Without an injected limit on this host (1024 vCPUs per VM) the same machine is one VM per view.
    @Test("a machine that fits one KVM VM uses one per view", .timeLimit(.minutes(1)))
    func smallMachineUsesOneVMPerView() throws {
        let r = try Self.run(Self.config(maxCPUs: 10, bootCPUs: 2))
        #expect(r.passed, "\(r.summary)")
        #expect(r.host?.kvmVMs == 2)
    }

    @Test("hot-add of several CPUs including the highest", .timeLimit(.minutes(3)))
    func hotAddSeveralIncludingHighest() throws {
        let config = Self.config(maxCPUs: 16, bootCPUs: 2, hotAdd: [2, 9, 15])
        let r = try Self.run(config)
        Self.expectPassingScenario(r, config)
        #expect(r.cpus.filter(\.present).map(\.apicID) == [0, 1, 2, 9, 15])
    }

    @Test("hot-add with RESET loses the SMBASE: invariants 2 and 3 fail, 1 holds", .timeLimit(.minutes(3)))
    func hotplugResetFailsInvariants2And3() throws {
        var config = Self.config(maxCPUs: 8, bootCPUs: 2)
        config.hotplugReset = true
        let r = try Self.run(config)
        #expect(r.outcome == .completed, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        #expect(!r.passed)
        let inv = Dictionary(uniqueKeysWithValues: r.invariants.map { ($0.id, $0) })
        #expect(inv[1]?.passed == true, "\(inv[1]?.detail ?? "missing")")
        #expect(inv[2]?.passed == false)
        #expect(inv[2]?.detail.contains("RESET") == true, "\(inv[2]?.detail ?? "missing")")
        #expect(inv[3]?.passed == false)
        #expect(inv[3]?.detail.contains("0x38000") == true, "\(inv[3]?.detail ?? "missing")")
        for n in config.hotAdd {
            let c = r.cpus[n]
            #expect(c.smbaseHistory.contains { $0.cause == .reset && $0.phase != .boot && $0.smbase == 0x30000 })
            let last = try #require(c.smiEntries.last)
            #expect(last.entry == 0x38000 && !last.inSMRAM, "CPU \(n): \(last)")
        }
    }

    @Test(
        "long mode chooses the save-state map", .timeLimit(.minutes(3)),
        arguments: [(true, SaveStateFormat.amd64), (false, SaveStateFormat.legacy32)])
    func saveStateFormatFollowsLongMode(longMode: Bool, format: SaveStateFormat) throws {
        var config = Self.config(maxCPUs: 8, bootCPUs: 2)
        config.longMode = longMode
        let r = try Self.run(config)
        #expect(r.saveStateFormat == format)
        Self.expectPassingScenario(r, config)
    }

    @Test("a guest that spins forever ends with a timeout report and CPU dumps", .timeLimit(.minutes(1)))
    func runawayGuestTimesOut() throws {
        var config = Self.config(maxCPUs: 2, bootCPUs: 1)
        config.firmware = Self.tinyFirmware(resetVector: [0xEB, 0xFE])  // jmp $
        config.firmwareName = "spin"
        config.timeoutSeconds = 2
        let start = Date()
        let r = try Self.run(config)
        let elapsed = Date().timeIntervalSince(start)
        #expect(r.outcome == .timeout, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        #expect(!r.passed)
        #expect(elapsed < 10, "took \(elapsed) s")
        let dumps = try #require(r.cpuDumps)
        #expect(dumps.contains { $0.cpu == 0 }, "\(dumps)")
    }

    @Test("a 32-bit isa-debug-exit write of 0x80000000 is not the success status 1", .timeLimit(.minutes(1)))
    func debugExitStatusIsNotTruncated() throws {
        var config = Self.config(maxCPUs: 1, bootCPUs: 1)
        // mov eax, 0x80000000; out 0xf4, eax; hlt
        config.firmware = Self.tinyFirmware(resetVector: [0x66, 0xB8, 0, 0, 0, 0x80, 0x66, 0xE7, 0xF4, 0xF4])
        config.firmwareName = "exit-0x80000000"
        let r = try Self.run(config)
        #expect(r.outcome == .guestFailure, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        #expect(r.guestExitStatus == 0x1_0000_0001)
    }

    @Test("a guest writing isa-debug-exit reports guest failure with its status", .timeLimit(.minutes(1)))
    func debugExitStatusIsReported() throws {
        var config = Self.config(maxCPUs: 1, bootCPUs: 1)
        // mov al, 0x2a; out 0xf4, al; hlt
        config.firmware = Self.tinyFirmware(resetVector: [0xB0, 0x2A, 0xE6, 0xF4, 0xF4])
        config.firmwareName = "exit-0x2a"
        let r = try Self.run(config)
        #expect(r.outcome == .guestFailure, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        let expected: Int64 = (0x2A << 1) | 1  // isa-debug-exit: (value << 1) | 1
        #expect(expected == 85)
        #expect(r.guestExitStatus == expected)
        #expect(!r.passed)
        #expect(r.cpuDumps != nil)
    }

    @Test("an explicit TSEG too small for max CPUs ends as a firmware-reported failure", .timeLimit(.minutes(1)))
    func tsegTooSmallIsAGuestFailure() throws {
        var config = Self.config(maxCPUs: 1024, bootCPUs: 2)
        config.tsegMiB = 1
        // As a --firmware image the VMM cannot assume the built-in tile layout, so the firmware's own check
        // is what catches it (the built-in image is rejected earlier, by validate).
        config.firmwareName = "built-in image passed as --firmware"
        let r = try Self.run(config)
        #expect(r.outcome == .guestFailure, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        #expect(r.outcomeDetail.contains("TSEG_TOO_SMALL"), "\(r.outcomeDetail)")
        #expect(!r.passed)
        #expect(!r.smramLocked)
        #expect(r.counters.smis == 0)
    }

    @Test("non-SMM reads of locked TSEG are counted and return all-ones, writes are dropped")
    func nonSMMAccessesAreCounted() throws {
        let config = Self.config(maxCPUs: 8, bootCPUs: 2)
        let r = try Self.run(config)
        #expect(r.counters.smramAccesses.reads == 1)
        #expect(r.counters.smramAccesses.writes == 1)
        #expect(r.counters.smramAccesses.readsReturnedAllOnes)
        #expect(r.counters.smramAccesses.firstAddresses.first == r.tsegBase)
        // The firmware's own probe (REPORT_SMRAM_PROBE arg 1) saw all-ones too.
        #expect(r.firmwareReports.contains("SMRAM_PROBE 1"))
    }

    /// Regression: hot-added APs whose SMIs overlap share SS:SP = 0:0 in SMM; an RSM detected through a #UD
    /// frame on that shared stack once made one CPU read another's frame and report a triple fault.
    @Test("repeated runs with overlapping SMM sessions on a shared stack pointer all pass")
    func overlappingSMMSessionsOnASharedStackPointer() throws {
        for _ in 0..<20 {
            let r = try Self.run(Self.config(maxCPUs: 16, bootCPUs: 2))
            #expect(r.passed, "\(r.outcome.rawValue): \(r.outcomeDetail)")
            if !r.passed { break }
        }
    }

    /// A 4 KiB image that enters protected mode with an IDT limit of 0 and executes INT3: #GP, #DF, triple
    /// fault on real hardware and KVM (KVM_EXIT_SHUTDOWN); this host's KVM stops with an emulation failure
    /// instead. Either way the run must end at once with a report, not hang until --timeout.
    static func crashingFirmware() -> [UInt8] {
        var img = [UInt8](repeating: 0xF4, count: 4096)
        func put(_ off: Int, _ b: [UInt8]) { img.replaceSubrange(off..<off + b.count, with: b) }
        let target = UInt32(0xFFFF_F000 + 0x21)
        let t = withUnsafeBytes(of: target.littleEndian) { Array($0) }
        put(
            0,
            [0xFA]  // cli
                + [0x66, 0x2E, 0x0F, 0x01, 0x16, 0x00, 0xF2]  // lgdtl cs:[0xF200]
                + [0x66, 0x2E, 0x0F, 0x01, 0x1E, 0x10, 0xF2]  // lidtl cs:[0xF210]  (limit 0)
                + [0x0F, 0x20, 0xC0, 0x66, 0x83, 0xC8, 0x01, 0x0F, 0x22, 0xC0]  // CR0.PE = 1
                + [0x66, 0xEA] + t + [0x08, 0x00]  // ljmpl 0x08:target
                + [0xCC])  // int3
        put(0x100, [0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0x9B, 0xCF, 0])  // null, flat code (accessed)
        put(0x200, [0x0F, 0x00, 0x00, 0xF1, 0xFF, 0xFF])  // GDTR: limit 15, base 0xFFFFF100
        put(0x210, [0, 0, 0, 0, 0, 0])  // IDTR: limit 0
        put(0xFF0, [0xE9, 0x0D, 0xF0])  // reset vector: jmp 0xF000
        return img
    }

    @Test("a guest that crashes ends at once in a report with its registers", .timeLimit(.minutes(1)))
    func crashingGuestEndsInAReport() throws {
        var config = Self.config(maxCPUs: 1, bootCPUs: 1)
        config.firmware = Self.crashingFirmware()
        config.firmwareName = "crash.bin"
        config.timeoutSeconds = 60
        let start = Date()
        let r = try Self.run(config)
        #expect(Date().timeIntervalSince(start) < 30)
        #expect(r.outcome == .tripleFault || r.outcome == .cpuStopped, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        #expect(!r.passed)
        let dump = try #require(r.cpuDumps?.first)
        #expect(dump.cpu == 0 && dump.cs == "8")
        #expect(!dump.lastExits.isEmpty)
    }

    /// An SMI round trip costs ten ioctls beyond KVM_RUN: registers move through kvm_sync_regs, and the state SMM
    /// shares with the interrupted code (DR0–DR7, XSAVE, XCR0, MSRs, TSC offset) takes one GET per part at entry and
    /// at RSM, and
    /// a SET only for a part that differs from what the other vCPU holds (none here: the firmware's handlers touch
    /// none of it), plus a `KVM_SET_GUEST_DEBUG` when a session's breakpoints differ from the last one's (each
    /// SMRAM-view vCPU starts single-stepping; a hot-add's entry is elsewhere). One-time: each CPU's SMRAM-view vCPU
    /// (create, CPUID, guest debug, its state read once; the hardware-breakpoint probe on the CPU's thread, two per
    /// CPU as measured: one more `KVM_SET_GUEST_DEBUG`, and a shared-state SET at the first SMI for what the probe's
    /// run left, which is also the vCPU's first KVM_RUN, off the serial relocation path; the first vCPU of each VM, made
    /// before its thread, then reads its state again),
    /// one `KVM_SET_DEBUGREGS` per INIT, the MSR probe (index
    /// list, then a GET and a SET per candidate), the power-on APIC base each vCPU gets (one `KVM_SET_MSRS`), the
    /// SCIs, and one `KVM_INTERRUPT` per wake IPI that ends the BSP's HLT (at most one per AP relocated, one for the
    /// AP count).
    @Test("an SMI round trip costs the ten shared-state GETs beyond KVM_RUN, nothing else")
    func smiRoundTripIoctls() throws {
        let r = try Self.run(Self.config(maxCPUs: 64, bootCPUs: 2))
        #expect(r.passed)
        #expect(r.counters.smis == 67)  // 64 relocations + 3 hot-adds
        let perSMI = 10 * r.counters.smis
        let smmVCPUs = (3 + 5) * 64
        let inits = 2 * 64
        let probe = 1 + 2 * 64
        let watch = r.counters.smis
        let wakes = 64
        let apicBase = 64
        let breakpointProbe = 2 * 64 + (1 + 5)
        let budget = perSMI + watch + smmVCPUs + inits + probe + wakes + apicBase + breakpointProbe + 8
        #expect(r.counters.extraIoctls <= budget, "\(r.counters.extraIoctls) ioctls beyond KVM_RUN, budget \(budget)")
    }

    /// The probe-free image (`--firmware builtin:noprobe`) is the built-in firmware minus its SMM entry probes: on
    /// the emulated backend, which needs no probe, it gives the same report field for field (one layout: four NOPs
    /// stand where each probe was), and the probe's `mov dx, 0x604; out dx, al` is really gone.
    @Test("the built-in firmware without its entry probe gives the same report on the emulated backend")
    func noProbeFirmwareMatches() throws {
        var probe = Self.config(maxCPUs: 4, bootCPUs: 2)
        probe.backend = .emulated
        var noProbe = probe
        noProbe.firmware = try #require(FirmwareImage.named("noprobe"))
        #expect(noProbe.firmware != probe.firmware && noProbe.firmware.count == probe.firmware.count)
        let a = try Self.run(probe)
        let b = try Self.run(noProbe)
        Self.expectPassingScenario(b, noProbe)
        let o = try ReportComparison.compare(a, b)
        #expect(o.differences.isEmpty, "\(o.differences.prefix(10).map(\.description))")
        #expect(o.unobserved.isEmpty)
        func probes(_ image: [UInt8]) -> Int {
            (0..<(image.count - 3)).filter { image[$0..<($0 + 4)].elementsEqual([0xBA, 0x04, 0x06, 0xEE]) }.count
        }
        #expect(probes(probe.firmware) == 4 && probes(noProbe.firmware) == 0)
    }
}
