// SPDX-License-Identifier: MIT
import Foundation
import FuzzSupport
import MiniVMM

/// Report loading and comparison (`minivmm compare`): the input, as a file, goes through `loadDocument(path:)` as a
/// run report or attack matrix; the first byte picks whether the rest is taken raw or spliced into a well-formed
/// report skeleton. Invariants: loading either fails with an error or gives a document that compares equal to itself
/// and whose comparison with a second copy of the same file is empty.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReport(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let mode = input.u8()
    var bytes = input.rest()
    if mode & 1 == 1 {
        // Splice the input in as the value of a field of a matrix-shaped document.
        bytes = Array(#"{"backend":"emulated","rows":["#.utf8) + bytes + Array("]}".utf8)
    }
    let path = NSTemporaryDirectory() + "minivmm-fuzz-report-\(getpid()).json"
    guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
        fatalError("cannot write \(path)")
    }
    defer { try? FileManager.default.removeItem(atPath: path) }
    guard let a = try? ReportComparison.loadDocument(path: path) else { return 0 }
    guard let b = try? ReportComparison.loadDocument(path: path) else {
        fuzzCheck(false, "second load of the same file failed")
        return 0
    }
    do {
        let diffs = try ReportComparison.differences(a, b)
        fuzzCheck(diffs.isEmpty, "a document differs from itself: \(diffs.prefix(3))")
    } catch {
        // Encoding can refuse a decoded value (e.g. a non-finite number); that is an error, not a crash.
    }
    return 0
}

runFuzzer(fuzzReport)
