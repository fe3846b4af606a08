// SPDX-License-Identifier: MIT
import KVMBridge

/// The run state of one guest CPU as the VMM models it (KVM's mp_state plus hotplug).
public enum CPURunState: String, Codable, Sendable {
    /// Wait-for-SIPI after RESET or INIT (KVM_MP_STATE_INIT_RECEIVED): holds SMIs pending.
    case waitForSIPI = "wait-for-sipi"
    case running
    /// After HLT: wakes on an SMI, INIT or an injectable interrupt.
    case halted
    /// Ejected through the hotplug block: kept, not reset (QEMU parks the vCPU).
    case unplugged
    /// Stopped after a triple fault or when the machine ended.
    case stopped
}

/// One guest CPU: its KVM vCPU (normal view), the SMRAM-view vCPU the emulated backend runs SMM on, the
/// userspace local APIC, and the VMM-side architectural state KVM cannot hold here (SMBASE, SMM flag,
/// latched events). Fields marked "lock" are guarded by the machine lock; the rest belong to the CPU's thread.
final class CPUContext: @unchecked Sendable {
    let index: Int
    let vcpu: VCPU
    let apic: LocalAPIC
    let wake = Condition()
    /// lazily created vCPU of the SMRAM view (emulated backend).
    var smmVCPU: VCPU?

    // lock
    var state: CPURunState
    var present: Bool
    /// The internal SMBASE register (SDM 34.11): RESET sets 0x30000, INIT keeps it, RSM loads it from the map.
    var smbase: UInt32 = 0x30000
    var inSMM = false
    var pendingSMI = false
    var latchedINIT = false
    var pendingSIPI: UInt8?
    /// A RESET requested by hot-add with --hotplug-reset, applied by the CPU's own thread.
    var pendingReset = false
    /// The KVM vCPU currently inside KVM_RUN (to kick it).
    var inKVMRun: VCPU?
    var observation: CPUObservation

    // CPU thread
    /// The last exit was I/O, MMIO or MSR: KVM completes it on the next KVM_RUN, which must happen before
    /// the VMM replaces register state (KVM loads dirty sync regs before it completes user-space I/O).
    var needsCompletion = false
    var smm: SMMSession?
    /// kvm backend: KVM's MSR_SMI_COUNT at the last observation (`nil` where KVM does not report it).
    var kvmSMICount: UInt64?
    /// kvm backend (lock): hotplug work the CPU's own thread does on its vCPU (vCPU ioctls from other threads
    /// would wait for its KVM_RUN): record the SMBASE at eject, put the vCPU in wait-for-SIPI at hot-add.
    var kvmParkPending = false
    var kvmHotAddPending = false
    /// DR6/DR7 of the normal-view vCPU as the VMM last read or wrote them (read once at creation; INIT, RESET
    /// and RSM are the only writers the VMM performs). kvm_sync_regs carries no debug registers, so tracking
    /// them keeps an SMI round trip free of ioctls beyond KVM_RUN. A guest MOV to DR6/DR7 outside SMM is not
    /// seen: the map would then hold the older value (the register itself is never overwritten with it).
    var debugRegs: (dr6: UInt64, dr7: UInt64) = (0xFFFF_0FF0, 0x400)
    var exitCount = 0
    var extraIoctls = 0

    init(index: Int, vcpu: VCPU, isBSP: Bool) {
        self.index = index
        self.vcpu = vcpu
        self.apic = LocalAPIC(apicID: UInt32(index), isBSP: isBSP)
        self.state = isBSP ? .running : .waitForSIPI
        self.present = true
        self.observation = CPUObservation(apicID: index)
    }

    /// The phase an RSM is recorded in: that of the SMI entry it ends (lock). The phase when the VMM sees the RSM
    /// itself races with the firmware: a handler may signal completion before its RSM, and the scenario can move
    /// on in between.
    func sessionPhase(default p: Phase) -> Phase { observation.smiEntries.last?.phase ?? p }

    /// The last exits, for timeout and failure dumps: a fixed ring of raw records written only by this CPU's
    /// thread (no lock, no formatting on the exit path) and read when the report is built.
    private var exitRing = [ExitRecord?](repeating: nil, count: 12)
    private var exitRingNext = 0

    func remember(_ r: ExitRecord) {
        exitRing[exitRingNext] = r
        exitRingNext = (exitRingNext + 1) % exitRing.count
    }

    /// The remembered exits, oldest first, formatted.
    var lastExits: [String] {
        (0..<exitRing.count).compactMap { exitRing[(exitRingNext + $0) % exitRing.count]?.description }
    }
}

/// One exit as remembered for dumps. The decoded exit's data buffers are never read again; `summary` uses only
/// the port, address and length fields.
struct ExitRecord: CustomStringConvertible {
    let exit: VCPUExit
    let inSMM: Bool
    let cs: UInt16
    let rip: UInt64

    var description: String {
        "\(inSMM ? "smm " : "")\(exit.summary) @\(String(cs, radix: 16)):\(String(rip, radix: 16))"
    }
}

/// What the emulated backend keeps while a CPU is in SMM.
struct SMMSession {
    var format: SaveStateFormat
    var insideNMI: Bool
    var dr6: UInt64
    var dr7: UInt64
}
