// SPDX-License-Identifier: MIT

/// Where in the scenario the machine was when something happened (from the VMM's own event order).
public enum Phase: String, Codable, Sendable {
    case boot, hotRemove = "hot-remove", hotAdd = "hot-add", finish
}

/// One SMI as the VMM performed (emulated backend) or observed (kvm backend) it.
public struct SMIEntryRecord: Codable, Sendable, Equatable {
    public var phase: Phase
    /// The CPU's internal SMBASE register at entry.
    public var smbase: UInt32
    /// SMBASE + 0x8000: where the CPU started executing in SMM.
    public var entry: UInt32
    /// Whether [SMBASE+0x8000, SMBASE+0x10000) lay inside closed SMRAM (TSEG with T_EN, or the locked
    /// default-SMBASE window) at the time of entry.
    public var inSMRAM: Bool
    /// The interrupted context saved in the map: CS selector and RIP, as it was when SMM code started. Absent
    /// (nil) when the backend did not see the entry itself: the kvm backend reads the map only at an exit at
    /// SMBASE+0x8000 (the firmware's entry probe, or a hardware breakpoint where the host honours it); an SMI it
    /// accounted for later (SMM flag at a later exit, or `MSR_SMI_COUNT`) may have had its map edited by the
    /// handler by then, so these fields are reported as unobserved, never guessed (`ReportComparison`).
    public var savedCS: UInt16?
    public var savedRIP: UInt64?

    /// The fields a backend may leave unobserved, as the report's JSON keys (`ReportComparison.observableOnlyAtEntry`).
    public static let fieldsObservableOnlyAtEntry = ["savedCS", "savedRIP"]

    /// Whether the entry itself was observed (its saved context is known).
    public var entryObserved: Bool { savedCS != nil && savedRIP != nil }

    public init(
        phase: Phase, smbase: UInt32, entry: UInt32, inSMRAM: Bool, savedCS: UInt16?, savedRIP: UInt64?
    ) {
        self.phase = phase
        self.smbase = smbase
        self.entry = entry
        self.inSMRAM = inSMRAM
        self.savedCS = savedCS
        self.savedRIP = savedRIP
    }
}

/// A CPU's internal SMBASE register at an event both backends observe: RESET (vCPU creation, or a hot-add with
/// --hotplug-reset), an RSM that changed it, and hot-add. INIT is not one: on the kvm backend KVM performs it
/// inside KVM_RUN; the SMBASE INIT kept shows in the next SMI entry.
public struct SMBASEEvent: Codable, Sendable, Equatable {
    public enum Cause: String, Codable, Sendable { case reset, rsm, hotAdd = "hot-add" }
    public var cause: Cause
    public var phase: Phase
    public var smbase: UInt32
}

/// Everything the VMM recorded about one CPU.
public struct CPUObservation: Codable, Sendable {
    public var apicID: Int
    public var smbaseHistory: [SMBASEEvent] = []
    public var smiEntries: [SMIEntryRecord] = []
    /// SMBASE when the CPU was ejected, and when it was plugged back.
    public var smbaseAtEject: UInt32?
    public var smbaseAtHotAdd: UInt32?
    /// Strategy B: the CPU's SMBASE register in the hotplug block when it was hot-added (nil: never programmed).
    public var smbaseRegisterAtHotAdd: UInt32?
    public var hotAdded = false
    public var rsmCount = 0
    /// Records left out once a list reached its cap (an SMI storm must not grow the report without bound).
    public var droppedRecords = 0

    /// Per-CPU caps: the first `head` records of a list and the latest `tail` ones are kept.
    public static let recordHead = 48
    public static let recordTail = 16

    /// Appends `r` to `list`, keeping the first `recordHead` and the latest `recordTail` records.
    static func append<T>(_ r: T, to list: inout [T], dropped: inout Int) {
        if list.count >= recordHead + recordTail {
            list.remove(at: recordHead)
            dropped += 1
        }
        list.append(r)
    }

    /// The first SMI after the hot-add that entered outside SMRAM, kept whatever the caps drop (invariant 3).
    public var firstHotAddSMIOutsideSMRAM: SMIEntryRecord?

    mutating func appendSMIEntry(_ r: SMIEntryRecord) {
        if firstHotAddSMIOutsideSMRAM == nil && !r.inSMRAM && (r.phase == .hotAdd || r.phase == .finish) {
            firstHotAddSMIOutsideSMRAM = r
        }
        Self.append(r, to: &smiEntries, dropped: &droppedRecords)
    }
    mutating func appendSMBASEEvent(_ e: SMBASEEvent) {
        Self.append(e, to: &smbaseHistory, dropped: &droppedRecords)
    }

    public init(apicID: Int) { self.apicID = apicID }
}

/// Non-SMM accesses to closed SMRAM (invariant 4).
public struct SMRAMAccessCounters: Codable, Sendable, Equatable {
    public var reads = 0
    public var writes = 0
    /// fw_cfg DMA transfers (descriptor, read or write) that hit closed SMRAM and were black-holed.
    public var dmaBlocked = 0
    /// Whether non-SMM reads of closed SMRAM could only return all-ones: false when the VMM failed to remove a
    /// closed window from the normal view (reads there would not even exit), or when the firmware's own OS-side
    /// probe of locked TSEG read something else.
    public var readsReturnedAllOnes = true
    /// The first few addresses touched, for the report.
    public var firstAddresses: [UInt64] = []
}
