// SPDX-License-Identifier: MIT
import Foundation
import GuestFirmware

/// The hotplug scenario the VMM drives from the firmware's reports (lock held throughout): after boot it
/// requests removal of every CPU above --boot-cpus, and once they are ejected it hot-adds the --hot-add CPUs
/// (INIT-only by default; RESET with --hotplug-reset, as QEMU does), then tells the firmware to finish.
extension Machine {
    func apply(_ effects: [DeviceEffect], from cpu: CPUContext) {
        for e in effects {
            switch e {
            case .console(let b):
                if b == 0x0A {
                    consoleText += consoleLine + "\n"
                    if config.console && !config.quiet { print("guest: \(consoleLine)") }
                    consoleLine = ""
                } else if b != 0x0D {
                    consoleLine.append(Character(UnicodeScalar(b)))
                }
            case .debugExit(let status):
                guestExitStatus = status
                if guestFailure == nil && status == 1 {
                    finish(.completed, "firmware finished (isa-debug-exit status 1)")
                } else {
                    finish(.guestFailure, guestFailure ?? "firmware exited with isa-debug-exit status \(status)")
                }
            case .broadcastSMI:
                apmSMI(from: cpu)
            case .smramControlChanged(let c):
                applySMRAM(c)
            case .report(let code, let arg):
                onReport(code: code, arg: arg)
            case .ejectCPU(let i):
                unplug(i)
            case .ignored(let why):
                log.debug("ignored device access: \(why)")
            }
        }
    }

    func mark(_ name: String) {
        if marks[name] == nil { marks[name] = monotonicSeconds() - startTime }
    }

    func onReport(code: UInt8, arg: UInt32) {
        firmwareReports.append("\(ReportCode.name(code)) \(arg)")
        if firmwareReports.count > 64 { firmwareReports.removeFirst() }
        switch Int32(code) {
        case REPORT_BOOT_START: mark("boot-start")
        case REPORT_APS_ONLINE:
            mark("aps-online")
            progress("\(arg) APs answered INIT-SIPI-SIPI; relocating \(config.maxCPUs) CPUs at 3000:8000")
        case REPORT_RELOCATED:
            relocatedClaims += 1
            if relocatedClaims % 128 == 0 { progress("relocated \(relocatedClaims)/\(config.maxCPUs) CPUs") }
        case REPORT_SMRAM_LOCKED: mark("smram-locked")
        case REPORT_BOOT_DONE:
            mark("boot-done")
            phase = .hotRemove
            toRemove = Set(config.bootCPUs..<config.maxCPUs)
            progress("boot done; hot-removing \(toRemove.count) CPUs")
            for i in toRemove.sorted() { _ = hotplug.requestUnplug(cpu: i) }
            if toRemove.isEmpty { startHotAdd() } else { raiseSCI() }
        case REPORT_HOTADD_DONE:
            hotAddDone.insert(Int(arg))
            if hotAddDone.isSuperset(of: hotAddPending) { finishScenario() }
        case REPORT_HOTADD_REFUSED:
            refusedHotAdds.append("firmware refused hot-add of CPU \(arg)")
        case REPORT_FAIL:
            let reason = arg & 0xFF
            guestFailure = "firmware reported failure \(ReportCode.failureName(reason)) (detail \(arg >> 8))"
        default: break
        }
    }

    /// Eject from the hotplug block: the vCPU is parked, not reset (QEMU `kvm_park_vcpu`).
    func unplug(_ i: Int) {
        guard i < cpus.count else { return }
        let c = cpus[i]
        c.present = false
        c.state = .unplugged
        c.pendingSIPI = nil  // a parked vCPU keeps no APIC events
        c.inKVMRun?.kick()
        if backend == .kvm {
            c.kvmParkPending = true  // its own thread reads the SMBASE KVM holds
            c.wake.signal()
        } else {
            c.observation.smbaseAtEject = c.smbase
        }
        removed.insert(i)
        if phase == .hotRemove && removed.isSuperset(of: toRemove) {
            mark("hot-remove-done")
            startHotAdd()
        }
    }

