/* SPDX-License-Identifier: MIT
 *
 * The firmware <-> VMM contract: every guest address, port, register value and report code that both the
 * built-in firmware (guest/ *.S, through the C preprocessor) and the VMM (Swift, through the Firmware module)
 * rely on. This header is the single source of truth; nothing here may be copied by hand elsewhere.
 * Plain integer #defines only: they must be valid in GNU assembler, C and Swift's clang importer.
 */
#ifndef MINIVMM_CONTRACT_H
#define MINIVMM_CONTRACT_H

/* ---- Firmware image ------------------------------------------------------------------------------------ */
/* The built-in image is 64 KiB: it ends at 4 GiB (reset vector at 0xFFFFFFF0) and is aliased at 0xF0000. */
#define MINIVMM_FW_SIZE             0x10000
#define MINIVMM_FW_BASE             0xFFFF0000
#define MINIVMM_FW_MAX_SIZE         0x800000    /* largest --firmware image accepted (8 MiB)                */
#define MINIVMM_ISA_BIOS_WINDOW     0x20000     /* the last min(128 KiB, size) bytes also end at 0x100000    */

/* ---- Ports (QEMU conventions) -------------------------------------------------------------------------- */
#define MINIVMM_PORT_DEBUGCON       0x402       /* OVMF/QEMU debugcon: bytes go to minivmm's console        */
#define MINIVMM_PORT_DEBUG_EXIT     0xF4        /* isa-debug-exit: writing v stops the VM, status (v<<1)|1  */
#define MINIVMM_PORT_APM_CNT        0xB2        /* ICH9 APM control: a write raises a broadcast SMI         */
#define MINIVMM_PORT_APM_STS        0xB3        /* ICH9 APM status: scratch byte                            */
#define MINIVMM_PORT_FWCFG_SEL      0x510       /* fw_cfg selector (16-bit)                                 */
#define MINIVMM_PORT_FWCFG_DATA     0x511       /* fw_cfg data (8-bit)                                      */
#define MINIVMM_PORT_FWCFG_DMA_HI   0x514       /* fw_cfg DMA address, high 32 bits, big-endian             */
#define MINIVMM_PORT_FWCFG_DMA_LO   0x518       /* fw_cfg DMA address, low 32 bits, big-endian; triggers    */
#define MINIVMM_PORT_PCI_ADDR       0xCF8       /* PCI config address (type 1)                              */
#define MINIVMM_PORT_PCI_DATA       0xCFC       /* PCI config data                                          */
#define MINIVMM_PORT_CPUHP_BASE     0x0CD8      /* QEMU modern ACPI CPU hotplug block (ICH9), 12 bytes      */
#define MINIVMM_CPUHP_LEN           12
/* minivmm's report channel: a 32-bit OUT of (code << 24 | arg) reports an event; a 32-bit IN returns the
 * VMM's current command for the firmware (MINIVMM_CMD_*). */
#define MINIVMM_PORT_REPORT         0x0600
/* SMM entry probe: the first instruction of every SMI handler is an 8-bit OUT here. It only gives the VMM an
 * exit at SMM entry (KVM runs an SMI raised by an SMI IPI entirely inside the kernel); the value is ignored and
 * everything recorded is read from KVM (SMM flag, CS, RIP, MSR 0x9E, MSR_SMI_COUNT, the state-save map). */
#define MINIVMM_PORT_SMM_ENTRY      0x0604

