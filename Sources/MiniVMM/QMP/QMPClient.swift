// SPDX-License-Identifier: MIT
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A minimal QMP client (what `qmp-shell` and `qemu.qmp` do, for places without Python such as the nested lane's
/// initramfs): reads the greeting, negotiates capabilities, sends each request in order and returns each reply;
/// `wait:EVENT` waits for that event instead. Events that arrive meanwhile are kept for a later `wait:`.
public final class QMPClient {
    let fd: Int32
    private var framer = QMPFramer(limit: 16 << 20)
    private var events: [JSONValue] = []
    public private(set) var greeting: JSONValue = .null

    /// Connects to `address` (`unix:PATH`) and reads the greeting, waiting at most `timeout` seconds.
    public init(address: String, timeout: Double) throws(QMPSocketError) {
        let a = try QMPAddress.parse(address)
        fd = try UnixSocket.connect(a.path)
        guard let g = try readMessage(until: monotonicSeconds() + timeout), g["QMP"] != nil else {
            close(fd)
            throw .system("\(a.path) sent no QMP greeting")
        }
        greeting = g
    }

    deinit { close(fd) }

    private func readMessage(until deadline: Double) throws(QMPSocketError) -> JSONValue? {
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            if let f = framer.next() {
                guard case .text(let d) = f, let v = JSONValue.parse(d) else {
                    throw .system("the server sent something that is not JSON")
                }
                return v
            }
            let left = deadline - monotonicSeconds()
            if left <= 0 { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(min(left, 1) * 1000) + 1) <= 0 { continue }
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw .system("the QMP server closed the connection") }
            if !framer.append(buf[0..<n]) { throw .system("the QMP server sent more than 16 MiB in one message") }
        }
    }

    /// Sends one request (JSON text) and returns its reply (`return` or `error`); nil on timeout.
    public func execute(_ request: String, timeout: Double) throws(QMPSocketError) -> JSONValue? {
        guard UnixSocket.writeAll(fd, Array((request + "\n").utf8)) else {
            throw .system("the QMP server closed the connection")
        }
        let deadline = monotonicSeconds() + timeout
        while let m = try readMessage(until: deadline) {
            if m["event"] != nil {
                if events.count < 4096 { events.append(m) }
                continue
            }
            return m
        }
        return nil
    }

    /// Waits for event `name` (or takes it from those already received); nil on timeout.
    public func waitEvent(_ name: String, timeout: Double) throws(QMPSocketError) -> JSONValue? {
        if let i = events.firstIndex(where: { $0["event"]?.stringValue == name }) { return events.remove(at: i) }
        let deadline = monotonicSeconds() + timeout
        while let m = try readMessage(until: deadline) {
            if m["event"]?.stringValue == name { return m }
            if m["event"] != nil && events.count < 4096 { events.append(m) }
        }
        return nil
    }
}
