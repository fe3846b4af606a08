// SPDX-License-Identifier: MIT
public import CKVM

/// The two SMRAM state-save map layouts KVM writes (`union kvm_smram` in arch/x86/kvm/smm.h).
///
/// KVM picks the layout from the guest CPUID long-mode bit only (`guest_cpu_cap_has(vcpu, X86_FEATURE_LM)` in
/// `enter_smm()` and `emulator_leave_smm()`), never from the current mode, and uses the AMD64 layout on Intel hosts
/// too.
public enum SaveStateFormat: String, Codable, Sendable, CaseIterable {
    /// `struct kvm_smram_state_32`: the P6 32-bit map, revision 0x00020000.
    case legacy32
    /// `struct kvm_smram_state_64`: the AMD64 map, revision 0x00020064.
    case amd64

    /// The SMM revision identifier KVM stores at SMBASE+0xFEFC (bits 17/16 = SMBASE relocation / I/O restart
    /// supported, SDM §34.9; KVM never reads it back).
    public var revision: UInt32 {
        switch self {
        case .legacy32: 0x0002_0000
        case .amd64: 0x0002_0064
        }
    }

    /// Offset of the SMBASE field from SMBASE: where `enter_smm` stores the current SMBASE and where RSM reloads it
    /// from (SDM 7EF8H for the 32-bit map, AMD64 FF00h).
    public var smbaseFieldOffset: UInt32 {
        switch self {
        case .legacy32: SaveStateMap.Legacy32.smbase
        case .amd64: SaveStateMap.AMD64.smbase
        }
    }

    /// KVM's choice: the AMD64 map iff the guest CPUID has LM (CPUID 0x80000001 EDX bit 29).
    public static func forGuest(longModeCPUID: Bool) -> SaveStateFormat {
        longModeCPUID ? .amd64 : .legacy32
    }
}

/// The segment registers in KVM's `VCPU_SREG_*` order (ES = 0, CS, SS, DS, FS, GS), the index `enter_smm_save_seg_*`
/// and `rsm_load_seg_*` use.
public enum SegmentRegister: Int, CaseIterable, Sendable {
    case es = 0, cs, ss, ds, fs, gs

    /// The matching field of `struct kvm_sregs`.
    public var keyPath: WritableKeyPath<kvm_sregs, kvm_segment> {
        switch self {
        case .es: \.es
        case .cs: \.cs
        case .ss: \.ss
        case .ds: \.ds
        case .fs: \.fs
        case .gs: \.gs
        }
    }
}

/// The fields RSM loads from a state-save map (KVM `rsm_load_state_32` / `rsm_load_state_64`), already converted to
/// the `kvm_segment` / `kvm_dtable` form KVM hands to `kvm_set_segment` / `set_gdt` / `set_idt`.
public struct DecodedSaveState: Sendable, Equatable {
    /// General-purpose registers by KVM register number (``GPR``): 8 entries (EAX…EDI, zero-extended) for
    /// ``SaveStateFormat/legacy32``, 16 (RAX…R15) for ``SaveStateFormat/amd64``.
    public var gprs: [UInt64]
    public var rip: UInt64
    /// RFLAGS as stored; RSM ORs in `X86_EFLAGS_FIXED`.
    public var rflags: UInt64
    public var cr0: UInt64
    public var cr3: UInt64
    public var cr4: UInt64
    public var dr6: UInt64
    public var dr7: UInt64
    /// EFER at SMBASE+0xFED0; `nil` for the 32-bit map, which has no EFER field.
    public var efer: UInt64?
    /// ES, CS, SS, DS, FS, GS in ``SegmentRegister`` order, flags decoded by `rsm_set_desc_flags`
    /// (`unusable = !present`, `padding = 0`).
    public var segments: [kvm_segment]
    public var tr: kvm_segment
    public var ldtr: kvm_segment
    public var gdtr: kvm_dtable
    public var idtr: kvm_dtable
    /// The SMBASE field, which RSM loads into the SMBASE register.
    public var smbase: UInt32
    /// The revision identifier (informational: KVM does not check it).
    public var revision: UInt32
    /// KVM's `int_shadow` extension field.
    public var interruptShadow: UInt8
    /// The auto-HALT restart field (KVM never sets it and RSM ignores it).
    public var autoHALTRestart: UInt16
    /// The I/O instruction restart field (KVM never sets it and RSM ignores it).
    public var ioInstructionRestart: UInt16

