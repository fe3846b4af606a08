// SPDX-License-Identifier: MIT
import GuestFirmware

/// Tiny firmware images, assembled here byte by byte, that run one counted loop outside SMM or inside an SMI
/// handler: what `minivmm bench --smm-code` times (issue 9, gap 5) and what the SMM IDTR tests run (gap 1).
///
/// Layout of every image (4 KiB, ending at 4 GiB, so its isa-bios alias is 0xFF000...0xFFFFF):
/// - offset 0 (CS:IP = F000:F000 after the reset vector's near jump): the main code. It copies the handler
///   blob from the alias at 0xFF000 + `blobOffset` to the default SMI entry point SMBASE + 0x8000 (0x38000, RAM
///   before MCH 0x9C locks the window), then runs `main`, then writes AL to isa-debug-exit.
/// - `blobOffset`: the SMI handler blob, position-dependent (assembled for 0x38000).
public enum SMMCodeFirmware {
    /// Image size: one page.
    static let imageSize = 0x1000
    /// Where the handler blob sits in the image.
    static let blobOffset = 0x400
    /// Linear address of the SMI entry point at the default SMBASE: where the blob runs.
    public static let entry = UInt32(SMM_DEFAULT_SMBASE) + UInt32(SMM_HANDLER_OFFSET)
    /// The isa-bios alias of a 4 KiB image: image offset o is at physical `aliasBase + o`.
    static let aliasBase: UInt32 = 0x10_0000 - UInt32(imageSize)

    /// What the timed loop runs in.
    public enum Variant: String, CaseIterable, Sendable, Codable {
        /// The loop in the main code, in real mode, outside SMM; an SMI handler is installed but never run.
        case outside
        /// The loop in a real-mode SMI handler (the SMM entry state: 16-bit, CS base SMBASE), then RSM.
        case smmReal = "smm-real"
        /// The handler loads a GDT, enters 32-bit protected mode, loads its own IDT, runs the loop, then RSM.
        case smmProtected = "smm-pm32"
        /// The long-mode handler's code run outside SMM (a far jump to it; it ends with isa-debug-exit instead of
        /// RSM): the reference for `smmLong`, since long-mode code costs more than real-mode code on this host.
        case outsideLong = "outside-long"
        /// The handler builds identity page tables, enters long mode, loads its own IDT, runs the loop, then RSM.
        case smmLong = "smm-long"
        /// The real-mode handler with four more RSM opcodes in its data (never executed): more candidates than
        /// the four breakpoint slots, so the emulated backend single-steps it (the bound for such handlers).
        case smmStepped = "smm-stepped"
    }

    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
    static func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    /// `mov dx, port; out dx, al` (16- or 32-bit code: `mov dx, imm16` needs 66 in 32-bit code).
    static func out8(port: UInt16, code32: Bool = false) -> [UInt8] {
        (code32 ? [0x66] : []) + [0xBA] + le16(port) + [0xEE]
    }

    /// The SMM entry probe (`MINIVMM_PORT_SMM_ENTRY`), so the image also runs on the kvm backend.
    static let probe = out8(port: UInt16(MINIVMM_PORT_SMM_ENTRY))

    /// `mov ecx, n; l: dec ecx; jnz l` in 16-bit code: 1 + 2n instructions (n ≥ 1).
    static func loop16(_ n: UInt32) -> [UInt8] { [0x66, 0xB9] + le32(max(n, 1)) + [0x66, 0x49, 0x75, 0xFC] }
    /// The same loop in 32-bit code.
    static func loop32(_ n: UInt32) -> [UInt8] { [0xB9] + le32(max(n, 1)) + [0x49, 0x75, 0xFD] }
    /// The same loop in 64-bit code (0x49 is a REX prefix there: `dec ecx` is FF C9).
    static func loop64(_ n: UInt32) -> [UInt8] { [0xB9] + le32(max(n, 1)) + [0xFF, 0xC9, 0x75, 0xFC] }

    /// RSM.
    static let rsm: [UInt8] = [0x0F, 0xAA]

