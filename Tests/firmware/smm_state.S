/* SPDX-License-Identifier: MIT
 * smm_state: a focused regression firmware for the state SMI entry and RSM carry (issue 9 gaps 2, 3, 6).
 * 4 KiB flat image at 0xFFFFF000, 16-bit real mode throughout (CS = F000, base 0xFFFF0000: image offset X is
 * IP 0xF000 + X). Assembled by scripts/gen-smm-state-firmware.sh into SMMStateFirmware.swift.
 *
 * The SMI handler (copied to the default SMBASE 0x30000 + 0x8000) logs every entry's saved CS selector and RIP,
 * and per phase reads and changes the state SMM shares with the interrupted code. The BSP checks everything after
 * RSM and exits through isa-debug-exit with 0 (all passed) or the number of the first failed check.
 *   phase 1 (gap 2): DR7 = 0x700, DR6 = 0xFFFF0FF1, DR0 = 0x12345678 before the SMI; in SMM DR7 = 0x400, DR6 and DR0
 *            as before; the map saves DR7 0x700 / DR6 0xFFFF0FF1; the handler sets DR7 0x500, DR0 0x9ABC0000 and
 *            edits the map to DR7 0x600, DR6 0xFFFF0FF2: after RSM DR7 0x600, DR6 0xFFFF0FF2, DR0 0x9ABC0000.
 *   phase 2 (gap 6): XMM0, MM0 (x87 register 7 and tag word), SYSENTER_EIP and PAT set before the SMI are seen in
 *            SMM; XMM1, MM1, SYSENTER_EIP and PAT changed in SMM are there after RSM; the TSC read in SMM lies
 *            between the TSC read before the SMI and after RSM (one TSC, not the SMRAM-view vCPU's own). (This host's KVM emulates
 *            every real-mode instruction; its emulator knows the SSE/MMX moves but not PXOR or FLDCW, so the
 *            firmware uses only moves.)
 *   phase 3 (gap 3): two broadcast APM SMIs while the AP waits for SIPI (never started), then INIT-SIPI-SIPI: the AP
 *            takes one SMI at its SIPI entry point (saved CS 0x0800, RIP 0) before its first instruction.
 */
#include "minivmm_contract.h"

#define LOG_COUNT   0x600   /* u32: SMI entries so far                                  */
#define PHASE       0x604   /* u8: what the handler does                                */
#define SEEN_DR7    0x610
#define SEEN_DR6    0x614
#define SEEN_DR0    0x618
#define MAP_DR7     0x61C
#define MAP_DR6     0x620
#define SEEN_XMM0   0x630   /* 16 bytes                                                  */
#define SEEN_MM0    0x640   /* 8 bytes                                                   */
#define SEEN_SYSEIP 0x66C
#define SEEN_PAT    0x648   /* 8 bytes                                                   */
#define AFTER_XMM1  0x650   /* 16 bytes                                                  */
#define AFTER_MM1   0x660   /* 8 bytes                                                   */
#define TSC_BEFORE  0x670   /* 8 bytes: RDTSC before the phase 2 SMI                     */
#define TSC_SMM     0x678   /* 8 bytes: RDTSC in the phase 2 handler                     */
#define TSC_AFTER   0x690   /* 8 bytes: RDTSC right after RSM                            */
#define AP_SAW      0x680   /* LOG_COUNT as the AP's first instruction saw it            */
#define AP_DONE     0x684
#define LOG         0x700   /* per entry: u16 saved CS, u16 pad, u32 saved RIP           */
#define DIRENT      0x800
#define DMA_DESC    0x900
#define DMA_DATA    0x910
#define SEL_REQ     0x920
#define SEL_OK      0x924

#define PAT_OS      0x0007010600070106
#define PAT_SMM     0x0007040600070406
#define AP_VECTOR   0x08

    .code16
    .text
image:

/* exit with check number N (0: all passed) */
#define FAIL(n) movb $(n), %al; jmp fail

