// SPDX-License-Identifier: MIT
import Testing

@testable import MiniVMM

/// The emulated CPU model's INIT/SIPI/SMI latching (`CPUEventModel`) against KVM's (reference/kvm-smm.md §4, §8),
/// step by step as the CPU's thread would take them.
@Suite("CPU event model")
struct CPUEventModelTests {
    /// An AP as at boot: present, waiting for SIPI.
    static func ap() -> CPUContext { CPUContext(index: 1, vcpu: nil, present: true) }

    /// Takes model steps as the backend would (INIT and SIPI change the run state, an SMI entry enters SMM) until
    /// the CPU runs guest code or waits; returns the steps taken.
    static func steps(_ cpu: CPUContext, interruptsEnabled: Bool = false, limit: Int = 8) -> [String] {
        var out: [String] = []
        for _ in 0..<limit {
            switch CPUEventModel.decide(cpu, interruptsEnabled: interruptsEnabled) {
            case .wait, .waitAtMost:
                out.append("wait")
                return out
            case .step(.run):
                out.append("run")
                return out
            case .step(.model(.initSignal)):
                out.append("INIT")
                CPUEventModel.didINIT(cpu)
            case .step(.model(.sipi(let v))):
                out.append("SIPI \(v)")
                CPUEventModel.didSIPI(cpu)
            case .step(.model(.deliverSMI)):
                out.append("SMI")
                cpu.inSMM = true
            case .step(let s):
                out.append("\(s)")
                return out
            }
        }
        return out
    }

    @Test("a CPU waiting for SIPI holds an SMI; several merge into one, taken at the SIPI before the first instruction")
    func smiHeldUntilSIPI() {
        let c = Self.ap()
        c.pendingSMI = true
        #expect(Self.steps(c) == ["wait"])
        c.pendingSMI = true  // a second broadcast while waiting: the same latch
        #expect(Self.steps(c) == ["wait"])
        #expect(c.pendingSMI)
        c.pendingSIPI = 0x08
        #expect(Self.steps(c) == ["SIPI 8", "SMI", "run"])
        #expect(!c.pendingSMI)
    }

    @Test("a halted CPU wakes on an NMI outside SMM unless NMIs are blocked; in SMM the NMI waits for RSM")
    func nmiWakesHalt() {
        let c = Self.ap()
        c.state = .halted
        c.pendingNMI = true
        #expect(CPUEventModel.decide(c, interruptsEnabled: false, nmiBlocked: true) == .wait)
        c.inSMM = true
        #expect(CPUEventModel.decide(c, interruptsEnabled: false, nmiBlocked: false) == .wait)
        #expect(c.state == .halted)
        c.inSMM = false
        #expect(CPUEventModel.decide(c, interruptsEnabled: false, nmiBlocked: false) == .step(.run))
        #expect(c.state == .running)
        #expect(c.pendingNMI, "the run loop queues it with KVM_NMI")
    }

    @Test("the held SMI survives the INIT of INIT-SIPI-SIPI; the second SIPI is dropped")
    func smiSurvivesINIT() {
        let c = Self.ap()
        c.pendingSMI = true
        c.latchedINIT = true
        #expect(Self.steps(c) == ["INIT", "wait"])
        #expect(c.pendingSMI && c.state == .waitForSIPI)
        c.pendingSIPI = 0x09
        #expect(Self.steps(c) == ["SIPI 9", "SMI", "run"])
        c.pendingSIPI = 0x09  // second SIPI: the CPU runs (here in SMM), so it is dropped
        #expect(Self.steps(c) == ["run"])
        #expect(c.pendingSIPI == nil && c.inSMM)
    }

    @Test("INIT and SIPI arriving together with the SMI: INIT first, then SIPI, then the SMI")
    func initSIPISMITogether() {
        let c = Self.ap()
        c.pendingSMI = true
        c.latchedINIT = true
        c.pendingSIPI = 0x10
        #expect(Self.steps(c) == ["INIT", "SIPI 16", "SMI", "run"])
    }

    @Test("a halted CPU keeps an SMI across INIT (KVM's vcpu_block never turns the request into smi_pending)")
    func haltedAPKeepsSMIAcrossINIT() {
        let c = Self.ap()
        c.state = .halted
        c.pendingSMI = true
        c.latchedINIT = true
        #expect(Self.steps(c) == ["INIT", "wait"])
        #expect(c.pendingSMI && c.state == .waitForSIPI)
    }

    @Test("a running CPU's SMI pending together with an INIT is lost (vcpu_enter_guest, then kvm_vcpu_reset)")
    func runningCPULosesSMIToINIT() {
        let c = Self.ap()
        c.state = .running
        c.pendingSMI = true
        c.latchedINIT = true
        #expect(Self.steps(c) == ["INIT", "wait"])
        #expect(!c.pendingSMI)
        c.pendingSIPI = 0x08
        #expect(Self.steps(c) == ["SIPI 8", "run"])
    }

    @Test("in SMM: an SMI and an INIT are held until RSM, where the INIT wins; a SIPI is dropped")
    func heldInSMM() {
        let c = Self.ap()
        c.state = .running
        c.inSMM = true
        c.pendingSMI = true
        c.latchedINIT = true
        c.pendingSIPI = 0x08
        #expect(Self.steps(c) == ["run"])
        #expect(c.pendingSIPI == nil, "a SIPI in SMM is dropped")
        #expect(c.pendingSMI && c.latchedINIT, "both held while in SMM")
        c.inSMM = false  // RSM
        #expect(Self.steps(c) == ["INIT", "wait"])
        #expect(!c.pendingSMI)
    }

    @Test("an SMI raised in SMM is taken right after RSM")
    func smiAfterRSM() {
        let c = Self.ap()
        c.state = .running
        c.inSMM = true
        c.pendingSMI = true
        #expect(Self.steps(c) == ["run"])
        c.inSMM = false
        #expect(Self.steps(c) == ["SMI", "run"])
    }

    @Test("the BSP restarts after INIT and then takes a held SMI at the reset vector")
    func bspINIT() {
        let c = CPUContext(index: 0, vcpu: nil, present: true)
        c.state = .halted
        c.pendingSMI = true
        c.latchedINIT = true
        #expect(Self.steps(c) == ["INIT", "SMI", "run"])
    }

    @Test("a SIPI that reaches a CPU in SMM is dropped: after RSM the latched INIT leaves it waiting for SIPI")
    func sipiInSMMIsDropped() {
        let c = Self.ap()
        c.state = .running
        c.inSMM = true
        // The OS's INIT-SIPI while the CPU handles an SMI (the os-ipis attack before a hot-add), then its RSM.
        c.latchedINIT = true
        CPUEventModel.acceptSIPI(c, vector: 0x08)
        #expect(c.pendingSIPI == nil)
        c.inSMM = false
        #expect(Self.steps(c) == ["INIT", "wait"])
        CPUEventModel.acceptSIPI(c, vector: 0x08)  // the OS's re-sent SIPI
        #expect(Self.steps(c) == ["SIPI 8", "run"])
    }
}
