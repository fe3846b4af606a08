// SPDX-License-Identifier: MIT
import ArgumentParser
import Foundation
import KVMBridge

/// `minivmm caps`: what this host's KVM offers and which SMM backend `--smm auto` picks, and why.
struct CapsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "caps",
        abstract: "Show what this host's KVM offers and which SMM backend --smm auto picks")

    @Flag(help: "Print one JSON object (sorted keys) instead of text.")
    var json = false

    func run() throws {
        // Like `run`: a host that cannot open /dev/kvm is status 3 with one line.
        let kvm: KVM
        do { kvm = try KVM() } catch { throw MachineError.kvm(error.description) }
        let report = try CapsReport(kvm: kvm)
        print(json ? try report.jsonText() : report.text())
    }
}

/// The facts `minivmm caps` prints; its JSON form is `--json`'s output.
struct CapsReport: Codable, Equatable {
    /// `KVM_GET_API_VERSION`.
    var apiVersion: Int
    /// `KVM_CAP_MAX_VCPUS` (or its documented fallback).
    var maxVCPUs: Int
    /// `KVM_CAP_NR_VCPUS` (or its documented fallback, 4).
    var recommendedVCPUs: Int
    /// `KVM_GET_VCPU_MMAP_SIZE` in bytes.
    var vcpuMmapSize: Int
    /// Every capability in `Capability.allCases` by kernel name: 0 = absent, else KVM's integer answer.
    var capabilities: [String: Int]
    /// What `--smm auto` picks: `kvm`, `emulated`, or `none` when neither works.
    var backend: String
    /// Why (for `none`, the error `minivmm run` would print).
    var reason: String

    init(kvm: KVM) throws {
        let caps = try BackendChoice.probeCapabilities(kvm)
        self.init(
            apiVersion: Int(try kvm.apiVersion()), maxVCPUs: kvm.maxVCPUs(), recommendedVCPUs: kvm.recommendedVCPUs(),
            vcpuMmapSize: try kvm.vcpuMmapSize(), capabilities: caps)
    }

    init(apiVersion: Int, maxVCPUs: Int, recommendedVCPUs: Int, vcpuMmapSize: Int, capabilities caps: [Capability: Int])
    {
        self.apiVersion = apiVersion
        self.maxVCPUs = maxVCPUs
        self.recommendedVCPUs = recommendedVCPUs
        self.vcpuMmapSize = vcpuMmapSize
        self.capabilities = Dictionary(
            uniqueKeysWithValues: Capability.allCases.map { ($0.kernelName, caps[$0] ?? 0) })
        do {
            let choice = try BackendChoice.choose(requested: .auto, capabilities: caps)
            self.backend = choice.kind.rawValue
            self.reason = choice.reason
        } catch {
            self.backend = "none"
            self.reason = error.description
        }
    }

    /// Capabilities whose `KVM_CHECK_EXTENSION` answer is a count or bitmap rather than yes/no.
    static let intValued: Set<Capability> = [
        .maxVCPUs, .recommendedVCPUs, .syncRegisters, .multiAddressSpace, .guestDebugHardwareBreakpoints, .maxVCPUID,
    ]

    /// How one capability's answer reads in the text output: `no`, `yes`, a count, or the sync-regs bitmap in hex.
    static func render(_ cap: Capability, _ value: Int) -> String {
        if value <= 0 { return "no" }
        if cap == .syncRegisters {
            let names = [(1, "regs"), (2, "sregs"), (4, "events")].filter { value & $0.0 != 0 }.map(\.1)
            return "0x\(String(value, radix: 16))" + (names.isEmpty ? "" : " (\(names.joined(separator: "|")))")
        }
        return intValued.contains(cap) ? String(value) : "yes"
    }

    func text() -> String {
        var lines = [
            "KVM API version: \(apiVersion)",
            "max vCPUs: \(maxVCPUs)",
            "recommended vCPUs: \(recommendedVCPUs)",
            "vCPU mmap size: \(vcpuMmapSize) bytes",
            "capabilities:",
        ]
        for cap in Capability.allCases {
            lines.append("  \(cap.kernelName): \(Self.render(cap, capabilities[cap.kernelName] ?? 0))")
        }
        lines.append("SMM backend (--smm auto): \(backend)")
        lines.append("  because \(reason)")
        return lines.joined(separator: "\n")
    }

    func jsonText() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
}