/* ---- fw_cfg (docs/specs/fw_cfg.rst) -------------------------------------------------------------------- */
#define FW_CFG_SIGNATURE            0x0000      /* "QEMU"                                                   */
#define FW_CFG_ID                   0x0001      /* feature bitmap: bit0 traditional, bit1 DMA               */
#define FW_CFG_RAM_SIZE             0x0003      /* u64 LE                                                   */
#define FW_CFG_NB_CPUS              0x0005      /* u16 LE: boot CPUs                                        */
#define FW_CFG_MAX_CPUS             0x000F      /* u16 LE: possible CPUs                                    */
#define FW_CFG_FILE_DIR             0x0019      /* u32 BE count, then 64-byte big-endian entries            */
#define FW_CFG_FILE_FIRST           0x0020
#define FW_CFG_DMA_CTL_ERROR        0x01
#define FW_CFG_DMA_CTL_READ         0x02
#define FW_CFG_DMA_CTL_SKIP         0x04
#define FW_CFG_DMA_CTL_SELECT       0x08
#define FW_CFG_DMA_CTL_WRITE        0x10
#define FW_CFG_DMA_SIGNATURE_HI     0x51454D55  /* "QEMU" read back from the DMA address port ("QEMU CFG") */
#define FW_CFG_ID_DMA               0x02        /* FW_CFG_ID bit: the DMA interface is present              */
#define FW_CFG_SIGNATURE_VALUE      0x554D4551  /* "QEMU" as a little-endian u32 (bytes 'Q','E','M','U')    */
/* FW_CFG_FILE_DIR entry: {be32 size, be16 select, be16 reserved, char name[56]}. */
#define FW_CFG_FILE_ENTRY_SIZE      64
#define FW_CFG_FILE_SELECT_OFFSET   4
#define FW_CFG_FILE_NAME_OFFSET     8
#define FW_CFG_FILE_NAME_SIZE       56
#define FW_CFG_SMI_FEATURES_SIZE    8           /* etc/smi/{supported,requested}-features: u64 LE           */
/* ICH9 SMI feature negotiation bits (etc/smi/supported-features, requested-features). */
#define ICH9_LPC_SMI_F_BROADCAST            0x1
#define ICH9_LPC_SMI_F_CPU_HOTPLUG          0x2
#define ICH9_LPC_SMI_F_CPU_HOT_UNPLUG       0x4

/* ---- Q35 host bridge (00:00.0) config registers, QEMU semantics ---------------------------------------- */
#define PCI_CONFIG_ENABLE           0x80000000  /* 0xCF8 type-1 address: enable bit | bus<<16 | dev<<11 | fn<<8 | reg */
#define PCI_CONFIG_REG_MASK         0xFC        /* dword-aligned part of the register number in 0xCF8       */
#define PCI_CONFIG_BYTE_MASK        0x03        /* byte within the dword: 0xCFC + (reg & 3)                  */
#define MCH_EXT_TSEG_MBYTES         0x50        /* u16: write 0xFFFF to query, reads back the size in MiB   */
#define MCH_EXT_TSEG_MBYTES_QUERY   0xFFFF
#define MCH_F_SMBASE                0x9C        /* SMRAM at default SMBASE                                  */
#define MCH_F_SMBASE_QUERY          0xFF
#define MCH_F_SMBASE_IN_RAM         0x01
#define MCH_F_SMBASE_LCK            0x02
#define MCH_SMRAM                   0x9D
#define MCH_SMRAM_D_OPEN            0x40
#define MCH_SMRAM_D_CLS             0x20
#define MCH_SMRAM_D_LCK             0x10
#define MCH_SMRAM_G_SMRAME          0x08
#define MCH_SMRAM_C_BASE_SEG        0x02        /* read-only "010b" in bits 2:0                              */
#define MCH_ESMRAMC                 0x9E
#define MCH_ESMRAMC_H_SMRAME        0x80
#define MCH_ESMRAMC_E_SMERR         0x40
#define MCH_ESMRAMC_SM_CACHE        0x20
#define MCH_ESMRAMC_SM_L1           0x10
#define MCH_ESMRAMC_SM_L2           0x08
#define MCH_ESMRAMC_TSEG_SZ_MASK    0x06
#define MCH_ESMRAMC_TSEG_SZ_1MB     0x00
#define MCH_ESMRAMC_TSEG_SZ_2MB     0x02
#define MCH_ESMRAMC_TSEG_SZ_8MB     0x04
#define MCH_ESMRAMC_TSEG_SZ_EXT     0x06
#define MCH_ESMRAMC_T_EN            0x01