    /// The whole image: copy `blob` to the SMI entry point, run `main` (16-bit real mode, DS = 0xF000,
    /// ES = 0x3000 on entry), then `out 0xF4, al` (exit status (AL << 1) | 1) and HLT.
    public static func image(main: [UInt8], blob: [UInt8]) -> [UInt8] {
        precondition(blob.count <= imageSize - blobOffset - 0x20, "handler blob too large")
        var code: [UInt8] = [0xFA]  // cli
        code += [0xB8] + le16(UInt16(aliasBase >> 4)) + [0x8E, 0xD8]  // mov ax, 0xFF00; mov ds, ax
        code += [0xB8] + le16(UInt16(SMM_DEFAULT_SMBASE >> 4)) + [0x8E, 0xC0]  // mov ax, 0x3000; mov es, ax
        code += [0xBE] + le16(UInt16(blobOffset))  // mov si, blobOffset  (DS:SI = alias of the blob)
        code += [0xBF] + le16(UInt16(SMM_HANDLER_OFFSET))  // mov di, 0x8000
        code += [0xB9] + le16(UInt16(blob.count))  // mov cx, count
        code += [0xFC, 0xF3, 0xA4]  // cld; rep movsb
        code += main
        code += [0xE6, UInt8(MINIVMM_PORT_DEBUG_EXIT), 0xF4]  // out 0xF4, al; hlt
        precondition(code.count <= blobOffset, "main code overlaps the blob")
        var image = [UInt8](repeating: 0xF4, count: imageSize)
        image.replaceSubrange(0..<code.count, with: code)
        image.replaceSubrange(blobOffset..<(blobOffset + blob.count), with: blob)
        // Reset vector (offset 0xFF0, IP 0xFFF0): near jump to IP 0xF000 (offset 0).
        let rel = UInt16(truncatingIfNeeded: 0xF000 - (0xFFF0 + 3))
        image.replaceSubrange(0xFF0..<0xFF3, with: [0xE9] + le16(rel))
        return image
    }

    /// `xor al, al`: exit status 1 (success) when `main` leaves AL alone.
    static let statusOK: [UInt8] = [0x30, 0xC0]

    /// `out 0xB2, al`: an APM SMI (broadcast to the one CPU).
    static let apmSMI: [UInt8] = [0xE6, UInt8(MINIVMM_PORT_APM_CNT)]

    /// The benchmark image: `iterations` turns of a two-instruction loop in `variant`.
    public static func benchImage(_ variant: Variant, iterations: UInt32) -> [UInt8] {
        switch variant {
        case .outside:
            return image(main: loop16(iterations) + statusOK, blob: realModeHandler(body: []))
        case .smmReal:
            return image(main: apmSMI + statusOK, blob: realModeHandler(body: loop16(iterations)))
        case .smmProtected:
            return image(main: apmSMI + statusOK, blob: protectedModeHandler(body: loop32(iterations)))
        case .smmLong:
            return image(main: apmSMI + statusOK, blob: longModeHandler(body: loop64(iterations)))
        case .outsideLong:
            // Outside SMM DS has a 64 KiB limit: the main code writes the page tables through ES = 0x3000 and
            // far-jumps past the blob's own stores (CS base 0x30000, as at SMI entry). The body ends the run
            // itself: mov al, 0; out 0xF4, al; hlt.
            func store(_ at: UInt32, _ v: UInt32) -> [UInt8] {
                [0x26, 0x66, 0xC7, 0x06] + le16(UInt16(at & 0xFFFF)) + le32(v)
            }
            let tables = store(lmPML4, lmPDPT | 3) + store(lmPDPT, lmPD | 3) + store(lmPD, 0x83)
            let jump =
                [0xEA] + le16(UInt16(SMM_HANDLER_OFFSET) + UInt16(lmAfterTables))
                + le16(UInt16(SMM_DEFAULT_SMBASE >> 4))
            let body = loop64(iterations) + [0xB0, 0x00, 0xE6, UInt8(MINIVMM_PORT_DEBUG_EXIT), 0xF4]
            return image(main: tables + jump, blob: longModeHandler(body: body))
        case .smmStepped:
            let rsms = [UInt8]((0..<4).flatMap { _ in [0x00] + rsm })
            return image(main: apmSMI + statusOK, blob: realModeHandler(body: loop16(iterations)) + rsms)
        }
    }