start:
    cli
    xorw    %ax, %ax
    movw    %ax, %ds
    movw    %ax, %ss
    movw    $0x7000, %sp
    /* handler to 0x3000:0x8000, AP code to 0x0000:0x8000 (vector 8) */
    movw    $0x3000, %ax
    movw    %ax, %es
    movw    $(0xF000 + handler), %si
    movw    $0x8000, %di
    movw    $(handler_end - handler), %cx
    cld
    rep movsb %cs:(%si), %es:(%di)
    xorw    %ax, %ax
    movw    %ax, %es
    movw    $(0xF000 + ap_code), %si
    movw    $0x8000, %di
    movw    $(ap_code_end - ap_code), %cx
    rep movsb %cs:(%si), %es:(%di)
    movl    $0, (LOG_COUNT)

#ifndef NO_PHASE1
    /* ---- phase 1: DR6/DR7 (gap 2) ---- */
    movb    $1, (PHASE)
    movl    $0x12345678, %eax
    movl    %eax, %dr0
    movl    $0xFFFF0FF1, %eax
    movl    %eax, %dr6
    movl    $0x700, %eax
    movl    %eax, %dr7
    movb    $1, %al
    outb    %al, $MINIVMM_PORT_APM_CNT
    movl    %dr7, %eax
    movl    %eax, %ebx
    movl    %dr6, %eax
    movl    %eax, %ecx
    movl    %dr0, %eax
    movl    %eax, %edx
    movl    $0x400, %eax
    movl    %eax, %dr7
    cmpl    $0x700, (MAP_DR7)
    je      1f
    FAIL(1)
1:  cmpl    $0xFFFF0FF1, (MAP_DR6)
    je      1f
    FAIL(2)
1:  cmpl    $0x400, (SEEN_DR7)
    je      1f
    FAIL(3)
1:  cmpl    $0xFFFF0FF1, (SEEN_DR6)
    je      1f
    FAIL(4)
1:  cmpl    $0x12345678, (SEEN_DR0)
    je      1f
    FAIL(5)
1:  cmpl    $0x600, %ebx
    je      1f
    FAIL(6)
1:  cmpl    $0xFFFF0FF2, %ecx
    je      1f
    FAIL(7)
#ifndef NO_SMM_DR_WRITES
1:  cmpl    $0x9ABC0000, %edx
    je      1f
    FAIL(8)
#endif

#endif
    /* ---- phase 2: x87/SSE and MSRs (gap 6) ---- */
1:  movb    $2, (PHASE)
    movl    %cr0, %eax
    andl    $~0xC, %eax             /* EM, TS off */
    orl     $0x2, %eax              /* MP */
    movl    %eax, %cr0
    movl    %cr4, %eax
    orl     $0x600, %eax            /* OSFXSR | OSXMMEXCPT */
    movl    %eax, %cr4
    fninit
    movdqu  %cs:(0xF000 + pattern_a), %xmm0
    movq    %cs:(0xF000 + pattern_c), %mm0
    movl    $0x176, %ecx
    movl    $0x11223344, %eax
    xorl    %edx, %edx
    wrmsr
    movl    $0x277, %ecx
    movl    $(PAT_OS & 0xFFFFFFFF), %eax
    movl    $(PAT_OS >> 32), %edx
    wrmsr
    rdtsc
    movl    %eax, (TSC_BEFORE)
    movl    %edx, (TSC_BEFORE + 4)
    movb    $2, %al
    outb    %al, $MINIVMM_PORT_APM_CNT
    rdtsc
    movl    %eax, (TSC_AFTER)
    movl    %edx, (TSC_AFTER + 4)
    movdqu  %xmm1, (AFTER_XMM1)
    movq    %mm1, (AFTER_MM1)
    movw    $(0xF000 + pattern_a), %si
    movw    $SEEN_XMM0, %di
    movw    $16, %cx
    repe cmpsb %es:(%di), %cs:(%si)
    je      1f
    FAIL(9)
1:  movw    $(0xF000 + pattern_c), %si
    movw    $SEEN_MM0, %di
    movw    $8, %cx
    repe cmpsb %es:(%di), %cs:(%si)
    je      1f
    FAIL(10)