    public static func == (lhs: DecodedSaveState, rhs: DecodedSaveState) -> Bool {
        lhs.gprs == rhs.gprs && lhs.rip == rhs.rip && lhs.rflags == rhs.rflags && lhs.cr0 == rhs.cr0
            && lhs.cr3 == rhs.cr3 && lhs.cr4 == rhs.cr4 && lhs.dr6 == rhs.dr6 && lhs.dr7 == rhs.dr7
            && lhs.efer == rhs.efer && lhs.segments.count == rhs.segments.count
            && zip(lhs.segments, rhs.segments).allSatisfy { bytesEqual($0, $1) } && bytesEqual(lhs.tr, rhs.tr)
            && bytesEqual(lhs.ldtr, rhs.ldtr) && bytesEqual(lhs.gdtr, rhs.gdtr) && bytesEqual(lhs.idtr, rhs.idtr)
            && lhs.smbase == rhs.smbase && lhs.revision == rhs.revision
            && lhs.interruptShadow == rhs.interruptShadow && lhs.autoHALTRestart == rhs.autoHALTRestart
            && lhs.ioInstructionRestart == rhs.ioInstructionRestart
    }
}

/// The 512-byte SMM state-save map KVM writes at SMBASE+0xFE00 on SMI entry and reads back on RSM.
///
/// Models `enter_smm_save_state_32` / `enter_smm_save_state_64` and `rsm_load_state_32` / `rsm_load_state_64` in
/// arch/x86/kvm/smm.c (layouts checked there by `check_smram_offsets()`); see reference/kvm-smm.md §1. Every offset
/// is named once, relative to SMBASE as in KVM's `CHECK_SMRAM*_OFFSET` table (SDM "7Exx/7Fxx" + 0x8000).
public enum SaveStateMap {
    /// Offset of the map from SMBASE (SDM: the state is stored at SMBASE+FE00H–FFFFH).
    public static let offsetFromSMBASE: UInt32 = 0xFE00
    /// `sizeof(union kvm_smram)`.
    public static let size = 512

    /// `struct kvm_smram_state_32` field offsets from SMBASE.
    public enum Legacy32 {
        public static let smbase: UInt32 = 0xFEF8
        public static let revision: UInt32 = 0xFEFC
        public static let ioInstructionRestart: UInt32 = 0xFF00
        public static let autoHALTRestart: UInt32 = 0xFF02
        public static let cr4: UInt32 = 0xFF14
        /// KVM extension (u8) in the reserved area after `reserved2`.
        public static let interruptShadow: UInt32 = 0xFF1A
        /// Segment caches are `{u32 flags; u32 limit; u32 base}` (`struct kvm_smm_seg_state_32`).
        public static let dsCache: UInt32 = 0xFF2C
        public static let fsCache: UInt32 = 0xFF38
        public static let gsCache: UInt32 = 0xFF44
        /// IDTR `{flags (unused); limit; base}`.
        public static let idtr: UInt32 = 0xFF50
        public static let trCache: UInt32 = 0xFF5C
        /// GDTR `{flags (unused); limit; base}`.
        public static let gdtr: UInt32 = 0xFF6C
        public static let ldtrCache: UInt32 = 0xFF78
        public static let esCache: UInt32 = 0xFF84
        public static let csCache: UInt32 = 0xFF90
        public static let ssCache: UInt32 = 0xFF9C
        /// u32 selectors, ES…GS in ``SegmentRegister`` order (`0x7fa8 + n * 4`).
        public static let esSelector: UInt32 = 0xFFA8
        public static let ldtrSelector: UInt32 = 0xFFC0
        public static let trSelector: UInt32 = 0xFFC4
        public static let dr7: UInt32 = 0xFFC8
        public static let dr6: UInt32 = 0xFFCC
        /// EAX…EDI in KVM register-number order, u32 each.
        public static let gprs: UInt32 = 0xFFD0
        public static let eip: UInt32 = 0xFFF0
        public static let eflags: UInt32 = 0xFFF4
        public static let cr3: UInt32 = 0xFFF8
        public static let cr0: UInt32 = 0xFFFC