    /// A real-mode handler: probe, `body`, RSM.
    public static func realModeHandler(body: [UInt8]) -> [UInt8] { probe + body + rsm }

    /// Offsets inside `protectedModeHandler`'s blob (fixed so that the code can address its tables).
    static let pmGDT = 0x100
    static let pmGDTR = 0x118
    static let pmIDTR = 0x120
    static let pmStub = 0x128
    static let pmIDT = 0x130
    static let pmIDTEntries = 32
    /// Offset of the 32-bit code (after the real-mode prologue).
    static let pm32Start = 0x1A

    /// A handler that switches to 32-bit protected mode (flat code 0x08, data 0x10), runs `beforeLIDT`, loads its
    /// own IDT of 32 interrupt gates (each to a HLT loop), runs `body` (32-bit code; both at most 0xC0 bytes),
    /// then RSMs from protected mode.
    public static func protectedModeHandler(beforeLIDT: [UInt8] = [], body: [UInt8]) -> [UInt8] {
        let base = entry
        var b = probe  // 0x00..0x04
        b += [0x2E, 0x0F, 0x01, 0x16] + le16(UInt16(SMM_HANDLER_OFFSET) + UInt16(pmGDTR))  // lgdt cs:[gdtr]
        b += [0x0F, 0x20, 0xC0, 0x0C, 0x01, 0x0F, 0x22, 0xC0]  // mov eax, cr0; or al, 1; mov cr0, eax
        b += [0x66, 0xEA] + le32(base + UInt32(pm32Start)) + le16(0x08)  // jmp dword 0x08:pm32
        precondition(b.count == pm32Start)
        b += [0xB8] + le32(0x10) + [0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xD0]  // mov eax, 0x10; mov ds/es/ss, ax
        b += beforeLIDT
        b += [0x0F, 0x01, 0x1D] + le32(base + UInt32(pmIDTR))  // lidt [idtr]
        b += body + rsm
        precondition(b.count <= pmGDT, "protected-mode handler body too large")
        b += [UInt8](repeating: 0x90, count: pmGDT - b.count)
        b += [UInt8](repeating: 0, count: 8)  // null descriptor
        b += [0xFF, 0xFF, 0x00, 0x00, 0x00, 0x9A, 0xCF, 0x00]  // 0x08: flat 32-bit code
        b += [0xFF, 0xFF, 0x00, 0x00, 0x00, 0x92, 0xCF, 0x00]  // 0x10: flat data
        b += le16(0x17) + le32(base + UInt32(pmGDT)) + [0, 0]  // GDTR (padded to 8)
        b += le16(UInt16(pmIDTEntries * 8 - 1)) + le32(base + UInt32(pmIDT)) + [0, 0]  // IDTR
        b += [0xF4, 0xEB, 0xFD] + [UInt8](repeating: 0x90, count: 5)  // stub: hlt; jmp stub
        let stub = base + UInt32(pmStub)
        for _ in 0..<pmIDTEntries {
            // 32-bit interrupt gate: offset 15:0, selector 0x08, 0, type 0x8E (present, DPL 0), offset 31:16.
            b += le16(UInt16(stub & 0xFFFF)) + le16(0x08) + [0x00, 0x8E] + le16(UInt16(stub >> 16))
        }
        return b
    }

    /// Page tables of `longModeHandler` (RAM below the default SMRAM window's end, zero until the handler writes
    /// them): PML4, PDPT and a page directory identity-mapping the first 2 MiB with one large page.
    static let lmPML4: UInt32 = 0x3A000
    static let lmPDPT: UInt32 = 0x3B000
    static let lmPD: UInt32 = 0x3C000
    /// Offset in `longModeHandler`'s blob just past its page-table stores.
    static let lmAfterTables = 0x28
    /// Offset of the 64-bit code in `longModeHandler`'s blob.
    static let lm64Start = 0x65

