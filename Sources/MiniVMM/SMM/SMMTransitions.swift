// SPDX-License-Identifier: MIT
import CKVM

/// The result of taking an SMI: what `enter_smm()` writes to SMRAM and the register state it leaves the vCPU in.
public struct SMMEntry: Sendable, Equatable {
    /// The 512-byte state-save map to write at `smbase + 0xFE00` (``SaveStateMap/offsetFromSMBASE``).
    public var map: [UInt8]
    /// The vCPU state at the first instruction of the SMI handler (`smbase + 0x8000`).
    public var state: ArchState
    /// KVM's `HF_SMM_INSIDE_NMI_MASK`: NMIs were already blocked when the SMI arrived, so RSM must leave them blocked.
    public var insideNMI: Bool
}

/// The result of a successful RSM.
public struct SMMExit: Sendable, Equatable {
    /// The vCPU state after RSM.
    public var state: ArchState
    /// The new SMBASE register, reloaded from the map's SMBASE field.
    public var smbase: UInt32
}

/// Why RSM failed. KVM turns every failure of `emulator_leave_smm()` into a triple fault (`em_rsm` calls
/// `triple_fault`), which userspace sees as `KVM_EXIT_SHUTDOWN`.
public struct RSMFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// The register whose load KVM rejected.
    public enum Register: String, Sendable {
        case cr0 = "CR0"
        case cr3 = "CR3"
        case cr4 = "CR4"
        case dr6 = "DR6"
        case dr7 = "DR7"
        case efer = "EFER"
    }

    public var register: Register
    /// The value RSM tried to load.
    public var value: UInt64
    /// Which of KVM's checks rejected it.
    public var reason: String

    public var description: String {
        "RSM cannot load \(register.rawValue) = 0x\(String(value, radix: 16)): \(reason) (triple fault)"
    }
}

/// Values `enter_smm()` loads (reference/kvm-smm.md §2).
enum SMMEntryValues {
    /// The handler entry point, relative to SMBASE (`kvm_rip_write(vcpu, 0x8000)`).
    static let rip: UInt64 = 0x8000
    /// All six segments: 4 GiB limit (`limit = 0xffffffff, g = 1`), read/write accessed data (`type = 3`).
    static let segmentLimit: UInt32 = 0xFFFF_FFFF
    static let segmentType: UInt8 = 0x3
    /// CR0 bits `enter_smm` clears.
    static let cr0Cleared: UInt64 = X86.CR0.pe | X86.CR0.em | X86.CR0.ts | X86.CR0.pg
}

/// Takes an SMI in state `s` with the vCPU's SMBASE register `smbase`.
///
/// Models `enter_smm()` in arch/x86/kvm/smm.c: the map is `enter_smm_save_state_32/64` of the state at the SMI, then
/// NMIs are blocked (remembering in `insideNMI` whether they already were), and the registers are loaded as in
/// reference/kvm-smm.md §2: RFLAGS 2, RIP 0x8000, no interrupt shadow, CR0 without PE/EM/TS/PG, CR4 0, IDTR 0/0,
/// DR7 0x400, CS = (smbase >> 4) : smbase, DS/ES/FS/GS/SS = 0 : 0, all six 4 GiB flat 16-bit data segments, and
/// EFER 0 for a long-mode guest (``SaveStateFormat/amd64``). GPRs, CR2, CR3, CR8, GDTR, LDTR, TR, DR6 and the APIC
/// base are not changed. The auto-HALT and I/O-restart fields stay 0: KVM takes an SMI that arrives in HLT as if HLT
/// had completed (the saved RIP is the next instruction).
public func enterSMM(from s: ArchState, smbase: UInt32, format: SaveStateFormat) -> SMMEntry {
    let map = SaveStateMap.encode(s, smbase: smbase, format: format)

    var state = s
    state.nmiMasked = true
    state.regs.rflags = X86.rflagsFixed
    state.regs.rip = SMMEntryValues.rip
    state.interruptShadow = 0

    let oldCR0 = state.sregs.cr0
    state.sregs.cr0 = oldCR0 & ~SMMEntryValues.cr0Cleared
    // vmx_set_cr0/svm_set_cr0: clearing CR0.PG with EFER.LME set leaves long mode (exit_lmode clears EFER.LMA).
    if oldCR0 & X86.CR0.pg != 0 && state.sregs.efer & X86.EFER.lme != 0 {
        state.sregs.efer &= ~X86.EFER.lma
    }
    state.sregs.cr4 = 0
    // "Undocumented: IDT limit is set to zero on entry to SMM."
    state.sregs.idt = kvm_dtable(base: 0, limit: 0)
    state.dr7 = X86.DR.dr7Fixed1

    let cs = kvm_segment(
        selector: UInt16(truncatingIfNeeded: smbase >> 4), base: UInt64(smbase), limit: SMMEntryValues.segmentLimit,
        type: SMMEntryValues.segmentType, s: 1, g: 1)
    let data = kvm_segment(
        selector: 0, base: 0, limit: SMMEntryValues.segmentLimit, type: SMMEntryValues.segmentType, s: 1, g: 1)
    state.sregs.cs = cs
    state.sregs.ds = data
    state.sregs.es = data
    state.sregs.fs = data
    state.sregs.gs = data
    state.sregs.ss = data

    if format == .amd64 {
        state.sregs.efer = 0
    }
    return SMMEntry(map: map, state: state, insideNMI: s.nmiMasked)
}