        /// Within a segment cache.
        static let cacheFlags: UInt32 = 0x0
        static let cacheLimit: UInt32 = 0x4
        static let cacheBase: UInt32 = 0x8
        /// Within the GDTR/IDTR records.
        static let tableLimit: UInt32 = 0x4
        static let tableBase: UInt32 = 0x8
        static let selectorStride: UInt32 = 4
        static let gprStride: UInt32 = 4
        static let gprCount = 8

        /// The cache of segment register `n` (KVM: `n < 3 ? 0x7f84 + n * 12 : 0x7f2c + (n - 3) * 12`).
        static func cache(_ seg: SegmentRegister) -> UInt32 {
            switch seg {
            case .es: esCache
            case .cs: csCache
            case .ss: ssCache
            case .ds: dsCache
            case .fs: fsCache
            case .gs: gsCache
            }
        }

        static func selector(_ seg: SegmentRegister) -> UInt32 {
            esSelector + UInt32(seg.rawValue) * selectorStride
        }
    }

    /// `struct kvm_smram_state_64` field offsets from SMBASE.
    public enum AMD64 {
        /// Segment records are `{u16 selector; u16 attributes; u32 limit; u64 base}`, ES…GS in ``SegmentRegister``
        /// order (`struct kvm_smm_seg_state_64`).
        public static let esRecord: UInt32 = 0xFE00
        public static let gdtr: UInt32 = 0xFE60
        public static let ldtr: UInt32 = 0xFE70
        public static let idtr: UInt32 = 0xFE80
        public static let tr: UInt32 = 0xFE90
        public static let ioInstructionRestart: UInt32 = 0xFEC8
        public static let autoHALTRestart: UInt32 = 0xFEC9
        /// "not used by KVM".
        public static let amdNMIMask: UInt32 = 0xFECA
        /// KVM extension (u8).
        public static let interruptShadow: UInt32 = 0xFECB
        public static let efer: UInt32 = 0xFED0
        public static let revision: UInt32 = 0xFEFC
        public static let smbase: UInt32 = 0xFF00
        public static let cr4: UInt32 = 0xFF48
        public static let cr3: UInt32 = 0xFF50
        public static let cr0: UInt32 = 0xFF58
        public static let dr7: UInt32 = 0xFF60
        public static let dr6: UInt32 = 0xFF68
        public static let rflags: UInt32 = 0xFF70
        public static let rip: UInt32 = 0xFF78
        /// `gprs[16]` in reverse register order: R15 at 0xFF80 … RAX at 0xFFF8 (`gprs[15 - i] = reg i`).
        public static let gprs: UInt32 = 0xFF80

        /// Within a segment / descriptor-table record.
        static let recordSelector: UInt32 = 0x0
        static let recordAttributes: UInt32 = 0x2
        static let recordLimit: UInt32 = 0x4
        static let recordBase: UInt32 = 0x8
        static let recordStride: UInt32 = 16
        static let gprStride: UInt32 = 8
        static let gprCount = 16

        static func record(_ seg: SegmentRegister) -> UInt32 { esRecord + UInt32(seg.rawValue) * recordStride }

        /// Where register number `i` is stored.
        static func gpr(_ i: Int) -> UInt32 { gprs + UInt32(gprCount - 1 - i) * gprStride }
    }

