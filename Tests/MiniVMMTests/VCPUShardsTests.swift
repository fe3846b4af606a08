// SPDX-License-Identifier: MIT
import Testing

@testable import MiniVMM

/// The emulated backend's spread of vCPUs over KVM VMs (`VCPUShards`): pure arithmetic, no KVM.
struct VCPUShardsTests {
    @Test func oneVMWhenTheCPUsFit() {
        let s = VCPUShards(cpus: 1024, perVM: 1024)
        #expect(s.vmCount == 1)
        #expect(s.location(of: 0) == (0, 0))
        #expect(s.location(of: 1023) == (0, 1023))
        #expect(s.cpus(ofVM: 0) == 0..<1024)
    }

    @Test func fourVMsFor4096CPUsOnA1024vCPUHost() {
        let s = VCPUShards(cpus: 4096, perVM: 1024)
        #expect(s.vmCount == 4)
        #expect(s.location(of: 1023) == (0, 1023))
        #expect(s.location(of: 1024) == (1, 0))
        #expect(s.location(of: 2048) == (2, 0))
        #expect(s.location(of: 4095) == (3, 1023))
        #expect(s.cpus(ofVM: 3) == 3072..<4096)
    }

    /// Every CPU has exactly one (VM, vCPU id) pair, ids stay below the per-VM limit, and each VM's CPUs are the
    /// ones that map to it.
    @Test(arguments: [(10, 4), (1, 1), (7, 1), (8, 4), (9, 4), (4096, 1024), (4096, 4096), (1000, 3)])
    func mappingIsABijectionWithinTheLimit(cpus: Int, perVM: Int) {
        let s = VCPUShards(cpus: cpus, perVM: perVM)
        #expect(s.vmCount == (cpus + perVM - 1) / perVM)
        var seen = Set<[Int]>()
        var perVMCount = [Int](repeating: 0, count: s.vmCount)
        for i in 0..<cpus {
            let (vm, id) = s.location(of: i)
            #expect(vm >= 0 && vm < s.vmCount)
            #expect(Int(id) < perVM)
            #expect(seen.insert([vm, Int(id)]).inserted, "CPU \(i) shares VM \(vm) vCPU \(id)")
            #expect(s.cpus(ofVM: vm).contains(i))
            perVMCount[vm] += 1
        }
        #expect(perVMCount.allSatisfy { $0 <= perVM })
        #expect((0..<s.vmCount).map { s.cpus(ofVM: $0).count } == perVMCount)
    }

    @Test func tenCPUsOverVMsOfFour() {
        let s = VCPUShards(cpus: 10, perVM: 4)
        #expect(s.vmCount == 3)
        #expect((0..<10).map { s.location(of: $0).vm } == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
        #expect((0..<10).map { s.location(of: $0).vcpuID } == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
        #expect(s.cpus(ofVM: 2) == 8..<10)
    }

    /// The per-VM limit: both KVM caps bind (ids restart at 0 in every VM), an override only lowers it.
    @Test func perVMLimitTakesTheSmallestBound() {
        #expect(VCPUShards.perVMLimit(maxVCPUs: 1024, maxVCPUID: 4096) == 1024)
        #expect(VCPUShards.perVMLimit(maxVCPUs: 1024, maxVCPUID: 512) == 512)
        #expect(VCPUShards.perVMLimit(maxVCPUs: 1024, maxVCPUID: 4096, override: 4) == 4)
        #expect(VCPUShards.perVMLimit(maxVCPUs: 8, maxVCPUID: 4096, override: 100) == 8)
        #expect(VCPUShards.perVMLimit(maxVCPUs: 0, maxVCPUID: 0) == 1)
    }
}
