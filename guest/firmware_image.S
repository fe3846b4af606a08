/* SPDX-License-Identifier: MIT
 * The built-in firmware image (placeholder reset vector until the full firmware lands). */
#include "minivmm_contract.h"
    .section .rodata.minivmm_firmware, "a"
    .globl minivmm_firmware_start
    .globl minivmm_firmware_end
    .balign 4096
minivmm_firmware_start:
    .code16
    .fill MINIVMM_FW_SIZE - 16, 1, 0xF4
reset_vector:
    cli
    hlt
    .fill 14, 1, 0xF4
minivmm_firmware_end:
    .code64