    /// The 32-bit segment flags word (`enter_smm_get_segment_flags`): the attribute bits at their positions in the
    /// descriptor's high dword. The AMD64 map stores it shifted right by 8.
    public static func segmentFlags(_ seg: kvm_segment) -> UInt32 {
        UInt32(seg.g & 1) << 23 | UInt32(seg.db & 1) << 22 | UInt32(seg.l & 1) << 21 | UInt32(seg.avl & 1) << 20
            | UInt32(seg.present & 1) << 15 | UInt32(seg.dpl & 3) << 13 | UInt32(seg.s & 1) << 12
            | UInt32(seg.type & 0xF) << 8
    }

    /// A segment from its saved fields (`rsm_set_desc_flags`): `unusable = !present`, `padding = 0`.
    public static func segment(selector: UInt16, base: UInt64, limit: UInt32, flags: UInt32) -> kvm_segment {
        let present = UInt8((flags >> 15) & 1)
        return kvm_segment(
            selector: selector, base: base, limit: limit, type: UInt8((flags >> 8) & 0xF),
            s: UInt8((flags >> 12) & 1), dpl: UInt8((flags >> 13) & 3), present: present,
            db: UInt8((flags >> 22) & 1), l: UInt8((flags >> 21) & 1), g: UInt8((flags >> 23) & 1),
            avl: UInt8((flags >> 20) & 1), unusable: present == 0 ? 1 : 0)
    }

    /// The 512-byte image `enter_smm` writes at `smbase + 0xFE00`: zero-filled, then every field KVM saves.
    /// Auto-HALT and I/O restart stay 0 ("not implemented by KVM").
    public static func encode(_ s: ArchState, smbase: UInt32, format: SaveStateFormat) -> [UInt8] {
        var image = Image()
        switch format {
        case .legacy32: encode32(s, smbase: smbase, into: &image)
        case .amd64: encode64(s, smbase: smbase, into: &image)
        }
        return image.bytes
    }

    /// The fields RSM loads from a 512-byte image read at `smbase + 0xFE00`.
    public static func decode(_ bytes: [UInt8], format: SaveStateFormat) -> DecodedSaveState {
        precondition(bytes.count == size, "an SMM state-save map is \(size) bytes, got \(bytes.count)")
        let image = Image(bytes: bytes)
        switch format {
        case .legacy32: return decode32(image)
        case .amd64: return decode64(image)
        }
    }

    // MARK: 32-bit map (enter_smm_save_state_32 / rsm_load_state_32)

    private typealias L = Legacy32

    private static func encode32(_ s: ArchState, smbase: UInt32, into image: inout Image) {
        image.put32(L.cr0, s.sregs.cr0)
        image.put32(L.cr3, s.sregs.cr3)
        image.put32(L.eflags, s.regs.rflags)
        image.put32(L.eip, s.regs.rip)
        for gpr in GPR.allCases.prefix(L.gprCount) {
            image.put32(L.gprs + UInt32(gpr.rawValue) * L.gprStride, s.regs[gpr])
        }
        image.put32(L.dr6, s.dr6)
        image.put32(L.dr7, s.dr7)
        image.put32(L.trSelector, UInt64(s.sregs.tr.selector))
        image.putCache32(L.trCache, s.sregs.tr)
        image.put32(L.ldtrSelector, UInt64(s.sregs.ldt.selector))
        image.putCache32(L.ldtrCache, s.sregs.ldt)
        image.put32(L.gdtr + L.tableBase, s.sregs.gdt.base)
        image.put32(L.gdtr + L.tableLimit, UInt64(s.sregs.gdt.limit))
        image.put32(L.idtr + L.tableBase, s.sregs.idt.base)
        image.put32(L.idtr + L.tableLimit, UInt64(s.sregs.idt.limit))
        for seg in SegmentRegister.allCases {
            let value = s.sregs[keyPath: seg.keyPath]
            image.put32(L.selector(seg), UInt64(value.selector))
            image.putCache32(L.cache(seg), value)
        }
        image.put32(L.cr4, s.sregs.cr4)
        image.put32(L.revision, UInt64(SaveStateFormat.legacy32.revision))
        image.put32(L.smbase, UInt64(smbase))
        image.put8(L.interruptShadow, s.interruptShadow)
    }

