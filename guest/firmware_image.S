/* SPDX-License-Identifier: MIT
 *
 * The built-in minivmm firmware: one flat 64 KiB image (DESIGN.md §4), mapped by the VMM at
 * 0xFFFF0000..0xFFFFFFFF and aliased at 0xF0000..0xFFFFF; reset vector at image offset 0xFFF0.
 *
 * The image is not linked at its guest address: it is data in section .rodata.minivmm_firmware of the host
 * binary, between minivmm_firmware_start and minivmm_firmware_end. Every guest address of a label is an
 * assemble-time constant, ABS(label) = label - minivmm_firmware_start + MINIVMM_FW_BASE (macros.inc), and
 * jumps/calls are PC-relative. The section must therefore carry NO relocations; check after a build with
 *     llvm-objdump -r .build/debug/GuestFirmware.build/firmware_image.S.o
 * which must print no RELOCATION RECORDS for .rodata.minivmm_firmware (only the two global symbols are
 * exported). A relocation there would mean some expression was not a same-section label difference.
 *
 * The pieces are *.inc files (SwiftPM assembles only *.S files, so they are not assembled twice), included
 * here in image order:
 *   rom_data.inc       GDT, strings, fw_cfg file table
 *   smm_handlers.inc   relocation handler (-> 0x38000), TSEG SMI entry stub (-> SMBASE(i) + 0x8000), the
 *                      monarch's common handler (-> TSEG), strategy C's first-SMI handler and pen, attack payload
 *   ap_trampoline.inc  AP trampoline (-> MINIVMM_AP_TRAMPOLINE, SIPI vector 0x08)
 *   reset.inc          real mode -> 32-bit flat protected mode
 *   idt.inc            exception/interrupt stubs and the IDT
 *   console.inc        debug console, fail path
 *   fwcfg.inc          fw_cfg I/O and DMA access, file directory scan
 *   boot.inc           BSP main flow, SMI negotiation, TSEG, APs, SMRAM lock, strategy dispatch, APM requests
 *   strategy_a.inc     boot-time relocation at 3000:8000 (shared); strategy A relocates every possible CPU
 *   strategy_bcn.inc   strategies B, C, N: boot CPUs only, then B's SMBASE registers / C's first-SMI handler
 *   os_loop.inc        the OS loop (CPU hotplug events) and each strategy's hot-add routine
 *   attacks.inc        the OS-side attacks at hot-add (payload at 0x38000, IPIs, DMA into SMRAM)
 *   (here)             reset vector at offset 0xFFF0
 */
#include "minivmm_contract.h"
#include "macros.inc"

    .section .rodata.minivmm_firmware, "a"
    .globl minivmm_firmware_start
    .globl minivmm_firmware_end
    .balign 4096
minivmm_firmware_start:

#include "rom_data.inc"
#include "smm_handlers.inc"
#include "ap_trampoline.inc"
#include "reset.inc"
#include "idt.inc"
#include "console.inc"
#include "fwcfg.inc"
#include "boot.inc"
#include "strategy_a.inc"
#include "strategy_bcn.inc"
#include "os_loop.inc"
#include "attacks.inc"

/* Fill up to the reset vector with HLT. The section starts with minivmm_firmware_start (the .balign above
 * is at section offset 0), so section offsets are image offsets. */
    .org    MINIVMM_FW_SIZE - 16, 0xF4
reset_vector:                               /* guest 0xFFFFFFF0: F000:FFF0, CS base 0xFFFF0000 */
    .code16
    /* Near jump E9 rel16 to real_mode_entry. In 16-bit code IP wraps modulo 64 KiB, so the displacement is
     * taken modulo 0x10000 (the assembler refuses a backward jump of more than 32 KiB). */
    .byte   0xE9
    .word   (real_mode_entry - (reset_vector + 3)) & 0xFFFF
    .org    MINIVMM_FW_SIZE, 0xF4
minivmm_firmware_end:
    .code64
