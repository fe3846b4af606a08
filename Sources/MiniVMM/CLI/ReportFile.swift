// SPDX-License-Identifier: MIT
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A report destination (`--json FILE`), checked and opened before the run so a bad path costs nothing, and
/// written atomically after it: the bytes go to a temporary file beside the destination, which `rename(2)` puts in
/// place, so a full disk or a crash never leaves a truncated report where a good one was. `-`, `/dev/stdout` and
/// other non-regular files (a FIFO, a terminal) are written in place.
struct ReportFile {
    let path: String
    let option: String
    /// Where the bytes go first: the temporary file's descriptor and path, or the destination itself.
    private let fd: Int32
    private let temporary: String?

    /// Whether the report goes to standard output (the human summary then goes to standard error).
    var isStandardOutput: Bool { path == "-" || path == "/dev/stdout" || path == "/proc/self/fd/1" }

    init(path: String, option: String = "--json") throws {
        self.path = path
        self.option = option
        if path.isEmpty { throw Self.error(option, path, "empty path") }
        if path == "-" {
            fd = STDOUT_FILENO
            temporary = nil
            return
        }
        var st = stat()
        if stat(path, &st) == 0 {
            if st.st_mode & S_IFMT == S_IFDIR { throw Self.error(option, path, "is a directory") }
            if st.st_mode & S_IFMT != S_IFREG {
                let f = open(path, O_WRONLY | O_CLOEXEC)
                guard f >= 0 else { throw Self.error(option, path, String(cString: strerror(errno))) }
                fd = f
                temporary = nil
                return
            }
        }
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        let tmp = dir + "/." + url.lastPathComponent + ".\(getpid()).tmp"
        let f = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard f >= 0 else { throw Self.error(option, path, String(cString: strerror(errno))) }
        fd = f
        temporary = tmp
    }

    private static func error(_ option: String, _ path: String, _ why: String) -> MachineError {
        .invalidConfiguration("cannot write \(option) \(path): \(why)")
    }

    /// Writes `data` and moves it into place; one-line error naming the option on failure (the old file survives).
    func write(_ data: Data) throws {
        var ok = true
        var why = ""
        data.withUnsafeBytes { (buf: UnsafeRawBufferPointer) in
            var done = 0
            while done < buf.count {
                // SAFETY: `done < buf.count`, so the pointer and length stay inside the buffer.
                let n = Glibc.write(fd, buf.baseAddress! + done, buf.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    ok = false
                    why = String(cString: strerror(errno))
                    return
                }
                done += n
            }
        }
        guard let tmp = temporary else {
            if fd != STDOUT_FILENO { close(fd) }
            if !ok { throw Self.error(option, path, why) }
            return
        }
        if ok && fsync(fd) != 0 {
            ok = false
            why = String(cString: strerror(errno))
        }
        close(fd)
        if ok && rename(tmp, path) != 0 {
            ok = false
            why = String(cString: strerror(errno))
        }
        if !ok {
            unlink(tmp)
            throw Self.error(option, path, why)
        }
    }

    /// Removes the temporary file (a run that ends without a report to write).
    func discard() {
        if let tmp = temporary {
            close(fd)
            unlink(tmp)
        }
    }
}