/* ---- CPU hotplug block (docs/specs/acpi_cpu_hotplug.rst) ----------------------------------------------- */
#define CPUHP_R_CMD_DATA2           0x0
#define CPUHP_W_CPU_SEL             0x0
#define CPUHP_R_CPU_STAT            0x4
#define CPUHP_W_CPU_CTL             0x4
#define CPUHP_W_CMD                 0x5
#define CPUHP_RW_CMD_DATA           0x8
#define CPUHP_STAT_ENABLED          0x01
#define CPUHP_STAT_INSERT           0x02
#define CPUHP_STAT_REMOVE           0x04
#define CPUHP_STAT_EJECT            0x08
#define CPUHP_STAT_FW_REMOVE        0x10
#define CPUHP_CMD_GET_NEXT_CPU_WITH_EVENT 0
#define CPUHP_CMD_OST_EVENT         1
#define CPUHP_CMD_OST_STATUS        2
#define CPUHP_CMD_GET_CPU_ID        3
/* minivmm vendor command (strategy B): CMD_DATA is the selected CPU's SMM-only SMBASE register. */
#define CPUHP_CMD_MINIVMM_SMBASE    0x80

/* ---- Local APIC ---------------------------------------------------------------------------------------- */
#define APIC_MMIO_BASE              0xFEE00000
#define MSR_IA32_APIC_BASE          0x1B
#define MSR_IA32_SMBASE             0x9E
#define MSR_SMI_COUNT               0x34        /* KVM: SMIs taken since the last RESET/INIT (host reads)  */
#define MSR_X2APIC_BASE             0x800
#define MSR_X2APIC_ICR              0x830
#define MSR_X2APIC_EOI              0x80B
#define MSR_X2APIC_SVR              0x80F
#define MSR_X2APIC_LVT_TIMER        0x832
#define MSR_X2APIC_TIMER_INITIAL    0x838
#define MSR_X2APIC_TIMER_DIVIDE     0x83E
#define APIC_LVT_TIMER_PERIODIC     0x20000
#define APIC_LVT_MASKED             0x10000
#define APIC_TIMER_DIVIDE_BY_1      0xB
/* HALT_UNTIL's safety net while the BSP waits for APs: a periodic local APIC timer (MINIVMM_WAKE_VECTOR, this many
 * bus cycles: about 100 ms at KVM's 1 GHz APIC bus) wakes it even if a wake IPI were lost, and makes the wait's
 * bound a bound in time where the timer runs (KVM's in-kernel APIC; the emulated backend's userspace APIC runs
 * none). Not shorter: in the nested lane (QEMU TCG) a 1 ms tick took longer to handle than its period, and the
 * BSP's ticks starved the relocating APs (a 1024-CPU run stalled at CPU 379). */
#define MINIVMM_WAKE_TIMER_PERIOD   100000000
#define APIC_SVR_ENABLE             0x100       /* SVR bit 8: APIC software enable                          */
#define CPUID_LEAF_X2APIC_TOPOLOGY  0x0B        /* CPUID.0BH (ECX=0): EDX = this CPU's x2APIC ID            */
#define APIC_BASE_BSP               0x100
#define APIC_BASE_EXTD              0x400
#define APIC_BASE_EN                0x800
#define APIC_ICR_DM_FIXED           0x000
#define APIC_ICR_DM_SMI             0x200
#define APIC_ICR_DM_NMI             0x400
#define APIC_ICR_DM_INIT            0x500
#define APIC_ICR_DM_STARTUP         0x600
#define APIC_ICR_LEVEL_ASSERT       0x4000
#define APIC_ICR_DEST_SELF          0x40000
#define APIC_ICR_DEST_ALL           0x80000
#define APIC_ICR_DEST_ALL_BUT_SELF  0xC0000
/* The hotplug controller's SCI reaches CPU 0 as this fixed vector (minivmm has no IOAPIC/ACPI GPE). */
#define MINIVMM_SCI_VECTOR          0x30
/* Spurious-interrupt vector programmed into the SVR (low nibble 1111b, inside the firmware's IDT): iret only. */
#define MINIVMM_SPURIOUS_VECTOR     0x2F
/* Fixed IPI that wakes the BSP (APIC ID 0) from a HALT_UNTIL wait: sent by the AP whose arrival completes the
 * AP count, and by a parked AP back from an SMI while the BSP relocates (MAILBOX_WAKE_ON_RESUME). */
#define MINIVMM_WAKE_VECTOR         0x31

