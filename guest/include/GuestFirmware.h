/* SPDX-License-Identifier: MIT */
#ifndef GUEST_FIRMWARE_H
#define GUEST_FIRMWARE_H
#include "minivmm_contract.h"
/* Start and end of the flat firmware image assembled from guest/ *.S (see firmware_image.S). */
extern const unsigned char minivmm_firmware_start[];
extern const unsigned char minivmm_firmware_end[];
static inline const void *minivmm_firmware_start_ptr(void) { return minivmm_firmware_start; }
static inline const void *minivmm_firmware_end_ptr(void) { return minivmm_firmware_end; }
/* The same image without the SMM entry probe (firmware_image_noprobe.S). */
extern const unsigned char minivmm_firmware_noprobe_start[];
extern const unsigned char minivmm_firmware_noprobe_end[];
static inline const void *minivmm_firmware_noprobe_start_ptr(void) { return minivmm_firmware_noprobe_start; }
static inline const void *minivmm_firmware_noprobe_end_ptr(void) { return minivmm_firmware_noprobe_end; }
/* Start and end of the conformance firmware image (see conformance_image.S). */
extern const unsigned char minivmm_conformance_start[];
extern const unsigned char minivmm_conformance_end[];
static inline const void *minivmm_conformance_start_ptr(void) { return minivmm_conformance_start; }
static inline const void *minivmm_conformance_end_ptr(void) { return minivmm_conformance_end; }

/* The conformance firmware without its SMM entry probe (conformance_image_noprobe.S). */
extern const unsigned char minivmm_conformance_noprobe_start[];
extern const unsigned char minivmm_conformance_noprobe_end[];
static inline const void *minivmm_conformance_noprobe_start_ptr(void) { return minivmm_conformance_noprobe_start; }
static inline const void *minivmm_conformance_noprobe_end_ptr(void) { return minivmm_conformance_noprobe_end; }

/* The conformance firmware's invalid-RSM run (conformance_image_badrsm.S). */
extern const unsigned char minivmm_conformance_badrsm_start[];
extern const unsigned char minivmm_conformance_badrsm_end[];
static inline const void *minivmm_conformance_badrsm_start_ptr(void) { return minivmm_conformance_badrsm_start; }
static inline const void *minivmm_conformance_badrsm_end_ptr(void) { return minivmm_conformance_badrsm_end; }
#endif
