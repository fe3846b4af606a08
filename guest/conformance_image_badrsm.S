/* SPDX-License-Identifier: MIT
 *
 * The conformance firmware's invalid-RSM check (`minivmm run --firmware builtin:conformance-badrsm`): the same image
 * as conformance_image.S, assembled with C_BAD_RSM_ONLY, which skips the checks after setup and ends with an RSM
 * whose saved CR0 has PG without PE. KVM's RSM rejects it (kvm_set_cr0 in rsm_enter_protected_mode) and shuts the
 * machine down, so the check is the run's outcome in the VMM's report (a triple fault at that RSM), not a console
 * line.
 */
#define C_BAD_RSM_ONLY 1
#define minivmm_conformance_start minivmm_conformance_badrsm_start
#define minivmm_conformance_end minivmm_conformance_badrsm_end
#include "conformance_image.S"
