// SPDX-License-Identifier: MIT
import Firmware
import Foundation
import KVMBridge
import Testing

@testable import MiniVMM

/// The kvm SMM backend on a host whose KVM has SMM (real Intel/AMD hosts, GitHub's KVM runners): the scenario on
/// both backends, reports compared field by field. This project's own machines (kvm_pvm) have no KVM SMM: there
/// these tests are disabled and the nested-KVM lane (scripts/nested-kvm.sh) runs the same comparison inside a
/// kernel that has it.
@Suite(
    .serialized,
    .enabled(
        if: (try? KVM().has(.x86SMM)) ?? false,
        "needs a KVM with KVM_CAP_X86_SMM (this host's has none: scripts/nested-kvm.sh covers it)"))
struct KVMBackendTests {
    static func pair(_ config: MachineConfig) throws -> (kvm: RunReport, emulated: RunReport) {
        var k = config
        k.backend = .kvm
        var e = config
        e.backend = .emulated
        return (try ScenarioTests.run(k), try ScenarioTests.run(e))
    }

    @Test(
        "kvm and emulated backends give the same report", .timeLimit(.minutes(5)),
        arguments: [(1, 1, false, true), (4, 2, false, true), (64, 2, false, false), (8, 2, true, true)])
    func sameReport(maxCPUs: Int, bootCPUs: Int, hotplugReset: Bool, longMode: Bool) throws {
        var c = ScenarioTests.config(maxCPUs: maxCPUs, bootCPUs: bootCPUs)
        c.hotplugReset = hotplugReset
        c.longMode = longMode
        let (k, e) = try Self.pair(c)
        #expect(k.backend == "kvm" && e.backend == "emulated")
        #expect(k.outcome == .completed, "\(k.summary)")
        #expect(k.passed == !hotplugReset, "\(k.summary)")
        let diffs = try ReportComparison.differences(k, e)
        #expect(diffs.isEmpty, "\(diffs.count) differing fields: \(diffs.prefix(10).map(\.description))")
    }
}