/* ---- SMM ----------------------------------------------------------------------------------------------- */
#define SMM_DEFAULT_SMBASE          0x30000
#define SMM_HANDLER_OFFSET          0x8000
#define SMM_SAVE_STATE_OFFSET       0xFE00
#define SMM_REV_LEGACY32            0x00020000
#define SMM_REV_AMD64               0x00020064
#define SMM_LEGACY32_SMBASE_FIELD   0xFEF8
#define SMM_AMD64_SMBASE_FIELD      0xFF00
#define SMM_REVISION_FIELD          0xFEFC
/* Where the interrupted code's CS selector and RIP/EIP sit in each map (KVM struct kvm_smram_state_64 / _32). */
#define SMM_AMD64_CS_SELECTOR_FIELD     0xFE10
#define SMM_AMD64_RIP_FIELD             0xFF78
#define SMM_LEGACY32_CS_SELECTOR_FIELD  0xFFAC
#define SMM_LEGACY32_EIP_FIELD          0xFFF0
#define SMM_REVISION_LEVEL_MASK     0xFFFF      /* OVMF: level 0 -> legacy 32-bit map (FEF8), else AMD64 (FF00) */
/* The firmware's per-CPU SMRAM tile: SMBASE(i) = TSEG base + i * tile. Entry code lives in the first half
 * of each 1 KiB step above SMBASE+0x8000, save-state maps in the second half (0x7E00 = 31.5 tiles). */
#define MINIVMM_SMM_TILE            0x400
#define MINIVMM_SMM_ENTRY_MAX       0x200
/* The shared SMM exit: the one RSM of the firmware's TSEG code, at the entry slot a CPU with ID max CPUs would have
 * (above every SMBASE, inside the TSEG the tiles already need). Every CPU's entry stub reaches it with a 32-bit
 * relative near jump whose displacement tseg_setup writes MINIVMM_SMM_STUB_EXIT_REL32 bytes into each copy. */
#define MINIVMM_SMM_SHARED_EXIT(max)    ((max) * MINIVMM_SMM_TILE + SMM_HANDLER_OFFSET)
#define MINIVMM_SMM_STUB_EXIT_REL32     32