/// Executes RSM: `current` is the state at the RSM instruction, `map` the 512 bytes at SMBASE+0xFE00 as they are
/// now (edits by the handler take effect), `insideNMI` the flag ``enterSMM(from:smbase:format:)`` returned.
///
/// Models `em_rsm` → `emulator_leave_smm()` → `rsm_load_state_32/64()` in arch/x86/kvm/smm.c:
/// 1. NMIs are unmasked unless they were masked before the SMI (with `insideNMI` the mask is left as it is at RSM).
/// 2. The vCPU drops to a safe real-mode state (long-mode guests: CR4.PCIDE off and a flat 32-bit CS; CR0.PE/PG off;
///    long-mode guests: CR4.PAE off and EFER 0). KVM ignores failures here and so does the model.
/// 3. Every map field is loaded through KVM's checked setters (`kvm_set_dr`, the EFER MSR write, `kvm_set_cr3/4/0`
///    in `rsm_enter_protected_mode`'s order), SMBASE is reloaded from the map and the interrupt shadow comes from
///    the map's `int_shadow`.
///
/// Like KVM there is no SMBASE alignment check and no revision-ID check, and the auto-HALT and I/O-restart fields
/// are ignored. Not modelled: PDPTR loads from guest memory for PAE paging (KVM fails RSM if they cannot be read;
/// the emulated backend's KVM_SET_SREGS performs that load), guest-CPUID-dependent reserved bits (the model accepts
/// every CR4/EFER bit some CPU defines and checks CR3 against the architectural 52-bit MAXPHYADDR), and nested
/// virtualization.
/// - Returns: the state after RSM and the new SMBASE, or the failure KVM turns into a triple fault.
public func leaveSMM(
    map: [UInt8], format: SaveStateFormat, current: ArchState, insideNMI: Bool
) -> Result<SMMExit, RSMFailure> {
    let saved = SaveStateMap.decode(map, format: format)
    var cpu = RSMModel(state: current, longModeGuest: format == .amd64)

    // if ((vcpu->arch.hflags & HF_SMM_INSIDE_NMI_MASK) == 0) set_nmi_mask(vcpu, false);
    if !insideNMI {
        cpu.state.nmiMasked = false
    }
    cpu.enterSafeRealMode()

    do {
        switch format {
        case .legacy32: try cpu.loadState32(saved)
        case .amd64: try cpu.loadState64(saved)
        }
    } catch {
        return .failure(error)
    }
    // set_interrupt_shadow(vcpu, 0); ctxt->interruptibility = int_shadow; toggle_interruptibility() then sets it.
    cpu.state.interruptShadow = saved.interruptShadow & X86.interruptShadowMask
    return .success(SMMExit(state: cpu.state, smbase: saved.smbase))
}

/// The slice of KVM's vCPU that RSM touches, with KVM's checked register writes (arch/x86/kvm/x86.c
/// `kvm_set_cr0/cr3/cr4`, `kvm_set_dr`, `set_efer`) as seen by a guest-initiated write. The vCPU is assumed to have
/// neither RTM nor bus-lock detection in its CPUID, so DR6 bits 11 and 16 read as 1 (`kvm_dr6_fixed`).
struct RSMModel {
    var state: ArchState
    /// Guest CPUID has LM (selects the AMD64 map).
    let longModeGuest: Bool

    private var cr0: UInt64 { state.sregs.cr0 }
    private var cr4: UInt64 { state.sregs.cr4 }
    private var efer: UInt64 { state.sregs.efer }
    /// `is_paging()`.
    private var isPaging: Bool { cr0 & X86.CR0.pg != 0 }
    /// `is_long_mode()`: EFER.LMA.
    private var isLongMode: Bool { efer & X86.EFER.lma != 0 }
    /// `is_64_bit_mode()`: long mode with CS.L.
    private var is64BitMode: Bool { isLongMode && state.sregs.cs.l != 0 }