    private static func decode32(_ image: Image) -> DecodedSaveState {
        func seg(selectorAt selector: UInt32, cacheAt cache: UInt32) -> kvm_segment {
            segment(
                selector: UInt16(truncatingIfNeeded: image.get32(selector)),
                base: UInt64(image.get32(cache + L.cacheBase)),
                limit: image.get32(cache + L.cacheLimit), flags: image.get32(cache + L.cacheFlags))
        }
        func table(_ at: UInt32) -> kvm_dtable {
            kvm_dtable(
                base: UInt64(image.get32(at + L.tableBase)),
                limit: UInt16(truncatingIfNeeded: image.get32(at + L.tableLimit)))
        }
        return DecodedSaveState(
            gprs: (0..<L.gprCount).map { UInt64(image.get32(L.gprs + UInt32($0) * L.gprStride)) },
            rip: UInt64(image.get32(L.eip)), rflags: UInt64(image.get32(L.eflags)), cr0: UInt64(image.get32(L.cr0)),
            cr3: UInt64(image.get32(L.cr3)), cr4: UInt64(image.get32(L.cr4)), dr6: UInt64(image.get32(L.dr6)),
            dr7: UInt64(image.get32(L.dr7)), efer: nil,
            segments: SegmentRegister.allCases.map { seg(selectorAt: L.selector($0), cacheAt: L.cache($0)) },
            tr: seg(selectorAt: L.trSelector, cacheAt: L.trCache),
            ldtr: seg(selectorAt: L.ldtrSelector, cacheAt: L.ldtrCache), gdtr: table(L.gdtr), idtr: table(L.idtr),
            smbase: image.get32(L.smbase), revision: image.get32(L.revision),
            interruptShadow: image.get8(L.interruptShadow), autoHALTRestart: image.get16(L.autoHALTRestart),
            ioInstructionRestart: image.get16(L.ioInstructionRestart))
    }

    // MARK: AMD64 map (enter_smm_save_state_64 / rsm_load_state_64)

    private typealias A = AMD64

    private static func encode64(_ s: ArchState, smbase: UInt32, into image: inout Image) {
        for gpr in GPR.allCases {
            image.put64(A.gpr(gpr.rawValue), s.regs[gpr])
        }
        image.put64(A.rip, s.regs.rip)
        image.put64(A.rflags, s.regs.rflags)
        image.put64(A.dr6, s.dr6)
        image.put64(A.dr7, s.dr7)
        image.put64(A.cr0, s.sregs.cr0)
        image.put64(A.cr3, s.sregs.cr3)
        image.put64(A.cr4, s.sregs.cr4)
        image.put32(A.smbase, UInt64(smbase))
        image.put32(A.revision, UInt64(SaveStateFormat.amd64.revision))
        image.put64(A.efer, s.sregs.efer)
        image.putRecord64(A.tr, s.sregs.tr)
        image.putTable64(A.idtr, s.sregs.idt)
        image.putRecord64(A.ldtr, s.sregs.ldt)
        image.putTable64(A.gdtr, s.sregs.gdt)
        for seg in SegmentRegister.allCases {
            image.putRecord64(A.record(seg), s.sregs[keyPath: seg.keyPath])
        }
        image.put8(A.interruptShadow, s.interruptShadow)
    }

