// SPDX-License-Identifier: MIT
import Firmware
import GuestFirmware
import Testing

/// Static checks of the built-in firmware image (no KVM needed).
///
/// That the image section carries no host relocations cannot be seen from the bytes; it is checked with
/// `llvm-objdump -r` on the assembled object, as described in guest/firmware_image.S.
@Suite struct FirmwareImageTests {
    let image = FirmwareImage.builtin

    @Test func imageIsExactlyTheContractSize() {
        #expect(image.count == Int(MINIVMM_FW_SIZE))
        #expect(image.count % 4096 == 0)
    }

    /// The reset vector (image offset 0xFFF0, guest 0xFFFFFFF0, CS base 0xFFFF0000) is a jump whose target
    /// lies inside the image, and the code there starts with `cli`.
    @Test func resetVectorJumpsInsideTheImage() throws {
        try #require(image.count == Int(MINIVMM_FW_SIZE))
        let vector = Int(MINIVMM_FW_SIZE) - 16
        let opcode = image[vector]
        #expect([0xE9, 0xEA, 0xEB].contains(opcode))
        let target: Int
        switch opcode {
        case 0xE9:  // jmp rel16; IP wraps modulo 64 KiB in 16-bit code
            let rel = Int(image[vector + 1]) | Int(image[vector + 2]) << 8
            target = (vector + 3 + rel) & 0xFFFF
        case 0xEB:  // jmp rel8
            target = (vector + 2 + Int(Int8(bitPattern: image[vector + 1]))) & 0xFFFF
        case 0xEA:  // jmp ptr16:16 through the 0xF0000 alias of the image
            let offset = Int(image[vector + 1]) | Int(image[vector + 2]) << 8
            let segment = Int(image[vector + 3]) | Int(image[vector + 4]) << 8
            target = (segment << 4) + offset - 0xF0000
        default:
            Issue.record("reset vector is not a jump: \(opcode)")
            return
        }
        #expect(target >= 0 && target < vector)
        #expect(image[target] == 0xFA, "real-mode entry starts with cli")
    }

    /// The firmware compares the fw_cfg signature against "QEMU" (a `cmpl $imm32`).
    @Test func imageContainsTheFwCfgSignatureCheck() {
        let value = UInt32(FW_CFG_SIGNATURE_VALUE)
        let bytes = (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
        #expect(bytes == Array("QEMU".utf8))
        let found = image.indices.dropLast(3).contains { Array(image[$0..<$0 + 4]) == bytes }
        #expect(found)
    }

    /// The contract's SMRAM tile layout leaves room for an entry stub and a save-state map per step.
    @Test func smmTileLayoutIsConsistent() {
        #expect(Int(MINIVMM_SMM_ENTRY_MAX) * 2 <= Int(MINIVMM_SMM_TILE))
        #expect(Int(SMM_HANDLER_OFFSET) % Int(MINIVMM_SMM_TILE) == 0)
        #expect(
            (Int(SMM_SAVE_STATE_OFFSET) - Int(SMM_HANDLER_OFFSET)) % Int(MINIVMM_SMM_TILE)
                == Int(MINIVMM_SMM_TILE) - Int(MINIVMM_SMM_ENTRY_MAX))
        #expect(Int(MINIVMM_FWCFG_DMA_DATA) == Int(MINIVMM_FWCFG_DMA_SCRATCH) + 0x100)
    }

    /// The shared SMM exit sits in the entry slot of a CPU with ID max CPUs: above every SMBASE (so each CPU reaches
    /// it with a forward near jump), inside the TSEG the firmware requires (0x10000 + (max - 1) * tile), and clear
    /// of every CPU's save-state map (the second half of each tile step above SMBASE + 0x8000).
    @Test func sharedSMMExitFitsEveryCPUCount() {
        let tile = Int(MINIVMM_SMM_TILE)
        for maxCPUs in 1...Int(MINIVMM_MAX_CPUS_LIMIT) {
            let exit = maxCPUs * tile + Int(SMM_HANDLER_OFFSET)
            #expect(exit > (maxCPUs - 1) * tile)
            #expect(exit + Int(MINIVMM_SMM_ENTRY_MAX) <= 0x10000 + (maxCPUs - 1) * tile)
            // CPU j's map is [j * tile + 0xFE00, j * tile + 0x10000): only the last 64 KiB of tiles can reach the slot.
            for j in max(0, maxCPUs - 0x10000 / tile)..<maxCPUs {
                let map = j * tile + Int(SMM_SAVE_STATE_OFFSET)
                let overlaps = map < exit + Int(MINIVMM_SMM_ENTRY_MAX) && exit < map + 0x200
                #expect(!overlaps, "max \(maxCPUs): CPU \(j)'s save-state map")
            }
        }
    }

    /// The image carries the strings the firmware prints and the fw_cfg file names it looks up.
    @Test func imageContainsTheFwCfgFileNames() {
        for name in [
            "etc/smi/supported-features", "etc/smi/requested-features", "etc/smi/features-ok",
            "opt/org.minivmm/strategy",
        ] {
            let needle = Array(name.utf8) + [0]
            let found = image.indices.dropLast(needle.count).contains {
                Array(image[$0..<$0 + needle.count]) == needle
            }
            #expect(found, "\(name)")
        }
    }
}
