// SPDX-License-Identifier: MIT
import ArgumentParser
import KVMBridge

/// Which SMM backend a run uses (`--smm`, DESIGN §2).
public enum SMMBackendKind: String, Codable, CaseIterable, ExpressibleByArgument, Sendable {
    /// KVM's own SMM when the host offers it, else the emulated model.
    case auto
    /// minivmm models SMM itself (SMBASE register, SMI entry, RSM, SMRAM visibility).
    case emulated
    /// KVM's own SMM: `KVM_SMI`, MSR 0x9E, SMRAM in memslot address space 1.
    case kvm
}

/// The backend a run will use and why. `kind` is never `.auto`.
public struct BackendChoice: Equatable, Sendable, Codable {
    /// `.kvm` or `.emulated`.
    public let kind: SMMBackendKind
    /// One line naming the capabilities the decision rests on.
    public let reason: String

    public init(kind: SMMBackendKind, reason: String) {
        precondition(kind != .auto, "a backend choice is concrete")
        self.kind = kind
        self.reason = reason
    }
}

/// Why no SMM backend could be chosen. Each description is one line for `minivmm: error: …`.
public enum SMMBackendError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `--smm kvm` on a host whose KVM has no SMM (`missing` names what it lacks).
    case kvmUnavailable(missing: [String])
    /// `--smm emulated` on a host whose KVM lacks what the emulated model needs.
    case emulatedUnavailable(missing: [String])
    /// `--smm auto` and neither backend works.
    case noBackend(kvmMissing: [String], emulatedMissing: [String])

    public var description: String {
        switch self {
        case .kvmUnavailable(let missing):
            "--smm kvm needs KVM's own SMM, but this host's KVM lacks \(list(missing)) (use --smm emulated or auto)"
        case .emulatedUnavailable(let missing):
            "--smm emulated needs \(BackendChoice.emulatedRequirementNames), but this host's KVM lacks \(list(missing))"
        case .noBackend(let kvmMissing, let emulatedMissing):
            "no SMM backend works on this host: KVM's own SMM needs \(list(kvmMissing)) and the emulated backend"
                + " needs \(list(emulatedMissing))"
        }
    }

    private func list(_ names: [String]) -> String {
        names.joined(separator: " and ")
    }
}

extension BackendChoice {
    /// `KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS`: the `kvm_run` register sets the emulated
    /// backend reads and writes on every exit instead of three vCPU ioctls.
    public static let requiredSyncRegisters = 0x7

    /// The capabilities the emulated backend needs, as the error and reason texts name them.
    static let emulatedRequirementNames =
        "KVM_CAP_SYNC_REGS (regs|sregs|events), KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_X86_USER_SPACE_MSR and"
        + " KVM_CAP_READONLY_MEM"

    /// What the kvm backend lacks on a host with these `KVM_CHECK_EXTENSION` answers (empty: usable).
    /// Without `KVM_CAP_X86_SMM` that is the only thing named: KVM reports two address spaces only with SMM.
    static func kvmMissing(_ caps: [Capability: Int]) -> [String] {
        if (caps[.x86SMM] ?? 0) <= 0 { return [Capability.x86SMM.kernelName] }
        let spaces = caps[.multiAddressSpace] ?? 0
        if spaces < 2 { return ["\(Capability.multiAddressSpace.kernelName) ≥ 2 (it reports \(spaces))"] }
        return []
    }

    /// What the emulated backend lacks on a host with these `KVM_CHECK_EXTENSION` answers (empty: usable).
    static func emulatedMissing(_ caps: [Capability: Int]) -> [String] {
        var missing: [String] = []
        let sync = caps[.syncRegisters] ?? 0
        if sync & requiredSyncRegisters != requiredSyncRegisters {
            missing.append(
                "\(Capability.syncRegisters.kernelName) (regs|sregs|events = 0x7, it reports 0x\(String(sync, radix: 16)))"
            )
        }
        for cap in [Capability.immediateExit, .userSpaceMSR, .readonlyMemory] where (caps[cap] ?? 0) <= 0 {
            missing.append(cap.kernelName)
        }
        return missing
    }

    /// Picks the SMM backend from the host's `KVM_CHECK_EXTENSION` answers (a missing key counts as 0). Pure, so
    /// the decision table is tested without KVM. `auto` prefers kvm, the ground truth (DESIGN §2).
    /// - Throws: `SMMBackendError` when the requested backend (or, for `auto`, every backend) is unusable.
    public static func choose(requested: SMMBackendKind, capabilities caps: [Capability: Int]) throws(SMMBackendError)
        -> BackendChoice
    {
        let kvmMissing = kvmMissing(caps)
        let emulatedMissing = emulatedMissing(caps)
        let kvmReason =
            "KVM_CAP_X86_SMM and KVM_CAP_MULTI_ADDRESS_SPACE = \(caps[.multiAddressSpace] ?? 0): KVM's own SMM"
        let emulatedReason = "has \(emulatedRequirementNames)"
        switch requested {
        case .kvm:
            guard kvmMissing.isEmpty else { throw .kvmUnavailable(missing: kvmMissing) }
            return BackendChoice(kind: .kvm, reason: "--smm kvm: \(kvmReason)")
        case .emulated:
            guard emulatedMissing.isEmpty else { throw .emulatedUnavailable(missing: emulatedMissing) }
            return BackendChoice(kind: .emulated, reason: "--smm emulated: this host's KVM \(emulatedReason)")
        case .auto:
            if kvmMissing.isEmpty {
                return BackendChoice(kind: .kvm, reason: "this host's KVM has \(kvmReason), which auto prefers")
            }
            guard emulatedMissing.isEmpty else {
                throw .noBackend(kvmMissing: kvmMissing, emulatedMissing: emulatedMissing)
            }
            return BackendChoice(
                kind: .emulated,
                reason: "this host's KVM lacks \(kvmMissing.joined(separator: " and ")) but \(emulatedReason)")
        }
    }

    /// Picks the SMM backend for this host's KVM (see `choose(requested:capabilities:)`).
    public static func choose(requested: SMMBackendKind, kvm: KVM) throws -> BackendChoice {
        try choose(requested: requested, capabilities: probeCapabilities(kvm))
    }

    /// `KVM_CHECK_EXTENSION` for every capability minivmm knows (0 = absent, else the kernel's integer answer).
    public static func probeCapabilities(_ kvm: KVM) throws(KVMError) -> [Capability: Int] {
        var caps: [Capability: Int] = [:]
        for cap in Capability.allCases {
            caps[cap] = try kvm.checkExtensionInt(cap)
        }
        return caps
    }
}
