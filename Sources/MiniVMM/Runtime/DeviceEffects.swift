// SPDX-License-Identifier: MIT
import Foundation
import GuestFirmware

/// Applying what device accesses ask for (lock held throughout): console bytes, the debug exit, APM SMIs, SMRAM
/// decode changes, the report channel and ejections. Report-channel events also reach the controller as events.
extension Machine {
    func apply(_ effects: [DeviceEffect], from cpu: CPUContext) {
        for e in effects {
            switch e {
            case .console(let b):
                if b == 0x0A {
                    console.text += console.line + "\n"
                    if config.console && !config.quiet { print("guest: \(console.line)") }
                    console.line = ""
                } else if b != 0x0D {
                    console.line.append(Character(UnicodeScalar(b)))
                    if let text = config.untilConsole, console.line.hasSuffix(text) {
                        finish(.completed, "the console printed \"\(text)\" (--until-console)")
                    }
                }
            case .debugExit(let status):
                end.guestExitStatus = status
                if end.guestFailure == nil && status == 1 {
                    finish(.completed, "firmware finished (isa-debug-exit status 1)")
                } else {
                    finish(.guestFailure, end.guestFailure ?? "firmware exited with isa-debug-exit status \(status)")
                }
            case .broadcastSMI:
                apmSMI(from: cpu)
            case .smramControlChanged(let c):
                applySMRAM(c)
            case .pamChanged(let p):
                applyPAM(p)
            case .systemResetRequest(let why):
                finish(.guestReset, "the guest requested a system reset (\(why)); minivmm does not model machine reset")
            case .report(let code, let arg):
                onReport(code: code, arg: arg)
            case .ejectCPU(let i):
                cpuEjected(i)
            case .ostStatus(let i, let event, let status):
                events.post(.ostStatus(cpu: i, event: event, status: status))
            case .ignored(let why):
                log.debug("ignored device access: \(why)")
            }
        }
    }

    /// Records a refused hot-add (capped: a firmware spamming refusals must not grow the report without bound).
    func noteRefusal(_ s: String) {
        if refusedHotAdds.count < 64 { refusedHotAdds.append(s) } else { droppedRefusals += 1 }
    }

    /// The firmware's report channel: progress marks and failures; the controller gets every report as an event.
    /// Nothing here feeds an invariant: the checks use only what the VMM observed.
    func onReport(code: UInt8, arg: UInt32) {
        firmwareReports.append("\(ReportCode.name(code)) \(arg)")
        if firmwareReports.count > 64 { firmwareReports.removeFirst() }
        switch Int32(code) {
        case REPORT_BOOT_START: mark("boot-start")
        case REPORT_APS_ONLINE:
            mark("aps-online")
            progress("\(arg) APs answered INIT-SIPI-SIPI; relocating SMBASE (strategy \(spec.letter))")
        case REPORT_RELOCATED:
            if (arg + 1) % 128 == 0 { progress("relocated \(arg + 1)/\(config.maxCPUs) CPUs") }
        case REPORT_SMRAM_LOCKED: mark("smram-locked")
        case REPORT_BOOT_DONE: mark("boot-done")
        case REPORT_HOTADD_DONE:
            hotAddsInFlight.remove(Int(arg))
        case REPORT_HOTADD_REFUSED:
            hotAddsInFlight.remove(Int(arg))
            noteRefusal("firmware refused hot-add of CPU \(arg)")
        case REPORT_SMRAM_PROBE:
            smramProbeSawAllOnes = arg == 1
        case REPORT_FAIL:
            let reason = arg & 0xFF
            end.guestFailure = "firmware reported failure \(ReportCode.failureName(reason)) (detail \(arg >> 8))"
        default: break
        }
        events.post(.firmwareReport(code: code, arg: arg))
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
        case REPORT_ATTACK: "ATTACK"
        case REPORT_ATTACK_DMA: "ATTACK_DMA"
        case REPORT_SMBASE_PROGRAMMED: "SMBASE_PROGRAMMED"
        case REPORT_DEFAULT_SMRAM_LOCKED: "DEFAULT_SMRAM_LOCKED"
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
        case MINIVMM_FAIL_BAD_STRATEGY: "BAD_STRATEGY"
        case MINIVMM_FAIL_BAD_ATTACK: "BAD_ATTACK"
        case MINIVMM_FAIL_BAD_BOOT_CPUS: "BAD_BOOT_CPUS"
        case MINIVMM_FAIL_NO_DEFAULT_SMRAM: "NO_DEFAULT_SMRAM"
        case MINIVMM_FAIL_SMM_REQUEST: "SMM_REQUEST"
        default: "reason-\(r)"
        }
    }
}
