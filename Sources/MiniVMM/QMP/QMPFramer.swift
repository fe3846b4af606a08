// SPDX-License-Identifier: MIT
import Foundation

/// Splits a QMP client's byte stream into JSON texts, as QEMU's JSON streamer (`qobject/json-streamer.c`) does:
/// a top-level `{…}` (or `[…]`) ends where its braces balance, whatever the line breaks, so several objects in one
/// read and one object over many reads both work. Anything else at top level (a stray word, a lone `}`) is
/// collected up to the next newline and handed back as `.garbage`, which the monitor answers with a parse error.
/// Pending input is capped: past `limit` bytes without a complete text, `append` reports an overflow and the
/// client is dropped (no unbounded buffering).
struct QMPFramer {
    /// One framed input.
    enum Frame: Equatable {
        /// A balanced `{…}` or `[…]` (not yet parsed).
        case text(Data)
        /// Input that cannot start a JSON object (up to a newline), or nesting deeper than QEMU's limit.
        case garbage(Data)
    }

    /// QEMU's `MAX_NESTING` in the JSON streamer.
    static let maxNesting = 1024
    let limit: Int
    private var buffer: [UInt8] = []
    /// Scan state of the text at the front of `buffer`.
    private var scanned = 0
    private var depth = 0
    private var inString = false
    private var escaped = false
    private var tooDeep = false

    init(limit: Int = 1 << 20) { self.limit = limit }

    var pendingBytes: Int { buffer.count }

    /// Adds bytes read from the client; false when pending input now exceeds the limit.
    mutating func append(_ bytes: some Sequence<UInt8>) -> Bool {
        buffer.append(contentsOf: bytes)
        return buffer.count <= limit
    }

    /// The next complete frame, or nil until more input arrives.
    mutating func next() -> Frame? {
        while true {
            if scanned == 0 {
                // Skip whitespace between texts.
                let ws: Set<UInt8> = [0x20, 0x09, 0x0A, 0x0D]
                let skip = buffer.prefix { ws.contains($0) }.count
                if skip > 0 { buffer.removeFirst(skip) }
                guard let first = buffer.first else { return nil }
                if first != UInt8(ascii: "{") && first != UInt8(ascii: "[") {
                    guard let nl = buffer.firstIndex(of: 0x0A) else { return nil }
                    let bad = Data(buffer[..<nl])
                    buffer.removeFirst(nl + 1)
                    return .garbage(bad)
                }
            }
            while scanned < buffer.count {
                let b = buffer[scanned]
                scanned += 1
                if inString {
                    if escaped {
                        escaped = false
                    } else if b == UInt8(ascii: "\\") {
                        escaped = true
                    } else if b == UInt8(ascii: "\"") {
                        inString = false
                    }
                    continue
                }
                switch b {
                case UInt8(ascii: "\""): inString = true
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    depth += 1
                    if depth > Self.maxNesting { tooDeep = true }
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 { return take() }
                default: break
                }
            }
            if tooDeep, let nl = buffer.firstIndex(of: 0x0A) {
                // Resynchronize at the next newline, as QEMU's lexer does after an error.
                let bad = Data(buffer[..<nl])
                buffer.removeFirst(nl + 1)
                reset()
                return .garbage(bad)
            }
            return nil
        }
    }

    private mutating func take() -> Frame {
        let text = Data(buffer[..<scanned])
        buffer.removeFirst(scanned)
        let deep = tooDeep
        reset()
        return deep ? .garbage(text) : .text(text)
    }

    private mutating func reset() {
        scanned = 0
        depth = 0
        inString = false
        escaped = false
        tooDeep = false
    }
}