/* ---- Low-memory layout used by the built-in firmware --------------------------------------------------- */
#define MINIVMM_MAILBOX             0x1000      /* firmware-private data page (ordinary RAM)                */
#define MAILBOX_RELOC_TSEG_BASE     0x1000      /* u32: SMBASE of CPU 0; relocation handler adds id*tile    */
#define MAILBOX_RELOC_ACK           0x1004      /* u32: relocation handler writes APIC ID + 1               */
#define MAILBOX_AP_ONLINE           0x1008      /* u32: AP trampoline increments                            */
#define MAILBOX_STRATEGY            0x100C      /* u32: strategy id read from fw_cfg                        */
#define MAILBOX_MAX_CPUS            0x1010      /* u32 */
#define MAILBOX_BOOT_CPUS           0x1014      /* u32 */
#define MAILBOX_TSEG_BASE           0x1018      /* u32 */
#define MAILBOX_TSEG_SIZE           0x101C      /* u32 */
#define MAILBOX_SMI_NEGOTIATED      0x1020      /* u32: negotiated etc/smi features                         */
#define MAILBOX_SEL_SMI_SUPPORTED   0x1024      /* u32: fw_cfg selector of etc/smi/supported-features (0: none) */
#define MAILBOX_SEL_SMI_REQUESTED   0x1028      /* u32: fw_cfg selector of etc/smi/requested-features       */
#define MAILBOX_SEL_SMI_FEATURES_OK 0x102C      /* u32: fw_cfg selector of etc/smi/features-ok              */
#define MAILBOX_SEL_STRATEGY        0x1030      /* u32: fw_cfg selector of opt/org.minivmm/strategy         */
#define MAILBOX_FWCFG_FEATURES      0x1034      /* u32: FW_CFG_ID feature bitmap                            */
#define MAILBOX_RAM_SIZE            0x1038      /* u32: low 32 bits of FW_CFG_RAM_SIZE                       */
#define MAILBOX_AP_RESUMED          0x1040      /* u32: parked APs increment it each time HLT returns (after RSM) */
#define MAILBOX_SEL_ATTACK          0x1044      /* u32: fw_cfg selector of opt/org.minivmm/attack (0: none)  */
#define MAILBOX_ATTACK              0x1048      /* u32: MINIVMM_ATTACK_* read from fw_cfg (NONE if missing) */
#define MAILBOX_OS_INSERT_HANDLER   0x104C      /* u32: the strategy's hot-add routine the OS loop calls    */
#define MAILBOX_PRESENT_AT_BOOT     0x1050      /* u32: CPUs present at boot: max CPUs (A), boot CPUs (B/C/N) */
#define MAILBOX_AP_WAKE_AT          0x1054      /* u32: the AP whose arrival makes AP_ONLINE this value wakes the BSP */
#define MAILBOX_WAKE_ON_RESUME      0x1058      /* u32: nonzero while the BSP relocates: a parked AP wakes it after RSM */
#define MAILBOX_IRET_EIP            0x10F0      /* u32: interrupt return address while unwinding a frame by hand */
#define MINIVMM_SMI_COUNT_TABLE     0x10000     /* u32 per APIC ID: both SMI handlers increment their slot  */
#define MINIVMM_FWCFG_DMA_SCRATCH   0x9000      /* DMA descriptor; data buffer at +0x100                    */
#define MINIVMM_FWCFG_DMA_DATA      0x9100      /* DMA data buffer (MINIVMM_FWCFG_DMA_SCRATCH + 0x100)       */
#define MINIVMM_FWCFG_DIRENT_BUF    0x9200      /* one FW_CFG_FILE_DIR entry while scanning the directory   */
#define MINIVMM_AP_TRAMPOLINE       0x8000      /* SIPI vector 0x08                                         */
#define MINIVMM_SIPI_VECTOR         0x08
#define MINIVMM_BSP_STACK_TOP       0x70000
#define MINIVMM_IDT_LIMIT_VECTORS   0x32        /* vectors 0..0x31 are present in the firmware's IDT        */
#define MINIVMM_MAX_CPUS_LIMIT      4096        /* the contract's tables are sized for this many CPUs       */
/* The firmware's flat protected-mode GDT (in ROM): null, flat 4 GiB code, flat 4 GiB data. */
#define MINIVMM_GDT_CODE_SEL        0x08
#define MINIVMM_GDT_DATA_SEL        0x10
#define X86_CR0_PE                  0x01
/* Bounded waits (AP bring-up, relocation, hot-add): iterations of a `pause` loop before REPORT_FAIL. As many as
 * ECX holds: the VMM's --timeout is the real guard. Iterations are not time: under kvm_pvm one costs microseconds,
 * in the nested lane's guest about 5 ns, where 2e8 (the earlier limit, ~1 s) ran out while a single-stepped AP
 * waited for a host thread to be scheduled (RELOC_TIMEOUT in 1 of 40 emulated 256-CPU runs). */
#define MINIVMM_SPIN_LIMIT          0xFFFFFFFF

/* ---- Report channel codes (MINIVMM_PORT_REPORT, value = code << 24 | arg) ------------------------------ */
#define REPORT_BOOT_START           0x01
#define REPORT_FWCFG_OK             0x02        /* arg: max CPUs                                            */
#define REPORT_SMI_NEGOTIATED       0x03        /* arg: negotiated features                                 */
#define REPORT_TSEG_READY           0x04        /* arg: TSEG size in MiB                                    */
#define REPORT_APS_ONLINE           0x05        /* arg: APs that answered INIT-SIPI-SIPI                    */
#define REPORT_RELOCATED            0x06        /* arg: CPU (firmware's claim; the VMM checks for itself)   */
#define REPORT_SMRAM_LOCKED         0x07
#define REPORT_BOOT_DONE            0x08        /* boot relocation finished; OS loop starts                 */
#define REPORT_EJECTED              0x09        /* arg: CPU                                                 */
#define REPORT_HOTADD_START         0x0A        /* arg: CPU                                                 */
#define REPORT_HOTADD_DONE          0x0B        /* arg: CPU                                                 */
#define REPORT_OS_IDLE              0x0C
#define REPORT_HOTADD_REFUSED       0x0D        /* arg: CPU                                                 */
#define REPORT_SMRAM_PROBE          0x0E        /* arg: 1 if the OS's read of locked TSEG returned all-ones  */
#define REPORT_FAIL                 0x7F        /* arg: MINIVMM_FAIL_* reason                               */
#define MINIVMM_FAIL_FWCFG_SIGNATURE 1
#define MINIVMM_FAIL_SMI_NEGOTIATION 2
#define MINIVMM_FAIL_NO_FILE        3
#define MINIVMM_FAIL_TSEG_TOO_SMALL 4
#define MINIVMM_FAIL_AP_TIMEOUT     5
#define MINIVMM_FAIL_RELOC_TIMEOUT  6
#define MINIVMM_FAIL_HOTADD_TIMEOUT 7
#define MINIVMM_FAIL_EXCEPTION      8
#define MINIVMM_FAIL_TOO_MANY_CPUS  9
#define MINIVMM_FAIL_BAD_STRATEGY   10          /* strategy not implemented by this firmware; detail = id    */
/* A REPORT_FAIL arg is reason | detail << MINIVMM_FAIL_DETAIL_SHIFT. Details: EXCEPTION -> vector;
 * NO_FILE -> MINIVMM_FWCFG_FILE_*; SMI_NEGOTIATION -> MINIVMM_SMI_NEG_*; timeouts -> CPU (APIC ID).
 * After REPORT_FAIL the firmware writes the reason (nonzero) to MINIVMM_PORT_DEBUG_EXIT. */