    /// `emulator_leave_smm` before `rsm_load_state_*`: "Get back to real mode, to prepare a safe state in which to
    /// load CR0/CR3/CR4/EFER." KVM ignores the setters' return values here.
    mutating func enterSafeRealMode() {
        if longModeGuest {
            // Zero CR4.PCIDE before CR0.PG.
            if cr4 & X86.CR4.pcide != 0 {
                try? setCR4(cr4 & ~X86.CR4.pcide)
            }
            // A 32-bit code segment is required to clear EFER.LMA (memset 0, then type 0xb, s = g = present = 1).
            state.sregs.cs = kvm_segment(selector: 0, base: 0, limit: 0, type: 0xB, s: 1, g: 1)
        }
        // For the 64-bit case, this will clear EFER.LMA.
        if cr0 & X86.CR0.pe != 0 {
            try? setCR0(cr0 & ~(X86.CR0.pg | X86.CR0.pe))
        }
        if longModeGuest {
            // Clear CR4.PAE before clearing EFER.LME, then go back to 32-bit mode.
            if cr4 & X86.CR4.pae != 0 {
                try? setCR4(cr4 & ~X86.CR4.pae)
            }
            try? setEFER(0)
        }
    }

    /// `rsm_load_state_32`.
    mutating func loadState32(_ saved: DecodedSaveState) throws(RSMFailure) {
        state.regs.rflags = saved.rflags | X86.rflagsFixed
        state.regs.rip = saved.rip
        loadGPRs(saved.gprs)
        try setDR6(saved.dr6)
        try setDR7(saved.dr7)
        state.sregs.tr = saved.tr
        state.sregs.ldt = saved.ldtr
        state.sregs.gdt = saved.gdtr
        state.sregs.idt = saved.idtr
        loadSegments(saved.segments)
        try enterProtectedMode(cr0: saved.cr0, cr3: saved.cr3, cr4: saved.cr4)
    }

    /// `rsm_load_state_64`.
    mutating func loadState64(_ saved: DecodedSaveState) throws(RSMFailure) {
        loadGPRs(saved.gprs)
        state.regs.rip = saved.rip
        state.regs.rflags = saved.rflags | X86.rflagsFixed
        try setDR6(saved.dr6)
        try setDR7(saved.dr7)
        try setEFER((saved.efer ?? 0) & ~X86.EFER.lma)
        state.sregs.tr = saved.tr
        state.sregs.idt = saved.idtr
        state.sregs.ldt = saved.ldtr
        state.sregs.gdt = saved.gdtr
        try enterProtectedMode(cr0: saved.cr0, cr3: saved.cr3, cr4: saved.cr4)
        loadSegments(saved.segments)
    }

    /// `*reg_write(ctxt, i) = gprs[i]`: the 32-bit map writes EAX…EDI zero-extended and leaves R8–R15 alone.
    private mutating func loadGPRs(_ gprs: [UInt64]) {
        for (gpr, value) in zip(GPR.allCases, gprs) {
            state.regs[gpr] = value
        }
    }

    private mutating func loadSegments(_ segments: [kvm_segment]) {
        for (seg, value) in zip(SegmentRegister.allCases, segments) {
            state.sregs[keyPath: seg.keyPath] = value
        }
    }

    /// `rsm_enter_protected_mode`: CR3 (PCID bits stripped), CR4 without PCIDE, CR0, then PCIDE and the PCID.
    private mutating func enterProtectedMode(cr0 newCR0: UInt64, cr3 newCR3: UInt64, cr4 newCR4: UInt64)
        throws(RSMFailure)
    {
        // In order to later set CR4.PCIDE, CR3[11:0] must be zero.
        var cr3 = newCR3
        var pcid: UInt64 = 0
        if newCR4 & X86.CR4.pcide != 0 {
            pcid = cr3 & X86.cr3PCIDMask
            cr3 &= ~X86.cr3PCIDMask
        }
        try setCR3(cr3)
        try setCR4(newCR4 & ~X86.CR4.pcide)
        try setCR0(newCR0)
        if newCR4 & X86.CR4.pcide != 0 {
            try setCR4(newCR4)
            if pcid != 0 {
                try setCR3(cr3 | pcid)
            }
        }
    }

    // MARK: KVM's checked register writes