    /// A handler that builds identity page tables, sets CR4.PAE, CR3, EFER.LME, loads a GDT with a 64-bit code
    /// segment, enables paging and protection in one CR0 write, far-jumps to 64-bit code, runs `beforeLIDT`,
    /// loads its own IDT of 32 64-bit interrupt gates (each to a HLT loop), runs `body` (64-bit code), then RSMs
    /// from long mode.
    public static func longModeHandler(beforeLIDT: [UInt8] = [], body: [UInt8]) -> [UInt8] {
        let base = entry
        // mov dword [abs32], imm32 in 16-bit code: 67 66 C7 05 disp32 imm32 (DS base 0 in the SMM entry state).
        func store(_ at: UInt32, _ v: UInt32) -> [UInt8] { [0x67, 0x66, 0xC7, 0x05] + le32(at) + le32(v) }
        var b = probe  // 0x00
        b += store(lmPML4, lmPDPT | 3) + store(lmPDPT, lmPD | 3) + store(lmPD, 0x83)  // 0x04 .. 0x28
        precondition(b.count == lmAfterTables)
        b += [0x0F, 0x20, 0xE0, 0x66, 0x83, 0xC8, 0x20, 0x0F, 0x22, 0xE0]  // mov eax, cr4; or eax, PAE; mov cr4, eax
        b += [0x66, 0xB8] + le32(lmPML4) + [0x0F, 0x22, 0xD8]  // mov eax, pml4; mov cr3, eax
        b += [0x66, 0xB9] + le32(0xC000_0080) + [0x0F, 0x32]  // mov ecx, MSR_EFER; rdmsr
        b += [0x66, 0x0D] + le32(0x100) + [0x0F, 0x30]  // or eax, EFER.LME; wrmsr
        b += [0x2E, 0x0F, 0x01, 0x16] + le16(UInt16(SMM_HANDLER_OFFSET) + UInt16(pmGDTR))  // lgdt cs:[gdtr]
        b += [0x0F, 0x20, 0xC0, 0x66, 0x0D] + le32(0x8000_0001) + [0x0F, 0x22, 0xC0]  // CR0 |= PG | PE
        b += [0x66, 0xEA] + le32(base + UInt32(lm64Start)) + le16(0x08)  // jmp dword 0x08:lm64
        precondition(b.count == lm64Start, "long-mode prologue is \(b.count) bytes")
        b += [0xB8] + le32(0x10) + [0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xD0]  // mov eax, 0x10; mov ds/es/ss, ax
        b += beforeLIDT
        b += [0x0F, 0x01, 0x1C, 0x25] + le32(base + UInt32(pmIDTR))  // lidt [abs32]
        b += body + rsm
        precondition(b.count <= pmGDT, "long-mode handler body too large")
        b += [UInt8](repeating: 0x90, count: pmGDT - b.count)
        b += [UInt8](repeating: 0, count: 8)  // null descriptor
        b += [0xFF, 0xFF, 0x00, 0x00, 0x00, 0x9A, 0xAF, 0x00]  // 0x08: 64-bit code (L = 1)
        b += [0xFF, 0xFF, 0x00, 0x00, 0x00, 0x92, 0xCF, 0x00]  // 0x10: flat data
        b += le16(0x17) + le32(base + UInt32(pmGDT)) + [0, 0]  // GDTR
        // IDTR: 64-bit LIDT reads a 10-byte operand (limit, 8-byte base), so the stub moves up by 4.
        b += le16(UInt16(pmIDTEntries * 16 - 1)) + le32(base + UInt32(pmIDT)) + le32(0) + [0, 0]
        b += [0xF4, 0xEB, 0xFD, 0x90]  // stub: hlt; jmp stub
        let stub = base + UInt32(pmStub + 4)
        for _ in 0..<pmIDTEntries {
            // 64-bit interrupt gate: offset 15:0, selector 0x08, IST 0, type 0x8E, offset 31:16, offset 63:32, 0.
            b += le16(UInt16(stub & 0xFFFF)) + le16(0x08) + [0x00, 0x8E] + le16(UInt16(stub >> 16)) + le32(0) + le32(0)
        }
        return b
    }
}