#define MINIVMM_FAIL_DETAIL_SHIFT   8
#define MINIVMM_FWCFG_FILE_SMI_SUPPORTED    0
#define MINIVMM_FWCFG_FILE_SMI_REQUESTED    1
#define MINIVMM_FWCFG_FILE_SMI_FEATURES_OK  2
#define MINIVMM_FWCFG_FILE_STRATEGY         3   /* optional: missing means MINIVMM_STRATEGY_RELOCATE_ALL_AT_BOOT */
#define MINIVMM_SMI_NEG_NO_DMA              1   /* FW_CFG_ID lacks FW_CFG_ID_DMA                            */
#define MINIVMM_SMI_NEG_DMA_ERROR           2   /* the DMA write of requested-features did not complete     */
#define MINIVMM_SMI_NEG_NOT_OK              3   /* etc/smi/features-ok read back != 1                       */
/* VMM -> firmware commands, read from MINIVMM_PORT_REPORT. */
#define MINIVMM_CMD_NONE            0
#define MINIVMM_CMD_FINISH          1           /* leave through isa-debug-exit with 0                      */
#define MINIVMM_DEBUG_EXIT_OK       0           /* value written to MINIVMM_PORT_DEBUG_EXIT on FINISH       */

/* ---- Strategies (fw_cfg file opt/org.minivmm/strategy, u32 LE) ----------------------------------------- */
#define MINIVMM_STRATEGY_RELOCATE_ALL_AT_BOOT   0
#define MINIVMM_STRATEGY_HOTPLUG_SMBASE_REG     1
#define MINIVMM_STRATEGY_SMRAM_AT_DEFAULT       2
#define MINIVMM_STRATEGY_NAIVE                  3

/* ---- Strategies B, C, N and the attack matrix ------------------------------------------------------------ */
#define MINIVMM_STRATEGY_COUNT                  4   /* the firmware's strategy_table has this many rows        */
/* fw_cfg file opt/org.minivmm/attack (u32 LE, optional: missing means MINIVMM_ATTACK_NONE). What the "OS" loop
 * does to a CPU it is about to hot-add. The VMM judges the outcome itself (the SMRAM canary below). */
#define MINIVMM_FWCFG_FILE_ATTACK           4
#define MINIVMM_ATTACK_NONE                 0
#define MINIVMM_ATTACK_PLANT                1   /* plant the payload at 0x38000 before the hot-add           */
#define MINIVMM_ATTACK_REPLANT              2   /* re-plant after every step of the hot-add, right up to its SMI */
#define MINIVMM_ATTACK_OS_IPIS              3   /* plant, then INIT/SIPI/SMI IPIs to the new CPU before firmware */
#define MINIVMM_ATTACK_DMA                  4   /* fw_cfg DMA aimed at SMRAM: the canary (and 0x38000)       */
#define MINIVMM_ATTACK_COUNT                5
/* The VMM's SMRAM canary: 8 bytes at TSEG base that the built-in firmware never touches (its tiles start at
 * TSEG base + SMM_HANDLER_OFFSET). The VMM fills them when TSEG closes and checks them at every RSM and at the
 * end; the attack payload, once it runs in SMM, overwrites them with MINIVMM_ATTACK_MARKER. */
