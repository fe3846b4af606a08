// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge
import Testing

@testable import MiniVMM

/// Debian's SeaBIOS (package `seabios`, installed by .ci/run; never committed) on the emulated backend, to "No
/// bootable device": a few seconds here. The report must describe, as findings, what SeaBIOS really does with SMM on
/// q35: one APM SMI on the boot CPU, which relocates it to 0xA0000 in the A-segment, CPU 1 never relocated, SMRAM
/// never locked.
@Suite(.serialized, .needsKVM)
struct StockFirmwareTests {
    static let seabios = "/usr/share/seabios/bios-256k.bin"

    @Test(
        "SeaBIOS reaches No bootable device with its relocation as findings",
        .enabled(if: FileManager.default.fileExists(atPath: seabios), "needs the seabios package (apt install seabios)")
    )
    func seabiosToNoBootableDevice() throws {
        var c = MachineConfig()
        c.maxCPUs = 2
        c.bootCPUs = 2
        c.firmware = try MachineConfig.loadFirmware(path: Self.seabios)
        c.firmwareName = Self.seabios
        c.firmwareKind = .stock
        c.backend = .emulated
        c.console = false
        c.quiet = true
        c.timeoutSeconds = 60
        c.untilConsole = "No bootable device"
        let kvm = try KVM()
        try c.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        let r = try MiniVMMRunner.run(c, kvm: kvm)
        #expect(r.outcome == .completed, "\(r.outcomeDetail)")
        #expect(r.invariants.isEmpty && r.passed)
        let f = try #require(r.findings)
        #expect(
            f.lines.first == "boot CPU relocated to 0xA0000; CPU 1 never relocated (SMBASE 0x30000); SMRAM never locked"
        )
        let boot = try #require(f.cpus.first { $0.apicID == 0 })
        #expect(boot.relocated && boot.smbase == 0xA0000 && boot.region == .aSegment && boot.smis == 1)
        #expect(boot.firstEntry == 0x38000 && boot.firstEntryInSMRAM == false)
        let ap = try #require(f.cpus.first { $0.apicID == 1 })
        #expect(!ap.relocated && ap.smbase == 0x30000 && ap.smis == 0)
        let aseg = try #require(f.windows.first { $0.kind == .aSegment })
        #expect(aseg.closed && !aseg.locked && aseg.firstClosedAt != nil)
        #expect(!f.smramLocked && f.nonSMMReads == 0 && f.nonSMMWrites == 0)
        #expect(r.counters.smis == 1 && r.counters.rsms == 1)
    }
}
