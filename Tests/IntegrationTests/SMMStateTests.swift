// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge
import Testing

@testable import MiniVMM

/// The state SMI entry and RSM carry, on the backend this host runs (issue 9 gaps 2, 3 and 6), with the
/// smm_state firmware (Tests/firmware/smm_state.S): it checks from inside the guest and exits with the number of the first
/// failed check (0 when all pass, so the run completes with status 1).
@Suite(
    .serialized,
    .needsKVM)
struct SMMStateTests {
    /// What each exit value of smm_state means.
    static let checks: [Int64: String] = [
        1: "the map's DR7 is not the 0x700 the guest set",
        2: "the map's DR6 is not the 0xFFFF0FF1 the guest set",
        3: "DR7 in SMM is not 0x400",
        4: "DR6 in SMM is not the interrupted code's",
        5: "DR0 in SMM is not the interrupted code's",
        6: "DR7 after RSM is not the map's (edited to 0x600)",
        7: "DR6 after RSM is not the map's (edited to 0xFFFF0FF2)",
        8: "DR0 changed in SMM did not survive RSM",
        9: "XMM0 in SMM is not the interrupted code's",
        10: "MM0 (x87 register 7) in SMM is not the interrupted code's",
        11: "SYSENTER_EIP in SMM is not the interrupted code's",
        12: "PAT in SMM is not the interrupted code's",
        13: "XMM1 changed in SMM did not survive RSM",
        14: "MM1 changed in SMM did not survive RSM",
        15: "SYSENTER_EIP changed in SMM did not survive RSM",
        16: "PAT changed in SMM did not survive RSM",
        17: "fw_cfg DMA write of etc/smi/requested-features failed",
        18: "SMI broadcast was not negotiated",
        20: "the BSP did not take exactly its two broadcast SMIs",
        21: "the AP never ran after INIT-SIPI-SIPI",
        22: "the AP's held SMIs were not taken as exactly one",
        23: "the AP's SMI was not taken before its first instruction",
        24: "the AP's saved CS selector is not the SIPI vector << 8",
        25: "the AP's saved RIP is not 0",
        26: "the TSC in SMM is below the TSC read before the SMI",
        27: "the TSC in SMM is above the TSC read after RSM",
    ]

    static func run(longMode: Bool) throws -> RunReport {
        var c = MachineConfig()
        c.maxCPUs = 2
        c.bootCPUs = 2
        c.longMode = longMode
        c.firmware = SMMStateFirmware.image
        c.firmwareName = "smm_state"
        c.console = false
        c.quiet = true
        c.timeoutSeconds = 60
        let kvm = try KVM()
        try c.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        return try MiniVMMRunner.run(c, kvm: kvm)
    }

    static func expectAllChecksPass(_ r: RunReport) {
        let failed = r.guestExitStatus.map { $0 >> 1 } ?? -1
        #expect(
            r.outcome == .completed,
            "\(r.outcome.rawValue): \(r.outcomeDetail); check \(failed): \(checks[failed] ?? "?")")
    }

    @Test("live DR6/DR7 in the map, DR7 0x400 in SMM, RSM reloads the map; x87/SSE/MSRs shared; SIPI SMI (AMD64 map)")
    func amd64Map() throws {
        let r = try Self.run(longMode: true)
        #expect(r.saveStateFormat == .amd64)
        Self.expectAllChecksPass(r)
        Self.expectAPEntryAtSIPI(r)
    }

    @Test("the same with the 32-bit map (guest CPUID without long mode)")
    func legacy32Map() throws {
        let r = try Self.run(longMode: false)
        #expect(r.saveStateFormat == .legacy32)
        Self.expectAllChecksPass(r)
        Self.expectAPEntryAtSIPI(r)
    }

    /// The VMM's own record: the AP took one SMI, at its SIPI entry point 0800:0000.
    static func expectAPEntryAtSIPI(_ r: RunReport) {
        guard r.cpus.count == 2 else {
            Issue.record("expected 2 CPUs in the report, got \(r.cpus.count)")
            return
        }
        let ap = r.cpus[1].smiEntries
        #expect(
            ap.count == 1,
            "AP SMI entries: \(ap.map { "\(String($0.savedCS ?? 0, radix: 16)):\($0.savedRIP.map { String($0) } ?? "?")" })"
        )
        #expect(ap.first?.savedCS == 0x0800)
        #expect(ap.first?.savedRIP == 0)
        #expect(r.cpus[0].smiEntries.count == 4)
    }
}