#define MINIVMM_SMRAM_CANARY_OFFSET         0x0
#define MINIVMM_ATTACK_MARKER               0x4B435441  /* "ATCK" */
/* APM commands (ICH9 APM_CNT, port 0xB2) the firmware's SMI handlers act on; APM_STS (0xB3) carries
 * MINIVMM_APM_STS_REQUEST from the writer until the monarch (APIC ID 0) has handled it and cleared it. */
#define MINIVMM_APM_CMD_CPU_HOTPLUG         0x04        /* OVMF ICH9_APM_CNT_CPU_HOTPLUG (strategy C)            */
#define MINIVMM_APM_CMD_PROGRAM_SMBASE      0x05        /* strategy B: program every SMBASE register from SMM    */
#define MINIVMM_APM_STS_REQUEST             0x5A
/* Strategy C (OVMF CpuHotplugSmm): the first-SMI handler's context at the default SMBASE, inside the window
 * MCH 0x9C locks as SMRAM (FIRST_SMI_HANDLER_CONTEXT offsets), and the post-SMM pen below 1 MiB. */
#define MINIVMM_DEFAULT_SMRAM_BASE          0x30000
#define MINIVMM_DEFAULT_SMRAM_SIZE          0x20000     /* QEMU MCH_HOST_BRIDGE_SMBASE_SIZE (128 KiB)            */
#define MINIVMM_FIRST_SMI_CTX               0x30000
#define MINIVMM_FIRST_SMI_CTX_GATE          0x0         /* u64 APIC ID gate (all-ones: closed)                   */
#define MINIVMM_FIRST_SMI_CTX_NEW_SMBASE    0x8         /* u32                                                    */
#define MINIVMM_FIRST_SMI_CTX_LEAVING       0x15        /* u8 AboutToLeaveSmm                                     */
#define MINIVMM_POST_SMM_PEN                0x7000      /* SIPI vector 0x07: pen page; it sets byte 0xFFF        */
#define MINIVMM_POST_SMM_PEN_VECTOR         0x07
#define MINIVMM_POST_SMM_PEN_FLAG           0xFFF       /* u8 in the pen page: the pen sets it to 1 (OVMF: byte 0xFFF) */
#define MINIVMM_FIRST_SMI_GATE_CLOSED       0xFFFFFFFF  /* each dword of the closed u64 gate (OVMF: MAX_UINT64)     */
#define MINIVMM_ATTACK_DMA_LENGTH           8           /* bytes of FW_CFG_SIGNATURE each DMA attack reads into SMRAM */
/* APM_STS values the monarch leaves when it has handled a request (the writer waits until it is no longer
 * MINIVMM_APM_STS_REQUEST). ERROR: strategy C, a hot-added CPU never reached AboutToLeaveSmm. */
#define MINIVMM_APM_STS_DONE                0x00
#define MINIVMM_APM_STS_ERROR               0xEE
/* SMM-private data in the first 32 KiB of TSEG, below CPU 0's entry point (TSEG base + SMM_HANDLER_OFFSET);
 * offsets from TSEG base. The first 4 KiB (the VMM's canary) is never written. Written by the firmware before
 * TSEG closes and used only by the monarch (APIC ID 0, whose SMBASE is TSEG base): the TSEG entry stub of
 * APIC ID 0 jumps to the common handler at CS:MINIVMM_SMM_COMMON_CODE (CS base = SMBASE = TSEG base). */
