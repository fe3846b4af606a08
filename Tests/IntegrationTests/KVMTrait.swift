// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge
import Testing

extension Trait where Self == ConditionTrait {
    /// Runs the suite only where /dev/kvm opens; `CI=true` forces it (so a CI host without KVM fails, not skips).
    static var needsKVM: Self {
        .enabled(
            if: ProcessInfo.processInfo.environment["CI"] == "true" || KVM.isAvailable,
            "needs an openable /dev/kvm (run as root or in the kvm group); CI=true forces these tests")
    }
}
