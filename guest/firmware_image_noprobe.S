/* SPDX-License-Identifier: MIT
 *
 * The built-in firmware without the SMM entry probe (`minivmm run --firmware builtin:noprobe`): the same image
 * as firmware_image.S, assembled a second time with MINIVMM_NO_ENTRY_PROBE so that SMM_ENTRY_PROBE (macros.inc)
 * is empty, between its own global symbols. Its SMI handlers give the VMM no exit at entry, like a firmware that
 * knows nothing of minivmm: the kvm backend must observe it from KVM's state alone (issue 9, gap 4).
 */
#define MINIVMM_NO_ENTRY_PROBE 1
#define minivmm_firmware_start minivmm_firmware_noprobe_start
#define minivmm_firmware_end minivmm_firmware_noprobe_end
#include "firmware_image.S"