    private static func decode64(_ image: Image) -> DecodedSaveState {
        func seg(_ at: UInt32) -> kvm_segment {
            segment(
                selector: image.get16(at + A.recordSelector), base: image.get64(at + A.recordBase),
                limit: image.get32(at + A.recordLimit), flags: UInt32(image.get16(at + A.recordAttributes)) << 8)
        }
        func table(_ at: UInt32) -> kvm_dtable {
            kvm_dtable(
                base: image.get64(at + A.recordBase),
                limit: UInt16(truncatingIfNeeded: image.get32(at + A.recordLimit)))
        }
        return DecodedSaveState(
            gprs: (0..<A.gprCount).map { image.get64(A.gpr($0)) }, rip: image.get64(A.rip),
            rflags: image.get64(A.rflags), cr0: image.get64(A.cr0), cr3: image.get64(A.cr3), cr4: image.get64(A.cr4),
            dr6: image.get64(A.dr6), dr7: image.get64(A.dr7), efer: image.get64(A.efer),
            segments: SegmentRegister.allCases.map { seg(A.record($0)) }, tr: seg(A.tr), ldtr: seg(A.ldtr),
            gdtr: table(A.gdtr), idtr: table(A.idtr), smbase: image.get32(A.smbase), revision: image.get32(A.revision),
            interruptShadow: image.get8(A.interruptShadow), autoHALTRestart: UInt16(image.get8(A.autoHALTRestart)),
            ioInstructionRestart: UInt16(image.get8(A.ioInstructionRestart)))
    }
}

/// Little-endian accessors over the 512-byte image, addressed by offset from SMBASE.
private struct Image {
    var bytes: [UInt8]

    init(bytes: [UInt8] = [UInt8](repeating: 0, count: SaveStateMap.size)) { self.bytes = bytes }

    private func index(_ offset: UInt32) -> Int { Int(offset - SaveStateMap.offsetFromSMBASE) }

    private mutating func put(_ offset: UInt32, _ value: UInt64, width: Int) {
        let start = index(offset)
        for i in 0..<width { bytes[start + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    private func get(_ offset: UInt32, width: Int) -> UInt64 {
        let start = index(offset)
        return (0..<width).reduce(0) { $0 | UInt64(bytes[start + $1]) << (8 * UInt64($1)) }
    }

    mutating func put8(_ offset: UInt32, _ value: UInt8) { put(offset, UInt64(value), width: 1) }
    mutating func put16(_ offset: UInt32, _ value: UInt16) { put(offset, UInt64(value), width: 2) }
    /// Stores the low 32 bits, as KVM's assignments to `u32` fields do.
    mutating func put32(_ offset: UInt32, _ value: UInt64) { put(offset, value, width: 4) }
    mutating func put64(_ offset: UInt32, _ value: UInt64) { put(offset, value, width: 8) }
    func get8(_ offset: UInt32) -> UInt8 { UInt8(get(offset, width: 1)) }
    func get16(_ offset: UInt32) -> UInt16 { UInt16(get(offset, width: 2)) }
    func get32(_ offset: UInt32) -> UInt32 { UInt32(get(offset, width: 4)) }
    func get64(_ offset: UInt32) -> UInt64 { get(offset, width: 8) }

    /// `struct kvm_smm_seg_state_32` (`enter_smm_save_seg_32`).
    mutating func putCache32(_ offset: UInt32, _ seg: kvm_segment) {
        put32(offset + SaveStateMap.Legacy32.cacheFlags, UInt64(SaveStateMap.segmentFlags(seg)))
        put32(offset + SaveStateMap.Legacy32.cacheLimit, UInt64(seg.limit))
        put32(offset + SaveStateMap.Legacy32.cacheBase, seg.base)
    }

    /// `struct kvm_smm_seg_state_64` (`enter_smm_save_seg_64`): attributes = flags >> 8.
    mutating func putRecord64(_ offset: UInt32, _ seg: kvm_segment) {
        put16(offset + SaveStateMap.AMD64.recordSelector, seg.selector)
        put16(
            offset + SaveStateMap.AMD64.recordAttributes,
            UInt16(truncatingIfNeeded: SaveStateMap.segmentFlags(seg) >> 8))
        put32(offset + SaveStateMap.AMD64.recordLimit, UInt64(seg.limit))
        put64(offset + SaveStateMap.AMD64.recordBase, seg.base)
    }

    /// GDTR/IDTR in the AMD64 map: u32 limit, u64 base (selector/attributes unused).
    mutating func putTable64(_ offset: UInt32, _ table: kvm_dtable) {
        put32(offset + SaveStateMap.AMD64.recordLimit, UInt64(table.limit))
        put64(offset + SaveStateMap.AMD64.recordBase, table.base)
    }
}