#define MINIVMM_SMM_COMMON_DATA             0x1000      /* u32 fields below                                     */
#define MINIVMM_SMM_DATA_TSEG_BASE          0x0         /*   TSEG base                                          */
#define MINIVMM_SMM_DATA_MAX_CPUS           0x4         /*   possible CPUs                                      */
#define MINIVMM_SMM_DATA_STRATEGY           0x8         /*   strategy (the monarch honours only its own command) */
#define MINIVMM_SMM_DATA_STATUS             0xC         /*   u8: the APM_STS value the monarch will leave       */
#define MINIVMM_SMM_DATA_SCRATCH            0x10        /*   u32: a saved register (SMM code has no stack)      */
#define MINIVMM_SMM_COMMON_CODE             0x1100      /* the monarch's common SMI handler (16-bit code)       */
#define MINIVMM_SMM_COMMON_CODE_MAX         0x0F00
#define MINIVMM_SMM_RELOCATED_TABLE         0x2000      /* u8 per possible CPU: 1 = SMBASE relocated (strategy C) */
/* Bounded waits inside SMM (each instruction about 1 us on the emulated backend under its breakpoints, about 8 us
 * where it has to single-step): iterations before giving up. The monarch re-sends the pen SIPI every MINIVMM_SMM_SIPI_RESEND
 * iterations while it waits for the pen (a SIPI only starts a CPU that waits for SIPI; others drop it). */
#define MINIVMM_SMM_SPIN_LIMIT              0x10000
#define MINIVMM_SMM_SIPI_RESEND             0x400
/* The OS loop re-sends the hot-add SIPI every MINIVMM_SIPI_RESEND pause iterations while it waits for the AP
 * (an INIT that reached the CPU in SMM is latched and delivered after RSM, after the SIPIs were dropped). */
#define MINIVMM_SIPI_RESEND                 0x10000
/* Once a hot-added CPU is online, how long the OS waits (pause iterations) for the SMI it sent before the
 * INIT-SIPI-SIPI to be counted before it sends another: an SMI pending together with an INIT the CPU latched in
 * SMM (an attack's SMI) is lost at RSM, when KVM's kvm_vcpu_reset clears smi_pending. Normally the SMI was taken
 * before the CPU's first instruction, so the count has moved by the time the CPU is online. */
#define MINIVMM_HOTADD_SMI_WAIT             0x10000
/* ATTACK_OS_IPIS: how long the OS waits (pause iterations) for its own SMI to be counted before it goes on. */
#define MINIVMM_ATTACK_WAIT_LIMIT           0x40000
/* Report codes of the strategies and attacks (MINIVMM_PORT_REPORT, value = code << 24 | arg). */
#define REPORT_ATTACK                       0x0F        /* arg: MINIVMM_ATTACK_* | CPU << 8, before the hot-add  */
#define REPORT_ATTACK_DMA                   0x10        /* arg: DMA control read back (bit0 error) | target << 8 */
#define REPORT_SMBASE_PROGRAMMED            0x11        /* strategy B: every SMBASE register written; arg: count */
#define REPORT_DEFAULT_SMRAM_LOCKED         0x12        /* strategy C: MCH 0x9C locked; arg: value read back     */
#define MINIVMM_ATTACK_DMA_TARGET_CANARY    0           /* TSEG base + MINIVMM_SMRAM_CANARY_OFFSET              */
#define MINIVMM_ATTACK_DMA_TARGET_DEFAULT   1           /* SMM_DEFAULT_SMBASE + SMM_HANDLER_OFFSET (strategy C)  */
/* More MINIVMM_FAIL_* reasons. */
#define MINIVMM_FAIL_BAD_ATTACK             11          /* detail: attack id >= MINIVMM_ATTACK_COUNT            */
#define MINIVMM_FAIL_BAD_BOOT_CPUS          12          /* detail: boot CPUs (0 or more than max CPUs)          */
#define MINIVMM_FAIL_NO_DEFAULT_SMRAM       13          /* detail: MCH 0x9C read back (query or lock)           */
#define MINIVMM_FAIL_SMM_REQUEST            14          /* detail: APM_STS read back | APM command << 8         */

/* ---- Conformance firmware (guest/conformance_image.S, `--firmware builtin:conformance`) ------------------ */
/* It prints one `PASS name` or `FAIL name: expected X got Y` line per check and a `SUMMARY:` line on the debug
 * console, then writes one of these to MINIVMM_PORT_DEBUG_EXIT (status (v << 1) | 1: 1 = every check passed). */
#define MINIVMM_CONFORMANCE_EXIT_PASS       0
#define MINIVMM_CONFORMANCE_EXIT_FAIL       1

#endif
