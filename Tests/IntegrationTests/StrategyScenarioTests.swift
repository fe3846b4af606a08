// SPDX-License-Identifier: MIT
import Firmware
import Foundation
import KVMBridge
import Testing

@testable import MiniVMM

/// Every strategy end to end on this host's KVM (emulated SMM backend), and the attack matrix: the invariants must
/// show what the strategy table expects, from the VMM's records, not only from the verdicts.
@Suite(
    .serialized,
    .needsKVM)
struct StrategyScenarioTests {
    static func config(_ s: Strategy, maxCPUs: Int, bootCPUs: Int = 2, attack: Attack? = nil) -> MachineConfig {
        var c = ScenarioTests.config(maxCPUs: maxCPUs, bootCPUs: bootCPUs)
        c.strategy = s
        c.attack = attack
        return c
    }

    @Test(
        "B, C and N end to end", .timeLimit(.minutes(3)),
        arguments: [Strategy.hotplugSMBASERegister, .smramAtDefaultSMBASE, .naive], [8, 64])
    func strategy(_ s: Strategy, maxCPUs: Int) throws {
        let config = Self.config(s, maxCPUs: maxCPUs)
        let r = try ScenarioTests.run(config)
        #expect(r.outcome == .completed, "\(r.outcome.rawValue): \(r.outcomeDetail)")
        for inv in r.invariants { #expect(inv.asExpected, "\(s) invariant \(inv.id): \(inv.detail)") }
        #expect(r.passed == (s != .naive))
        // Only the boot CPUs existed at boot: the others never took an SMI before their hot-add.
        for c in r.cpus where c.apicID >= config.bootCPUs {
            #expect(c.smiEntries.allSatisfy { $0.phase != .boot }, "CPU \(c.apicID) ran at boot")
            #expect(c.present == config.hotAdd.contains(c.apicID))
        }
        for n in config.hotAdd {
            let c = r.cpus[n]
            // The CPU never existed before: its vCPU is created by the hot-add, in the power-on state.
            let resets = c.smbaseHistory.filter { $0.cause == .reset }
            #expect(
                resets == [SMBASEEvent(cause: .reset, phase: .hotAdd, smbase: 0x30000)],
                "CPU \(n) hot-add RESET: \(c.smbaseHistory)")
            let tile = UInt32(r.tsegBase) + UInt32(n) * UInt32(Strategy.relocateAllAtBoot.spec.smramBytesPerPossibleCPU)
            guard let first = c.smiEntries.first, let last = c.smiEntries.last else {
                Issue.record("CPU \(n) took no SMI")
                continue
            }
            switch s {
            case .hotplugSMBASERegister:
                // The VMM loaded the register SMM code programmed: no SMI of this CPU ever entered 0x38000.
                #expect(c.smbaseHistory.last == SMBASEEvent(cause: .hotAdd, phase: .hotAdd, smbase: tile))
                #expect(c.smiEntries.allSatisfy { $0.entry == tile + 0x8000 && $0.inSMRAM })
            case .smramAtDefaultSMBASE:
                // Relocated by the gated first-SMI handler inside the locked default-SMBASE window.
                #expect(first.entry == 0x38000 && first.inSMRAM, "\(first)")
                #expect(last.entry == tile + 0x8000 && last.inSMRAM)
            default:
                // Relocated at 0x38000 in ordinary RAM: the insecure baseline.
                #expect(first.entry == 0x38000 && !first.inSMRAM, "\(first)")
                #expect(last.entry == tile + 0x8000 && last.inSMRAM)
            }
        }
        if s == .smramAtDefaultSMBASE {
            #expect(r.smramWindows.allSatisfy { $0.closed && $0.locked })
        } else {
            #expect(r.smramWindows.first { $0.kind == .defaultSMBASE }?.closed == false)
        }
    }

    @Test("C ejects hot-removed CPUs from SMM (fw_remove + APM command 4), as OVMF does", .timeLimit(.minutes(2)))
    func strategyCHotRemove() throws {
        var config = Self.config(.smramAtDefaultSMBASE, maxCPUs: 8)
        config.hotRemove = [1, 7]
        let r = try ScenarioTests.run(config)
        #expect(r.passed, "\(r.summary)")
        for n in [1, 7] { #expect(!r.cpus[n].present && r.cpus[n].state == .unplugged, "CPU \(n)") }
        #expect(r.cpus.filter(\.present).map(\.apicID) == [0, 2, 4])
        // The eject went through SMM: the monarch's APM command 4 SMIs reached every present CPU.
        #expect(r.cpus[0].smiEntries.filter { $0.phase == .hotAdd }.count >= 5)
    }

    @Test("the attack matrix tells the safe designs from the unsafe ones", .timeLimit(.minutes(5)))
    func attackMatrix() throws {
        let kvm = try KVM()
        var base = ScenarioTests.config(maxCPUs: 16, bootCPUs: 2)
        base.timeoutSeconds = 60
        let m = try AttackMatrixRunner.run(
            base: base, strategies: Strategy.allCases, attacks: Attack.allCases, kvm: kvm)
        #expect(m.asExpected, "\(m.rendered)")
        #expect(m.rows.map(\.label).count == 5)
        for row in m.rows {
            for cell in row.attacks {
                #expect(cell.verdict == cell.expected, "\(row.label) × \(cell.attack): \(cell.evidence)")
                if cell.verdict == .compromised {
                    #expect(cell.evidence.contains("0x38000 in ordinary RAM"), "\(cell.evidence)")
                }
            }
        }
        let n = try #require(m.rows.first { $0.strategy == .naive })
        #expect(n.attacks.filter { $0.verdict == .compromised }.map(\.attack) == [.plant, .replant, .osIPIs])
        let reset = try #require(m.rows.first { $0.hotplugReset })
        #expect(reset.attacks.map(\.verdict) == [.compromised])
    }

    @Test("an attack the strategy withstands leaves the canary and the invariants intact", .timeLimit(.minutes(2)))
    func attackedButSafe() throws {
        let r = try ScenarioTests.run(Self.config(.smramAtDefaultSMBASE, maxCPUs: 8, attack: .replant))
        #expect(r.attack?.verdict == .safe, "\(r.attack as Any)")
        #expect(r.passed, "\(r.summary)")
        #expect(r.counters.smramAccesses.writes > 1, "the re-planting writes hit the locked window's black hole")
    }
}
