// swift-tools-version:6.1
// SPDX-License-Identifier: MIT
import PackageDescription

let package = Package(
    name: "minivmm",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "minivmm", targets: ["minivmm"]),
        .library(name: "KVMBridge", targets: ["KVMBridge"]),
        .library(name: "MiniVMM", targets: ["MiniVMM"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // C shim over <linux/kvm.h>: ioctl numbers as static const, non-variadic wrappers, layout asserts.
        .target(name: "CKVM", path: "Sources/CKVM"),
        // Typed Swift API over /dev/kvm: one type per kernel fd class.
        .target(name: "KVMBridge", dependencies: ["CKVM"], path: "Sources/KVMBridge"),
        // The guest firmware: assembly assembled by SwiftPM's clang, plus the firmware <-> VMM contract header.
        .target(name: "GuestFirmware", path: "guest"),
        // The embedded firmware image and the contract as Swift.
        .target(name: "Firmware", dependencies: ["GuestFirmware"], path: "Sources/Firmware"),
        // Machine, devices, local APIC, SMM backends, hotplug, scheduler, report, CLI.
        .target(
            name: "MiniVMM",
            dependencies: [
                "KVMBridge", "Firmware", "CKVM",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/MiniVMM"
        ),
        .executableTarget(name: "minivmm", dependencies: ["MiniVMM"], path: "Sources/minivmm"),
        .testTarget(name: "KVMBridgeTests", dependencies: ["KVMBridge", "CKVM"], path: "Tests/KVMBridgeTests"),
        .testTarget(
            name: "MiniVMMTests", dependencies: ["MiniVMM", "KVMBridge", "Firmware", "CKVM"],
            path: "Tests/MiniVMMTests"),
        .testTarget(
            name: "IntegrationTests", dependencies: ["MiniVMM", "KVMBridge", "Firmware", "CKVM"],
            path: "Tests/IntegrationTests"),
    ],
    swiftLanguageModes: [.v6]
)

// libFuzzer targets (Fuzz/README.md), declared only when MINIVMM_FUZZ=1 so that a plain `swift build` or `swift test`
// never sees them. scripts/fuzz.sh builds them with -sanitize=fuzzer,address in its own scratch path. Each target is
// one file whose top-level code hands its `LLVMFuzzerTestOneInput` to libFuzzer's driver (SwiftPM gives every
// executable a main of its own, so libFuzzer's main is not used).
if Context.environment["MINIVMM_FUZZ"] == "1" {
    package.targets.append(.target(name: "CFuzzer", path: "Fuzz/Sources/CFuzzer"))
    package.targets.append(
        .target(
            name: "FuzzSupport", dependencies: ["CFuzzer", "MiniVMM", "KVMBridge", "CKVM"],
            path: "Fuzz/Sources/FuzzSupport"))
    for name in ["fwcfg", "hotplug", "q35", "apic", "portbus", "smm", "exit", "report"] {
        package.targets.append(
            .executableTarget(
                name: "fuzz-\(name)", dependencies: ["FuzzSupport", "MiniVMM", "KVMBridge", "CKVM", "GuestFirmware"],
                path: "Fuzz/Sources/fuzz-\(name)"))
    }
}