    func startHotAdd() {
        phase = .hotAdd
        if config.hotAdd.isEmpty {
            finishScenario()
            return
        }
        if let refusal = smiFeatures.hotplugRefusal {
            // QEMU refuses device_add when firmware negotiated SMI broadcast without CPU hotplug SMIs.
            refusedHotAdds.append(refusal)
            finishScenario()
            return
        }
        progress(
            "hot-adding CPUs \(config.hotAdd.map(String.init).joined(separator: ", "))\(config.hotplugReset ? " with RESET" : " (INIT only)")"
        )
        for i in config.hotAdd {
            let c = cpus[i]
            c.observation.hotAdded = true
            c.present = true
            // kvm backend: KVM's mp_state is the CPU's state; the thread only runs it.
            c.state = backend == .kvm ? .running : .waitForSIPI
            c.pendingSIPI = nil
            if config.hotplugReset {
                c.pendingReset = true
                c.pendingSMI = false
                c.latchedINIT = false
            } else {
                if backend == .kvm {
                    c.kvmHotAddPending = true  // its own thread: KVM_SET_MP_STATE, then the SMBASE KVM holds
                } else {
                    c.observation.smbaseAtHotAdd = c.smbase
                    c.observation.smbaseHistory.append(SMBASEEvent(cause: .hotAdd, phase: .hotAdd, smbase: c.smbase))
                }
            }
            _ = hotplug.plug(cpu: i)
            hotAddPending.insert(i)
            c.wake.signal()
        }
        raiseSCI()
    }

    func finishScenario() {
        mark("hot-add-done")
        phase = .finish
        reportPort.command = UInt32(MINIVMM_CMD_FINISH)
        raiseSCI()
    }
}

/// Names for the report channel's codes (from the contract header).
enum ReportCode {
    static func name(_ c: UInt8) -> String {
        switch Int32(c) {
        case REPORT_BOOT_START: "BOOT_START"
        case REPORT_FWCFG_OK: "FWCFG_OK"
        case REPORT_SMI_NEGOTIATED: "SMI_NEGOTIATED"
        case REPORT_TSEG_READY: "TSEG_READY"
        case REPORT_APS_ONLINE: "APS_ONLINE"
        case REPORT_RELOCATED: "RELOCATED"
        case REPORT_SMRAM_LOCKED: "SMRAM_LOCKED"
        case REPORT_BOOT_DONE: "BOOT_DONE"
        case REPORT_EJECTED: "EJECTED"
        case REPORT_HOTADD_START: "HOTADD_START"
        case REPORT_HOTADD_DONE: "HOTADD_DONE"
        case REPORT_OS_IDLE: "OS_IDLE"
        case REPORT_HOTADD_REFUSED: "HOTADD_REFUSED"
        case REPORT_SMRAM_PROBE: "SMRAM_PROBE"
        case REPORT_FAIL: "FAIL"
        default: "code-\(c)"
        }
    }

    static func failureName(_ r: UInt32) -> String {
        switch Int32(r) {
        case MINIVMM_FAIL_FWCFG_SIGNATURE: "FWCFG_SIGNATURE"
        case MINIVMM_FAIL_SMI_NEGOTIATION: "SMI_NEGOTIATION"
        case MINIVMM_FAIL_NO_FILE: "NO_FILE"
        case MINIVMM_FAIL_TSEG_TOO_SMALL: "TSEG_TOO_SMALL"
        case MINIVMM_FAIL_AP_TIMEOUT: "AP_TIMEOUT"
        case MINIVMM_FAIL_RELOC_TIMEOUT: "RELOC_TIMEOUT"
        case MINIVMM_FAIL_HOTADD_TIMEOUT: "HOTADD_TIMEOUT"
        case MINIVMM_FAIL_EXCEPTION: "EXCEPTION"
        case MINIVMM_FAIL_TOO_MANY_CPUS: "TOO_MANY_CPUS"
        default: "reason-\(r)"
        }
    }
}
