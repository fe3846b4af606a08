/* SPDX-License-Identifier: MIT
 *
 * The conformance firmware without the SMM entry probe (`minivmm run --firmware builtin:conformance-noprobe`): the
 * same image as conformance_image.S, assembled a second time with C_NO_ENTRY_PROBE so that its SMI handler starts
 * with the register saves and gives the VMM no exit at entry, like a firmware that knows nothing of minivmm. The kvm
 * backend observes it from KVM's state alone (issue 9: "the same firmware without any entry probe gives a complete,
 * passing report on the kvm backend").
 */
#define C_NO_ENTRY_PROBE 1
#define minivmm_conformance_start minivmm_conformance_noprobe_start
#define minivmm_conformance_end minivmm_conformance_noprobe_end
#include "conformance_image.S"