1:  cmpl    $0x11223344, (SEEN_SYSEIP)
    je      1f
    FAIL(11)
1:  cmpl    $(PAT_OS & 0xFFFFFFFF), (SEEN_PAT)
    jne     2f
    cmpl    $(PAT_OS >> 32), (SEEN_PAT + 4)
    je      1f
2:  FAIL(12)
1:  movw    $(0xF000 + pattern_b), %si
    movw    $AFTER_XMM1, %di
    movw    $16, %cx
    repe cmpsb %es:(%di), %cs:(%si)
    je      1f
    FAIL(13)
1:  movw    $(0xF000 + pattern_b), %si
    movw    $AFTER_MM1, %di
    movw    $8, %cx
    repe cmpsb %es:(%di), %cs:(%si)
    je      1f
    FAIL(14)
1:  movl    $0x176, %ecx
    rdmsr
    cmpl    $0x55667788, %eax
    je      1f
    FAIL(15)
1:  movl    $0x277, %ecx
    rdmsr
    cmpl    $(PAT_SMM & 0xFFFFFFFF), %eax
    jne     2f
    cmpl    $(PAT_SMM >> 32), %edx
    je      1f
2:  FAIL(16)

    /* TSC_BEFORE <= TSC_SMM <= TSC_AFTER */
1:  movl    (TSC_BEFORE + 4), %eax
    cmpl    (TSC_SMM + 4), %eax
    jb      2f
    ja      3f
    movl    (TSC_BEFORE), %eax
    cmpl    (TSC_SMM), %eax
    jbe     2f
3:  FAIL(26)
2:  movl    (TSC_SMM + 4), %eax
    cmpl    (TSC_AFTER + 4), %eax
    jb      1f
    ja      3f
    movl    (TSC_SMM), %eax
    cmpl    (TSC_AFTER), %eax
    jbe     1f
3:  FAIL(27)

    /* ---- phase 3: broadcast SMI to an AP waiting for SIPI (gap 3) ---- */
1:  movb    $3, (PHASE)
    call    negotiate_broadcast
    movl    (LOG_COUNT), %ebx           /* entries before the broadcasts */
    movb    $3, %al
    outb    %al, $MINIVMM_PORT_APM_CNT
    outb    %al, $MINIVMM_PORT_APM_CNT
    movl    (LOG_COUNT), %eax
    subl    %ebx, %eax
    cmpl    $2, %eax                    /* the BSP took both; the AP holds its SMIs */
    je      1f
    FAIL(20)
1:  /* x2APIC on: IA32_APIC_BASE |= EN | EXTD */
    movl    $0x1B, %ecx
    rdmsr
    orl     $0xC00, %eax
    wrmsr
    movl    $0x830, %ecx                /* ICR */
    movl    $1, %edx                    /* destination: APIC ID 1 */
    movl    $0x4500, %eax               /* INIT, assert */
    wrmsr
    movl    $0x4600 + AP_VECTOR, %eax   /* STARTUP */
    wrmsr
    wrmsr                               /* second SIPI: the AP runs already, dropped */
    movl    $MINIVMM_SPIN_LIMIT, %ecx
2:  cmpl    $1, (AP_DONE)
    je      1f
    pause
    decl    %ecx
    jnz     2b
    FAIL(21)
1:  movl    (LOG_COUNT), %eax
    subl    %ebx, %eax
    cmpl    $3, %eax                    /* the AP's held SMIs merged into one */
    je      1f
    FAIL(22)
1:  movl    (LOG_COUNT), %eax
    cmpl    %eax, (AP_SAW)              /* taken before the AP's first instruction */
    je      1f
    FAIL(23)
1:  movl    (LOG_COUNT), %esi
    decl    %esi
    shll    $3, %esi
    cmpw    $(AP_VECTOR << 8), LOG(%esi)
    je      1f
    FAIL(24)
1:  cmpl    $0, LOG + 4(%esi)
    je      1f
    FAIL(25)
1:  xorb    %al, %al
fail:
    outb    %al, $MINIVMM_PORT_DEBUG_EXIT
    hlt
    jmp     fail

