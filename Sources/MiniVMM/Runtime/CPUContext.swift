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

/// Hotplug work a CPU's own thread performs on its vCPU (vCPU ioctls from other threads would wait for its
/// KVM_RUN), before it runs again.
enum HotplugWork: Equatable {
    /// Ejected: record the SMBASE the CPU holds (QEMU `kvm_park_vcpu` keeps the vCPU as it is).
    case park
    /// Hot-added: what the strategy does to the CPU, and for strategy B the SMBASE register's value at plug time.
    /// `fresh`: the vCPU was created by this hot-add (the CPU never existed), so it is in its power-on state already.
    case hotAdd(HotAddAction, smbaseRegister: UInt32?, fresh: Bool)

    /// Whether the work replaces register state (and so must wait until KVM completed the last exit).
    var replacesRegisters: Bool {
        if case .hotAdd(let a, _, let fresh) = self { return a != .keepState && !fresh }
        return false
    }
}

/// One guest CPU: its KVM vCPU (normal view), the userspace local APIC (emulated backend), and the VMM-side state of
/// the CPU that both backends share. What only one backend needs lives in that backend. Fields marked "lock" are
/// guarded by the machine lock; the rest belong to the CPU's thread.
final class CPUContext: @unchecked Sendable {
    let index: Int
    /// The KVM vCPU, created at machine start for CPUs present at boot and at hot-add for the others, as QEMU
    /// creates a vCPU on `device_add` (set once, before the CPU's thread starts).
    private(set) var vcpu: VCPU!
    let apic: LocalAPIC
    let wake = Condition()

    // lock
    var state: CPURunState
    var present: Bool
    /// The CPU's SMBASE as the VMM knows it: the emulated backend's internal SMBASE register (SDM 34.11: RESET
    /// sets 0x30000, INIT keeps it, RSM loads it from the map); on the kvm backend the last MSR 0x9E read.
    var smbase = UInt32(Layout.defaultSMBASE)
    /// In SMM as far as the VMM has performed (emulated) or observed (kvm) it.
    var inSMM = false
    var pendingSMI = false
    /// An NMI the userspace local APIC accepted and the VMM has not queued yet (emulated backend): queued with
    /// `KVM_NMI` on the vCPU that runs the CPU next, where KVM delivers it once NMIs are unblocked. In SMM that is
    /// the SMRAM-view vCPU, whose NMIs SMI entry blocked (KVM `enter_smm`: `set_nmi_mask(true)`): an IRET there
    /// unblocks them (SDM 34.8), and RSM moves a still-pending NMI and the mask back to the normal-view vCPU.
    var pendingNMI = false
    var latchedINIT = false
    var pendingSIPI: UInt8?
    /// Hotplug work not yet done by the CPU's thread, oldest first (an eject's park may still be pending when the
    /// CPU is plugged again).
    var hotplugWork: [HotplugWork] = []
    /// The host thread ID of the CPU's thread once it runs (QMP `query-cpus-fast` `thread-id`).
    var threadID: Int32 = 0
    /// The KVM vCPU currently inside KVM_RUN (to kick it).
    var inKVMRun: VCPU?
    /// KVM_RUNs of guest code started so far (the kvm backend waits at a phase change until it has looked at KVM's
    /// state after the latest one).
    var runSerial = 0
    var observation: CPUObservation

    // CPU thread
    /// The last exit was I/O, MMIO or MSR: KVM completes it on the next KVM_RUN, which must happen before
    /// the VMM replaces register state (KVM loads dirty sync regs before it completes user-space I/O).
    var needsCompletion = false
    var exitCount = 0
    var extraIoctls = 0

    init(index: Int, vcpu: VCPU?, present: Bool) {
        self.index = index
        self.vcpu = vcpu
        self.apic = LocalAPIC(apicID: UInt32(index), isBSP: index == 0)
        self.state = !present ? .unplugged : index == 0 ? .running : .waitForSIPI
        self.present = present
        self.observation = CPUObservation(apicID: index)
    }

    var isBSP: Bool { index == 0 }

    /// Whether a KVM vCPU exists for this CPU yet.
    var exists: Bool { vcpu != nil }

    /// Gives a CPU that did not exist its vCPU (lock held, before its thread starts).
    func attach(_ v: VCPU) {
        precondition(vcpu == nil, "a CPU gets its vCPU once")
        vcpu = v
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
