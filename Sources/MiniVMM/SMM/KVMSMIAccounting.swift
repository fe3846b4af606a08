// SPDX-License-Identifier: MIT

/// One look at a CPU's SMM state inside KVM, taken by the kvm backend at an exit (or at a hotplug step, or at the
/// end of the run): `kvm_run->flags & KVM_RUN_X86_SMM`, MSR 0x9E (`vcpu->arch.smbase`) and `MSR_SMI_COUNT`
/// (`vcpu->arch.smi_count`, incremented by `kvm_check_and_inject_events` right before each `enter_smm`, zeroed
/// by `kvm_vcpu_reset` at RESET and INIT alike), both read with a host-initiated `KVM_GET_MSRS`.
struct KVMSMMLook: Equatable, Sendable {
    var inSMM: Bool
    /// MSR 0x9E. In SMM it is the SMBASE the CPU entered with (RSM alone changes it, from the map).
    var smbase: UInt32
    /// `MSR_SMI_COUNT`; nil when this KVM does not report it.
    var smiCount: UInt64?
}

/// An SMI that entered between two looks.
struct AccountedSMI: Equatable, Sendable {
    /// The SMBASE it entered with (entry point SMBASE + 0x8000).
    var smbase: UInt32
    /// The SMBASE its RSM loaded, when it left SMM before the second look (nil: the CPU is still in it).
    var rsmSMBASE: UInt32?
}

/// What the kvm backend can say about one CPU's SMIs from two consecutive looks (pure: tested without KVM).
///
/// KVM runs SMI entry and RSM inside `KVM_RUN`; an SMI raised by an SMI IPI, or a handler without exits, never
/// hands userspace an exit. Between two looks, KVM's SMI count gives the number of entries, and the SMBASE chain is
/// exact as long as at most one RSM happened in between: SMBASE changes only at RSM (or RESET, or a host write,
/// after which the backend looks again), so the first SMI entered with the SMBASE of the first look and the last
/// RSM loaded that of the second. With two RSMs or more, the SMBASE in between is unobservable at exit
/// granularity: the count of such SMIs is reported, their SMBASE never guessed.
///
/// An INIT zeroes KVM's count. The backend therefore keeps it at `countBase` or above (a host-initiated write of
/// `MSR_SMI_COUNT`, which `kvm_set_msr_common` accepts), so that a value below `countBase` proves an INIT and
/// gives the SMIs since it. SMIs between the first look and that INIT show only through a changed SMBASE.
struct KVMSMIAccounting: Equatable, Sendable {
    /// The floor the backend writes to `MSR_SMI_COUNT`.
    static let countBase: UInt64 = 1 << 32
    /// More SMIs than this between two looks is reported, not enumerated (a count no guest reaches in a run).
    static let maxSMIsPerLook = 1 << 16

    /// The last look.
    var last: KVMSMMLook

    struct Outcome: Equatable, Sendable {
        /// The SMI that was open at the last look left SMM (RSM) before this look.
        var closesSession = false
        /// The SMBASE that RSM loaded (nil: unobservable, another RSM followed it before this look).
        var closedSessionRSM: UInt32?
        /// SMIs entered after the last look with an observable SMBASE, in order; the last one is still in SMM when
        /// `opensSession`.
        var smis: [AccountedSMI] = []
        /// The CPU is in an SMI that entered after the last look (`smis.last`).
        var opensSession = false
        /// SMIs KVM counted whose SMBASE at entry is unobservable (more than one RSM between the looks).
        var unobservableSMIs = 0
        /// KVM's count went below `countBase`: an INIT reset it (the caller writes the floor back).
        var initSeen = false
        var problems: [String] = []
    }

    private func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }

    /// The SMIs between `last` and `now`; `last` becomes `now`.
    mutating func account(_ now: KVMSMMLook) -> Outcome {
        var o = Outcome()
        let wasIn = last.inSMM
        // Entries since the last look.
        var n = 0
        if let c1 = now.smiCount, let c0 = last.smiCount {
            if c1 < Self.countBase && (c0 >= Self.countBase || c1 < c0) {
                o.initSeen = true
                n = Int(clamping: c1)
            } else if c1 < c0 {
                o.problems.append("KVM's SMI count went back from \(c0) to \(c1)")
            } else {
                n = Int(clamping: c1 - c0)
            }
        } else if now.inSMM && !wasIn {
            n = 1
        }
        if n > Self.maxSMIsPerLook {
            o.problems.append(
                "KVM counts \(n) SMIs between two exits; more than \(Self.maxSMIsPerLook) are not enumerated")
            o.unobservableSMIs = n
            n = 0
        }
        if now.inSMM && !wasIn && n == 0 {
            o.problems.append("KVM reports SMM but counted no SMI since the last exit")
            n = 1
        }
        defer { last = now }
        if wasIn && now.inSMM && n == 0 {
            if now.smbase != last.smbase {
                o.problems.append("MSR 0x9E changed inside SMM (\(hex(last.smbase)) → \(hex(now.smbase)))")
            }
            return o
        }
        o.opensSession = now.inSMM
        o.closesSession = wasIn
        let closedUnseen = n - (o.opensSession ? 1 : 0)
        let rsms = (o.closesSession ? 1 : 0) + closedUnseen
        let start = last.smbase
        let end = now.smbase
        switch rsms {
        case 0:
            if start != end {
                o.problems.append(
                    o.initSeen
                        ? "SMBASE changed (\(hex(start)) → \(hex(end))) with no SMI counted since the INIT that reset KVM's count: SMIs taken before that INIT left no exit and are unobservable"
                        : "SMBASE changed (\(hex(start)) → \(hex(end))) without an SMI")
            }
        case 1:
            if o.closesSession {
                o.closedSessionRSM = end
            } else {
                o.smis.append(AccountedSMI(smbase: start, rsmSMBASE: end))
            }
        default:
            // Each of these SMIs entered with the SMBASE an RSM between the looks loaded (or, the first one when no
            // session was open, with `start`), but which RSM loaded what is unobservable: none is recorded.
            o.unobservableSMIs += closedUnseen
            o.problems.append(
                "\(closedUnseen) SMIs entered and left between two exits\(o.closesSession ? " after an RSM" : ""): the SMBASE they entered with and their RSMs loaded is unobservable at exit granularity"
            )
        }
        if o.opensSession { o.smis.append(AccountedSMI(smbase: end, rsmSMBASE: nil)) }
        return o
    }
}