/* negotiate_broadcast: find etc/smi/requested-features and etc/smi/features-ok in FW_CFG_FILE_DIR, write 1
 * (ICH9_LPC_SMI_F_BROADCAST) to the first by DMA, select the second and check it reads 1. */
negotiate_broadcast:
    movw    $FW_CFG_FILE_DIR, %ax
    movw    $MINIVMM_PORT_FWCFG_SEL, %dx
    outw    %ax, %dx
    movw    $MINIVMM_PORT_FWCFG_DATA, %dx
    movw    $DIRENT, %di
    movw    $4, %cx
    rep insb
    movl    (DIRENT), %ebp
    bswapl  %ebp
1:  testl   %ebp, %ebp
    jz      3f
    decl    %ebp
    movw    $DIRENT, %di
    movw    $FW_CFG_FILE_ENTRY_SIZE, %cx
    rep insb
    movw    (DIRENT + FW_CFG_FILE_SELECT_OFFSET), %ax
    xchgb   %al, %ah
    movw    $(0xF000 + name_req), %si
    movw    $(DIRENT + FW_CFG_FILE_NAME_OFFSET), %di
    movw    $(name_req_end - name_req), %cx
    repe cmpsb %es:(%di), %cs:(%si)
    jne     2f
    movw    %ax, (SEL_REQ)
2:  movw    $(0xF000 + name_ok), %si
    movw    $(DIRENT + FW_CFG_FILE_NAME_OFFSET), %di
    movw    $(name_ok_end - name_ok), %cx
    repe cmpsb %es:(%di), %cs:(%si)
    jne     1b
    movw    %ax, (SEL_OK)
    jmp     1b
3:  movl    $1, (DMA_DATA)
    movl    $0, (DMA_DATA + 4)
    movzwl  (SEL_REQ), %eax
    shll    $16, %eax
    orl     $(FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_WRITE), %eax
    bswapl  %eax
    movl    %eax, (DMA_DESC)
    movl    $0x08000000, (DMA_DESC + 4)        /* length 8, big-endian */
    movl    $0, (DMA_DESC + 8)
    movl    $0x10090000, (DMA_DESC + 12)       /* DMA_DATA 0x910, big-endian */
    xorl    %eax, %eax
    movw    $MINIVMM_PORT_FWCFG_DMA_HI, %dx
    outl    %eax, %dx
    movl    $0x00090000, %eax                  /* DMA_DESC 0x900, big-endian */
    movw    $MINIVMM_PORT_FWCFG_DMA_LO, %dx
    outl    %eax, %dx
    cmpl    $0, (DMA_DESC)
    je      1f
    FAIL(17)
1:  movw    (SEL_OK), %ax
    movw    $MINIVMM_PORT_FWCFG_SEL, %dx
    outw    %ax, %dx
    movw    $MINIVMM_PORT_FWCFG_DATA, %dx
    inb     %dx, %al
    cmpb    $1, %al
    je      1f
    FAIL(18)
1:  ret

/* ---- SMI handler, runs at SMBASE + 0x8000 (position-independent; DS = ES = 0, 4 GiB limits) ---- */
handler:
    movw    $MINIVMM_PORT_SMM_ENTRY, %dx    /* the kvm backend's SMM entry probe */
    outb    %al, %dx
    movw    $0x3000, %ax
    movw    %ax, %fs                        /* FS:0xFExx = the state-save map of SMBASE 0x30000 */
    /* saved CS selector and RIP, in the format the revision ID names */
    movl    (LOG_COUNT), %esi
    shll    $3, %esi
    cmpl    $0x00020064, %fs:(0xFEFC)
    jne     1f
    movw    %fs:(0xFE10), %ax               /* AMD64 map: CS selector at FE10, RIP at FF78 */
    movl    %fs:(0xFF78), %edx              /* RIP */
    jmp     2f
1:  movw    %fs:(0xFFAC), %ax               /* 32-bit map: CS selector at FFAC, EIP at FFF0 */
    movl    %fs:(0xFFF0), %edx