    /// `kvm_set_cr0` (`kvm_is_valid_cr0` and the mode-transition checks), then `vmx_set_cr0`'s long-mode switch.
    mutating func setCR0(_ value: UInt64) throws(RSMFailure) {
        func fail(_ reason: String) -> RSMFailure { RSMFailure(register: .cr0, value: value, reason: reason) }
        if value >> 32 != 0 { throw fail("bits 63:32 are reserved") }
        if value & X86.CR0.nw != 0 && value & X86.CR0.cd == 0 { throw fail("NW set without CD") }
        if value & X86.CR0.pg != 0 && value & X86.CR0.pe == 0 { throw fail("PG set without PE") }
        // CR0.ET is hardwired to 1 and writes to reserved bits are ignored.
        let new = (value | X86.CR0.et) & ~X86.CR0.reservedBits
        let enablesPaging = !isPaging && new & X86.CR0.pg != 0
        if efer & X86.EFER.lme != 0 && enablesPaging {
            if cr4 & X86.CR4.pae == 0 { throw fail("enabling long-mode paging requires CR4.PAE") }
            if state.sregs.cs.l != 0 { throw fail("enabling long-mode paging with CS.L set") }
        }
        if new & X86.CR0.pg == 0 && (is64BitMode || cr4 & X86.CR4.pcide != 0) {
            throw fail("clearing PG in 64-bit mode or with CR4.PCIDE")
        }
        let disablesPaging = isPaging && new & X86.CR0.pg == 0
        state.sregs.cr0 = new
        if efer & X86.EFER.lme != 0 {
            if enablesPaging { state.sregs.efer |= X86.EFER.lma }  // enter_lmode
            if disablesPaging { state.sregs.efer &= ~X86.EFER.lma }  // exit_lmode
        }
    }

    /// `kvm_set_cr4`.
    mutating func setCR4(_ value: UInt64) throws(RSMFailure) {
        func fail(_ reason: String) -> RSMFailure { RSMFailure(register: .cr4, value: value, reason: reason) }
        if value & X86.CR4.reservedBits != 0 { throw fail("reserved bits set") }
        if isLongMode {
            if value & X86.CR4.pae == 0 { throw fail("PAE cleared in long mode") }
            if (value ^ cr4) & X86.CR4.la57 != 0 { throw fail("LA57 changed in long mode") }
        }
        if value & X86.CR4.pcide != 0 && cr4 & X86.CR4.pcide == 0 {
            // PCID can not be enabled when cr3[11:0]!=000H or EFER.LMA=0.
            if state.sregs.cr3 & X86.cr3PCIDMask != 0 { throw fail("PCIDE set with CR3[11:0] nonzero") }
            if !isLongMode { throw fail("PCIDE set outside long mode") }
        }
        state.sregs.cr4 = value
    }

    /// `kvm_set_cr3` (`kvm_vcpu_is_legal_cr3` against the architectural MAXPHYADDR; LAM bits 61/62 accepted).
    mutating func setCR3(_ value: UInt64) throws(RSMFailure) {
        var cr3 = value
        if cr4 & X86.CR4.pcide != 0 {
            cr3 &= ~X86.cr3PCIDNoFlush
        }
        if (cr3 & ~X86.cr3LAMBits) >> X86.maxPhysicalAddressBits != 0 {
            throw RSMFailure(register: .cr3, value: value, reason: "bits above MAXPHYADDR set")
        }
        state.sregs.cr3 = cr3
    }

    /// `__kvm_emulate_msr_write(vcpu, MSR_EFER, …)` → `set_efer` for a guest-initiated write.
    mutating func setEFER(_ value: UInt64) throws(RSMFailure) {
        func fail(_ reason: String) -> RSMFailure { RSMFailure(register: .efer, value: value, reason: reason) }
        if value & X86.EFER.reservedBits != 0 { throw fail("reserved bits set") }
        if value & (X86.EFER.lme | X86.EFER.lma) != 0 && !longModeGuest {
            throw fail("LME/LMA without long mode in guest CPUID")
        }
        if isPaging && (efer ^ value) & X86.EFER.lme != 0 { throw fail("LME changed while paging") }
        // The written LMA bit is ignored: LMA follows CR0.PG.
        state.sregs.efer = (value & ~X86.EFER.lma) | (efer & X86.EFER.lma)
    }

    /// `kvm_set_dr(vcpu, 6, …)`: bits 63:32 must be 0; only `DR6_VOLATILE` bits are kept.
    mutating func setDR6(_ value: UInt64) throws(RSMFailure) {
        if value >> 32 != 0 { throw RSMFailure(register: .dr6, value: value, reason: "bits 63:32 are reserved") }
        state.dr6 = (value & X86.DR.dr6Volatile) | X86.DR.dr6ActiveLow
    }

    /// `kvm_set_dr(vcpu, 7, …)`: bits 63:32 must be 0; `DR7_VOLATILE` bits are kept and bit 10 is forced.
    mutating func setDR7(_ value: UInt64) throws(RSMFailure) {
        if value >> 32 != 0 { throw RSMFailure(register: .dr7, value: value, reason: "bits 63:32 are reserved") }
        state.dr7 = (value & X86.DR.dr7Volatile) | X86.DR.dr7Fixed1
    }
}
