// SPDX-License-Identifier: MIT
internal import GuestFirmware

/// The firmware image embedded in the minivmm binary (assembled from `guest/` by `swift build`).
///
/// The firmware <-> VMM contract (addresses, ports, report codes) is not repeated here: Swift code imports
/// the C module `GuestFirmware`, whose header includes `guest/include/minivmm_contract.h`.
public enum FirmwareImage {
    /// The bytes of the built-in flat image, exactly as QEMU's `-bios FILE` would load them.
    public static var builtin: [UInt8] {
        // SAFETY: both symbols are defined by guest/firmware_image.S around the same section; the image is
        // immutable read-only data for the life of the process.
        guard let start = GuestFirmware.minivmm_firmware_start_ptr(),
            let end = GuestFirmware.minivmm_firmware_end_ptr()
        else { return [] }
        return Array(UnsafeRawBufferPointer(start: start, count: end - start))
    }

    /// The built-in image assembled without the SMM entry probe (`guest/firmware_image_noprobe.S`): its SMI
    /// handlers give the VMM no exit at entry, as a foreign firmware's would.
    public static var builtinNoProbe: [UInt8] {
        // SAFETY: both symbols are defined by guest/firmware_image_noprobe.S around the same section; the image is
        // immutable read-only data for the life of the process.
        guard let start = GuestFirmware.minivmm_firmware_noprobe_start_ptr(),
            let end = GuestFirmware.minivmm_firmware_noprobe_end_ptr()
        else { return [] }
        return Array(UnsafeRawBufferPointer(start: start, count: end - start))
    }

    /// A built-in image by its `--firmware builtin:NAME` name (nil: no such image).
    public static func named(_ name: String) -> [UInt8]? {
        switch name {
        case "noprobe": builtinNoProbe
        case "conformance": conformance
        case "conformance-noprobe": conformanceNoProbe
        case "conformance-badrsm": conformanceBadRSM
        default: nil
        }
    }

    /// The bytes of the conformance firmware (`--firmware builtin:conformance`, guest/conformance_image.S): it checks
    /// SMM semantics from inside the guest and prints one `PASS`/`FAIL` line per check on the debug console.
    public static var conformance: [UInt8] {
        // SAFETY: both symbols are defined by guest/conformance_image.S around the same section; the image is
        // immutable read-only data for the life of the process.
        guard let start = GuestFirmware.minivmm_conformance_start_ptr(),
            let end = GuestFirmware.minivmm_conformance_end_ptr()
        else { return [] }
        return Array(UnsafeRawBufferPointer(start: start, count: end - start))
    }

    /// The conformance firmware without its SMM entry probe (`--firmware builtin:conformance-noprobe`,
    /// guest/conformance_image_noprobe.S): the same checks, a handler that gives the VMM no exit at entry.
    public static var conformanceNoProbe: [UInt8] {
        // SAFETY: both symbols are defined by guest/conformance_image_noprobe.S around the same section; the image is
        // immutable read-only data for the life of the process.
        guard let start = GuestFirmware.minivmm_conformance_noprobe_start_ptr(),
            let end = GuestFirmware.minivmm_conformance_noprobe_end_ptr()
        else { return [] }
        return Array(UnsafeRawBufferPointer(start: start, count: end - start))
    }

    /// The conformance firmware's invalid-RSM run (`--firmware builtin:conformance-badrsm`,
    /// guest/conformance_image_badrsm.S): setup, then an RSM whose saved CR0 has PG without PE, which KVM answers
    /// with a triple fault (the run's outcome).
    public static var conformanceBadRSM: [UInt8] {
        // SAFETY: both symbols are defined by guest/conformance_image_badrsm.S around the same section; the image is
        // immutable read-only data for the life of the process.
        guard let start = GuestFirmware.minivmm_conformance_badrsm_start_ptr(),
            let end = GuestFirmware.minivmm_conformance_badrsm_end_ptr()
        else { return [] }
        return Array(UnsafeRawBufferPointer(start: start, count: end - start))
    }
}
