// SPDX-License-Identifier: MIT
import ArgumentParser
import KVMBridge
import Testing

@testable import MiniVMM

/// The `--smm` decision table, from `KVM_CHECK_EXTENSION` answers alone (no KVM needed).
struct BackendSelectionTests {
    /// What this project's kvm_pvm hosts report (DESIGN §8): everything the emulated backend needs, no SMM.
    static let pvmHost: [Capability: Int] = [
        .syncRegisters: 0x7, .immediateExit: 1, .userSpaceMSR: 1, .readonlyMemory: 1, .x86SMM: 0,
        .multiAddressSpace: 0, .maxVCPUs: 1024,
    ]
    /// A host with KVM's own SMM (e.g. kvm_amd under nested TCG): SMM and two memslot address spaces.
    static let smmHost = pvmHost.merging([.x86SMM: 1, .multiAddressSpace: 2]) { $1 }

    @Test func autoPicksKVMWhenSMMIsPresent() throws {
        let choice = try BackendChoice.choose(requested: .auto, capabilities: Self.smmHost)
        #expect(choice.kind == .kvm)
        #expect(choice.reason.contains("KVM_CAP_X86_SMM"))
    }

    @Test func autoPicksEmulatedWithAReasonNamingTheMissingSMMCapability() throws {
        let choice = try BackendChoice.choose(requested: .auto, capabilities: Self.pvmHost)
        #expect(choice.kind == .emulated)
        #expect(choice.reason.contains("lacks KVM_CAP_X86_SMM"))
    }

    @Test func smmWithOneAddressSpaceIsNotEnoughForKVM() throws {
        var caps = Self.smmHost
        caps[.multiAddressSpace] = 1
        #expect(try BackendChoice.choose(requested: .auto, capabilities: caps).kind == .emulated)
        #expect(throws: SMMBackendError.self) { try BackendChoice.choose(requested: .kvm, capabilities: caps) }
        do {
            _ = try BackendChoice.choose(requested: .kvm, capabilities: caps)
        } catch {
            #expect(error.description.contains("KVM_CAP_MULTI_ADDRESS_SPACE ≥ 2 (it reports 1)"))
        }
    }

    @Test func kvmRequestedWithoutSMMThrowsTheOneLineMessage() {
        #expect(throws: SMMBackendError.kvmUnavailable(missing: ["KVM_CAP_X86_SMM"])) {
            try BackendChoice.choose(requested: .kvm, capabilities: Self.pvmHost)
        }
        let message = SMMBackendError.kvmUnavailable(missing: ["KVM_CAP_X86_SMM"]).description
        #expect(
            message
                == "--smm kvm needs KVM's own SMM, but this host's KVM lacks KVM_CAP_X86_SMM (use --smm emulated or auto)"
        )
        #expect(
            MiniVMMCommand.errorLine(for: SMMBackendError.kvmUnavailable(missing: ["KVM_CAP_X86_SMM"]))
                == "minivmm: error: \(message)")
    }

    @Test func kvmRequestedWithSMMPicksKVM() throws {
        #expect(try BackendChoice.choose(requested: .kvm, capabilities: Self.smmHost).kind == .kvm)
    }

    @Test func emulatedRequestedEvenWhenKVMHasSMM() throws {
        #expect(try BackendChoice.choose(requested: .emulated, capabilities: Self.smmHost).kind == .emulated)
    }

    @Test(arguments: [0x0, 0x1, 0x3, 0x6])
    func emulatedWithoutAllSyncRegisterSetsNamesSyncRegs(sync: Int) {
        var caps = Self.pvmHost
        caps[.syncRegisters] = sync
        do {
            _ = try BackendChoice.choose(requested: .emulated, capabilities: caps)
            Issue.record("expected an error for KVM_CAP_SYNC_REGS = \(sync)")
        } catch {
            guard case .emulatedUnavailable(let missing) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(missing.count == 1)
            #expect(error.description.contains("lacks KVM_CAP_SYNC_REGS"))
        }
    }

    @Test func everyMissingEmulatedRequirementIsNamed() {
        let caps: [Capability: Int] = [.syncRegisters: 0x7]
        #expect(
            throws: SMMBackendError.emulatedUnavailable(missing: [
                "KVM_CAP_IMMEDIATE_EXIT", "KVM_CAP_X86_USER_SPACE_MSR", "KVM_CAP_READONLY_MEM",
            ])
        ) { try BackendChoice.choose(requested: .emulated, capabilities: caps) }
    }

    @Test func autoWithNoUsableBackendNamesBoth() {
        do {
            _ = try BackendChoice.choose(requested: .auto, capabilities: [:])
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains("KVM_CAP_X86_SMM"))
            #expect(error.description.contains("KVM_CAP_SYNC_REGS"))
        }
    }

    @Test func smmFlagParsesEveryKind() {
        #expect(SMMBackendKind.allCases.map { SMMBackendKind(argument: $0.rawValue) } == [.auto, .emulated, .kvm])
        #expect(SMMBackendKind(argument: "native") == nil)
    }

    @Test func capsTextRendersAbsentYesCountsAndTheSyncBitmap() {
        let report = CapsReport(
            apiVersion: 12, maxVCPUs: 1024, recommendedVCPUs: 2, vcpuMmapSize: 12288, capabilities: Self.pvmHost)
        let text = report.text()
        #expect(text.contains("  KVM_CAP_X86_SMM: no\n"))
        #expect(text.contains("  KVM_CAP_IMMEDIATE_EXIT: yes\n"))
        #expect(text.contains("  KVM_CAP_MAX_VCPUS: 1024\n"))
        #expect(text.contains("  KVM_CAP_SYNC_REGS: 0x7 (regs|sregs|events)\n"))
        #expect(text.contains("SMM backend (--smm auto): emulated"))
        #expect(report.capabilities.count == Capability.allCases.count)
    }

    @Test func oneLineErrorsFoldArgumentParserAndKVMErrors() {
        #expect(
            MiniVMMCommand.errorLine(for: KVMError.permissionDenied(path: "/dev/kvm"))
                == "minivmm: error: permission denied on /dev/kvm: run with sudo or join the kvm group")
        #expect(MiniVMMCommand.errorLine(for: ValidationError("a\n  b")) == "minivmm: error: a b")
    }
}
