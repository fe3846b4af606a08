/* SPDX-License-Identifier: MIT
 *
 * The conformance firmware (`minivmm run --firmware builtin:conformance`): a second built-in 64 KiB flat image,
 * mapped like the main one (0xFFFF0000..0xFFFFFFFF, aliased at 0xF0000), that checks SMM semantics from inside
 * the guest and prints one `PASS name` / `FAIL name: expected X got Y` line per check and a `SUMMARY:` line on
 * the debug console, then leaves through isa-debug-exit with MINIVMM_CONFORMANCE_EXIT_PASS or _FAIL.
 *
 * Like firmware_image.S it is data in section .rodata.minivmm_conformance between minivmm_conformance_start and
 * minivmm_conformance_end, with no relocations (check with llvm-objdump -r on conformance_image.S.o). Its own
 * object file, so its local labels never meet the main image's. Pieces, in image order:
 *   conformance/layout.inc  private RAM layout, save-state map offsets, CHECK macros (no bytes)
 *   conformance/boot.inc    GDT and constants, reset -> 32-bit protected mode, setup
 *   conformance/lib.inc     console, check32/check64, summary and exit, exception stubs and IDT
 *   conformance/smm.inc     the SMI handler (-> 0x38000) and the AP's SIPI code (-> 0x8000)
 *   conformance/tests.inc   the checks
 */
#include "minivmm_contract.h"
#include "conformance/layout.inc"

    .section .rodata.minivmm_conformance, "a"
    .globl minivmm_conformance_start
    .globl minivmm_conformance_end
    .balign 4096
minivmm_conformance_start:

#include "conformance/boot.inc"
#include "conformance/lib.inc"
#include "conformance/smm.inc"
#include "conformance/tests.inc"

    .org    MINIVMM_FW_SIZE - 16, 0xF4
c_reset_vector:                             /* guest 0xFFFFFFF0: F000:FFF0, CS base 0xFFFF0000           */
    .code16
    .byte   0xE9
    .word   (c_real_mode_entry - (c_reset_vector + 3)) & 0xFFFF
    .org    MINIVMM_FW_SIZE, 0xF4
minivmm_conformance_end:
    .code64
