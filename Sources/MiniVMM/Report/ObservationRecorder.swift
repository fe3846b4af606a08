// SPDX-License-Identifier: MIT

/// The one place where SMM and hotplug observations become records: both backends feed it what they performed
/// (emulated) or observed (kvm). Every method runs with the machine lock held.
extension Machine {
    /// An SMI entry at `smbase` + 0x8000 that saved `savedCS:savedRIP` in the map (nil: not observed). `inSMM` is
    /// false for an SMI the kvm backend accounted for only after its RSM (`MSR_SMI_COUNT`).
    func recordSMIEntry(
        _ cpu: CPUContext, smbase: UInt32, savedCS: UInt16?, savedRIP: UInt64?, phase at: Phase? = nil,
        inSMM: Bool = true
    ) {
        cpu.inSMM = inSMM
        cpu.smbase = smbase
        counters.smis += 1
        let window = smram.window(holdingEntryOf: smbase)
        cpu.observation.appendSMIEntry(
            SMIEntryRecord(
                phase: at ?? phase, smbase: smbase, entry: smbase &+ UInt32(Layout.smiHandlerOffset),
                inSMRAM: window != nil, savedCS: savedCS, savedRIP: savedRIP))
    }

    /// An RSM that left SMM with `smbase` in the SMBASE register (reloaded from the map); nil when the backend
    /// could not observe what it loaded (the kvm backend, two RSMs between two exits).
    func recordRSM(_ cpu: CPUContext, smbase: UInt32?) {
        cpu.inSMM = false
        counters.rsms += 1
        cpu.observation.rsmCount += 1
        let session = cpu.observation.smiEntries.last
        if let smbase {
            if smbase != cpu.smbase {
                noteSMBASE(cpu, SMBASEEvent(cause: .rsm, phase: cpu.sessionPhase(default: phase), smbase: smbase))
            }
            cpu.smbase = smbase
        }
        canary.check(
            in: memory,
            context: "by the time CPU \(cpu.index) left SMM"
                + (session.map {
                    " (its SMI entered at 0x\(String($0.entry, radix: 16))\($0.inSMRAM ? " in SMRAM" : " in ordinary RAM"), phase \($0.phase.rawValue))"
                } ?? ""))
    }

    /// A RESET: power-on state (outside SMM), SMBASE as the backend reads it back (0x30000).
    func recordReset(_ cpu: CPUContext, smbase: UInt32) {
        cpu.inSMM = false
        cpu.smbase = smbase
        noteSMBASE(cpu, SMBASEEvent(cause: .reset, phase: phase, smbase: smbase))
    }

    /// The SMBASE a CPU holds once the VMM finished hot-adding it (before the firmware's INIT-SIPI-SIPI).
    func recordHotAdd(_ cpu: CPUContext, smbase: UInt32, smbaseRegister: UInt32?) {
        cpu.smbase = smbase
        cpu.observation.smbaseAtHotAdd = smbase
        cpu.observation.smbaseRegisterAtHotAdd = smbaseRegister
        noteSMBASE(cpu, SMBASEEvent(cause: .hotAdd, phase: phase, smbase: smbase))
    }

    /// Appends to the CPU's SMBASE history and tells controllers (QMP `x-minivmm-SMBASE`).
    func noteSMBASE(_ cpu: CPUContext, _ e: SMBASEEvent) {
        cpu.observation.appendSMBASEEvent(e)
        events.post(.smbaseChanged(cpu: cpu.index, smbase: e.smbase, cause: e.cause))
    }

    /// The SMBASE a CPU held when it was ejected.
    func recordEject(_ cpu: CPUContext, smbase: UInt32) {
        if smbase != cpu.smbase {
            noteFailure(
                "CPU \(cpu.index): SMBASE is 0x\(String(smbase, radix: 16)) at eject, minivmm last saw 0x\(String(cpu.smbase, radix: 16))"
            )
        }
        cpu.smbase = smbase
        cpu.observation.smbaseAtEject = smbase
    }
}