2:  movw    %ax, LOG(%esi)
    movl    %edx, LOG + 4(%esi)
    incl    (LOG_COUNT)
    cmpb    $1, (PHASE)
    je      phase1
    cmpb    $2, (PHASE)
    je      phase2
    rsm
phase1:
    movl    %dr7, %eax
    movl    %eax, (SEEN_DR7)
    movl    %dr6, %eax
    movl    %eax, (SEEN_DR6)
    movl    %dr0, %eax
    movl    %eax, (SEEN_DR0)
#ifndef NO_SMM_DR_WRITES
    movl    $0x9ABC0000, %eax
    movl    %eax, %dr0
    movl    $0x100, %eax                    /* live DR7 0x500: RSM must reload the map's value instead */
    movl    %eax, %dr7
#endif
    cmpl    $0x00020064, %fs:(0xFEFC)
    jne     1f
    movl    %fs:(0xFF60), %eax
    movl    %eax, (MAP_DR7)
    movl    %fs:(0xFF68), %eax
    movl    %eax, (MAP_DR6)
    movl    $0x600, %fs:(0xFF60)
    movl    $0xFFFF0FF2, %fs:(0xFF68)
    rsm
1:  movl    %fs:(0xFFC8), %eax
    movl    %eax, (MAP_DR7)
    movl    %fs:(0xFFCC), %eax
    movl    %eax, (MAP_DR6)
    movl    $0x600, %fs:(0xFFC8)
    movl    $0xFFFF0FF2, %fs:(0xFFCC)
    rsm
phase2:
    movl    %cr4, %eax                      /* CR4 is 0 in SMM: SSE needs OSFXSR (RSM restores CR4) */
    orl     $0x200, %eax
    movl    %eax, %cr4
    movdqu  %xmm0, (SEEN_XMM0)
    movq    %mm0, (SEEN_MM0)
    rdtsc
    movl    %eax, (TSC_SMM)
    movl    %edx, (TSC_SMM + 4)
    movl    $0x176, %ecx
    rdmsr
    movl    %eax, (SEEN_SYSEIP)
    movl    $0x277, %ecx
    rdmsr
    movl    %eax, (SEEN_PAT)
    movl    %edx, (SEEN_PAT + 4)
    movl    $0x176, %ecx
    movl    $0x55667788, %eax
    xorl    %edx, %edx
    wrmsr
    movl    $0x277, %ecx
    movl    $(PAT_SMM & 0xFFFFFFFF), %eax
    movl    $(PAT_SMM >> 32), %edx
    wrmsr
    movl    $0xB3B2B1B0, (0x6F0)            /* pattern_b, little-endian */
    movl    $0xB7B6B5B4, (0x6F4)
    movl    $0xBBBAB9B8, (0x6F8)
    movl    $0xBFBEBDBC, (0x6FC)
    movdqu  (0x6F0), %xmm1
    movq    (0x6F0), %mm1
    rsm
handler_end:

/* ---- AP code at 0x8000 (SIPI vector 8) ---- */
ap_code:
    xorw    %ax, %ax
    movw    %ax, %ds
    movl    (LOG_COUNT), %eax
    movl    %eax, (AP_SAW)
    movl    $1, (AP_DONE)
1:  cli
    hlt
    jmp     1b
ap_code_end:

pattern_a: .byte 0xA0,0xA1,0xA2,0xA3,0xA4,0xA5,0xA6,0xA7,0xA8,0xA9,0xAA,0xAB,0xAC,0xAD,0xAE,0xAF
pattern_b: .byte 0xB0,0xB1,0xB2,0xB3,0xB4,0xB5,0xB6,0xB7,0xB8,0xB9,0xBA,0xBB,0xBC,0xBD,0xBE,0xBF
pattern_c: .byte 0xC0,0xC1,0xC2,0xC3,0xC4,0xC5,0xC6,0xC7
name_req: .asciz "etc/smi/requested-features"
name_req_end:
name_ok: .asciz "etc/smi/features-ok"
name_ok_end:

    . = image + 0xFF0
reset_vector:
    jmp     start
    . = image + 0x1000
