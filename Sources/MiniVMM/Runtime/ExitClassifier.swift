// SPDX-License-Identifier: MIT
import KVMBridge

/// What the VMM must do about a `KVM_RUN` exit (Firecracker's `handle_kvm_exit`): a pure function of the
/// exit and a little vCPU context, tested without KVM.
enum ExitAction: Equatable {
    case portIn, portOut, mmioRead, mmioWrite, msrRead, msrWrite
    /// HLT outside or inside SMM.
    case halt
    /// Nothing to do (kick, interrupt window).
    case resume
    /// Emulated SMM: the vCPU fetched from the trap IVT target of `vector` (an exception in SMM).
    case smmTrap(vector: UInt8)
    /// Emulated SMM: the single-stepped SMRAM-view vCPU reached an instruction boundary.
    case smmStep
    /// The CPU is dead: a triple fault (KVM_EXIT_SHUTDOWN).
    case tripleFault(String)
    /// KVM could not continue this vCPU.
    case fatal(String)
}

enum ExitClassifier {
    /// Classifies an exit. `inSMM`, `csBase` and `rip` describe the vCPU that exited (from synced registers).
    static func classify(_ exit: VCPUExit, inSMM: Bool, csBase: UInt64, rip: UInt64) -> ExitAction {
        switch exit {
        case .ioIn: return .portIn
        case .ioOut: return .portOut
        case .mmioRead: return .mmioRead
        case .mmioWrite: return .mmioWrite
        case .rdmsr: return .msrRead
        case .wrmsr: return .msrWrite
        case .hlt: return .halt
        case .interrupted, .irqWindowOpen: return .resume
        case .shutdown: return .tripleFault("KVM_EXIT_SHUTDOWN (triple fault)")
        case .internalError(let sub, _):
            // Instruction fetch from the unmapped trap targets fails emulation with RIP = vector.
            if inSMM && csBase == Layout.smmTrapBase && rip < 256 { return .smmTrap(vector: UInt8(rip)) }
            return .fatal(
                "KVM_EXIT_INTERNAL_ERROR suberror \(sub) at CS base 0x\(String(csBase, radix: 16)) RIP 0x\(String(rip, radix: 16))"
            )
        case .debug where inSMM: return .smmStep
        case .debug(let e, let pc, _, _): return .fatal("unexpected KVM_EXIT_DEBUG #\(e) at 0x\(String(pc, radix: 16))")
        case .failEntry(let r, _): return .fatal("KVM_EXIT_FAIL_ENTRY reason 0x\(String(r, radix: 16))")
        case .systemEvent(let t): return .fatal("KVM_EXIT_SYSTEM_EVENT \(t)")
        case .unknown(let r): return .fatal("unknown exit reason \(r)")
        case .malformedIO: return .fatal("KVM_EXIT_IO with \(exit.summary)")
        }
    }

    /// Whether the bytes at a real-mode CS:IP are RSM (0F AA), allowing legacy prefixes before it.
    static func isRSM(_ bytes: [UInt8]) -> Bool {
        var i = 0
        while i < bytes.count, [0x66, 0x67, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF2, 0xF3].contains(bytes[i]) {
            i += 1
        }
        return i + 1 < bytes.count && bytes[i] == 0x0F && bytes[i + 1] == 0xAA
    }
}
