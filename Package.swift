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
