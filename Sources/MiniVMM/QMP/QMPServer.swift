// SPDX-License-Identifier: MIT
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// `--qmp unix:PATH[,server=on][,wait=off]`: QEMU's `-qmp` chardev shape, Unix sockets only (QEMU
/// `SocketAddress` type `unix`). `wait=on` holds the guest until a client connects, as `--qmp-wait` does.
public struct QMPAddress: Equatable, Sendable {
    public var path: String
    public var wait = false

    /// Parses the option; the error is one line for the CLI.
    public static func parse(_ s: String) throws(QMPSocketError) -> QMPAddress {
        guard s.hasPrefix("unix:") else {
            throw .address("--qmp supports only unix:PATH[,server=on,wait=off] (got '\(s)')")
        }
        let parts = s.dropFirst(5).split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let path = parts.first, !path.isEmpty else { throw .address("--qmp unix: needs a socket path") }
        guard path.utf8.count < 108 else { throw .address("--qmp socket path is longer than 107 bytes: \(path)") }
        var a = QMPAddress(path: path)
        for opt in parts.dropFirst() {
            switch opt {
            case "server", "server=on": break
            case "server=off": throw .address("--qmp: minivmm only listens (server=on); server=off is not supported")
            case "nowait", "wait=off": a.wait = false
            case "wait=on", "wait": a.wait = true
            default: throw .address("--qmp: unknown option '\(opt)' (accepted: server=on, wait=on|off)")
            }
        }
        return a
    }
}

/// Why the QMP socket cannot be used: one line each.
public enum QMPSocketError: Error, Equatable, CustomStringConvertible {
    case address(String)
    case system(String)

    public var description: String {
        switch self {
        case .address(let s), .system(let s): s
        }
    }
}

/// A Unix socket as QEMU's `unix_listen` / `unix_connect` make it.
enum UnixSocket {
    static func address(_ path: String) throws(QMPSocketError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw .address("socket path is longer than 107 bytes: \(path)")
        }
        // SAFETY: copies fewer bytes than sun_path holds; the rest stays zero, so the path is NUL-terminated.
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        return addr
    }

    /// O_NONBLOCK and FD_CLOEXEC on `fd`.
    static func setNonBlocking(_ fd: Int32) -> Bool {
        let flags = fcntl(fd, F_GETFL)
        return flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) == 0
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }

    /// Binds and listens at `path`, replacing a stale socket there (as QEMU does); refuses any other file.
    static func listen(_ path: String) throws(QMPSocketError) -> Int32 {
        var addr = try address(path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw .system("--qmp \(path) exists and is not a socket")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system("cannot create the QMP socket: \(errnoText())") }
        // SAFETY: addr is a sockaddr_un on the stack, passed with its own size.
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard r == 0, Glibc.listen(fd, 16) == 0 else {
            let e = errnoText()
            close(fd)
            throw .system("cannot listen on --qmp \(path): \(e)")
        }
        return fd
    }

    static func connect(_ path: String) throws(QMPSocketError) -> Int32 {
        var addr = try address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system("cannot create a socket: \(errnoText())") }
        // SAFETY: addr is a sockaddr_un on the stack, passed with its own size.
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard r == 0 else {
            let e = errnoText()
            close(fd)
            throw .system("cannot connect to \(path): \(e)")
        }
        return fd
    }

    /// Writes all of `bytes` (blocking fd); false when the peer went away.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            // SAFETY: the pointer and length stay inside `bytes`; MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE.
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }
}

/// The QMP server (QEMU's monitor on a `-qmp unix:` chardev): one thread polls the listening socket, every
/// client and a wake-up pipe with poll(2); clients connect in turn or at once, each with its own negotiation;
/// events go to every negotiated client. The machine's events arrive through its event tap into `outbox` (the only
/// state shared with other threads, under `mutex`). After the run the server sends SHUTDOWN and keeps answering
/// connected clients (x-minivmm-report then returns the final report) until they leave, at most `linger` seconds.
public final class QMPServer: @unchecked Sendable {
    /// Per-client limits: pending input (bytes without a complete request), queued requests, unsent output.
    static let inputLimit = 1 << 20
    static let queuedRequestLimit = 1024
    static let outputLimit = 8 << 20

    public let address: QMPAddress
    let listenFD: Int32
    private let wakeFDs: (read: Int32, write: Int32)
    private let mutex = NSCondition()
    // mutex
    private var outbox: [MachineEvent] = []
    private var droppedEvents = 0
    private var ending: RunReport?
    private var clientsAccepted = 0
    private var threadDone = false
    // server thread
    private var monitor: QMPMonitor?
    private var clients: [Client] = []
    private var thread: pthread_t?
    let linger: Double

    final class Client {
        let fd: Int32
        var framer = QMPFramer(limit: QMPServer.inputLimit)
        var queued: [QMPFramer.Frame] = []
        var output: [UInt8] = []
        var negotiated = false
        var closed = false
        init(fd: Int32) { self.fd = fd }
    }

    /// Binds the socket now, so a client can connect as soon as minivmm runs.
    public init(address: QMPAddress, linger: Double = 5) throws(QMPSocketError) {
        self.address = address
        self.linger = linger
        listenFD = try UnixSocket.listen(address.path)
        var p: [Int32] = [0, 0]
        guard pipe(&p) == 0, UnixSocket.setNonBlocking(p[0]), UnixSocket.setNonBlocking(p[1]) else {
            close(listenFD)
            throw .system("cannot create the QMP wake-up pipe: \(UnixSocket.errnoText())")
        }
        wakeFDs = (p[0], p[1])
    }

    /// Starts serving `machine` (before its run starts).
    func start(_ machine: Machine) throws(QMPSocketError) {
        machine.setEventTap { [weak self] e in self?.post(e) }
        try start(monitor: QMPMonitor(machine: machine))
    }

    func start(monitor m: QMPMonitor) throws(QMPSocketError) {
        monitor = m
        // Joinable: `finish` waits for the server to let its clients read the final report.
        thread = startThread(name: "qmp", stackSize: 1 << 20, joinable: true) { [self] in
            serve()
            mutex.lock()
            threadDone = true
            mutex.broadcast()
            mutex.unlock()
        }
        if thread == nil { throw .system("cannot start the QMP server thread") }
    }

    /// A machine event (called with the machine lock held: takes only `mutex`).
    func post(_ e: MachineEvent) {
        mutex.lock()
        if outbox.count >= 1 << 16 {
            droppedEvents += 1
        } else {
            outbox.append(e)
        }
        mutex.unlock()
        wake()
    }

    private func wake() {
        var b: UInt8 = 1
        _ = write(wakeFDs.write, &b, 1)
    }

    /// `--qmp-wait`: blocks until a client connected or `seconds` passed.
    public func waitForClient(seconds: Double) {
        let deadline = Date(timeIntervalSinceNow: seconds)
        mutex.lock()
        while clientsAccepted == 0 && !threadDone && mutex.wait(until: deadline) {}
        mutex.unlock()
    }

    /// The run is over: SHUTDOWN goes out, connected clients may still read the final report for `linger` seconds;
    /// returns when the server thread has closed everything and removed the socket.
    public func finish(_ report: RunReport) {
        mutex.lock()
        ending = report
        mutex.unlock()
        wake()
        if let t = thread {
            pthread_join(t, nil)
            thread = nil
        } else {
            cleanUp()
        }
    }

    /// The machine could not be built: closes the socket without a run (no thread was started).
    public func abandon() {
        if thread == nil { cleanUp() }
    }

    private func cleanUp() {
        close(listenFD)
        close(wakeFDs.read)
        close(wakeFDs.write)
        unlink(address.path)
    }

    // MARK: the server thread

    private func serve() {
        guard let monitor else { return }
        var lingerUntil: Double?
        var readBuffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            var fds = [
                pollfd(fd: wakeFDs.read, events: Int16(POLLIN), revents: 0),
                pollfd(fd: lingerUntil == nil ? listenFD : -1, events: Int16(POLLIN), revents: 0),
            ]
            for c in clients {
                var ev = Int16(0)
                if c.queued.count < Self.queuedRequestLimit { ev |= Int16(POLLIN) }
                if !c.output.isEmpty { ev |= Int16(POLLOUT) }
                fds.append(pollfd(fd: c.fd, events: ev, revents: 0))
            }
            _ = poll(&fds, nfds_t(fds.count), 200)
            if fds[0].revents != 0 {
                var sink = [UInt8](repeating: 0, count: 256)
                while read(wakeFDs.read, &sink, sink.count) > 0 {}
            }
            mutex.lock()
            let events = outbox
            outbox.removeAll(keepingCapacity: true)
            let report = ending
            mutex.unlock()
            for e in events {
                if let msg = monitor.event(for: e) { broadcast(msg) }
            }
            if let report, lingerUntil == nil {
                monitor.finalReport = JSONValue.from(report)
                broadcast(QMPMonitor.shutdownEvent(outcome: report.outcome))
                lingerUntil = monotonicSeconds() + linger
            }
            for (i, c) in clients.enumerated() where fds[i + 2].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                receive(c, &readBuffer)
            }
            if fds[1].revents & Int16(POLLIN) != 0 { accept() }  // after the loop above: fds has no row for it
            for c in clients where !c.closed { process(c, monitor) }
            for c in clients where !c.closed && !c.output.isEmpty { flush(c) }
            for c in clients where c.closed { close(c.fd) }
            clients.removeAll { $0.closed }
            if let until = lingerUntil, clients.isEmpty || monotonicSeconds() > until { break }
        }
        for c in clients {
            flush(c)
            close(c.fd)
        }
        clients.removeAll()
        cleanUp()
    }

    private func broadcast(_ msg: JSONValue) {
        let bytes = Array((msg.line + "\r\n").utf8)
        for c in clients where c.negotiated && !c.closed { enqueue(c, bytes) }
    }

    private func enqueue(_ c: Client, _ bytes: [UInt8]) {
        c.output.append(contentsOf: bytes)
        if c.output.count > Self.outputLimit { c.closed = true }  // a client that does not read its events
    }

    private func accept() {
        let fd = Glibc.accept(listenFD, nil, nil)
        guard fd >= 0, let monitor else { return }
        guard UnixSocket.setNonBlocking(fd) else {
            close(fd)
            return
        }
        let c = Client(fd: fd)
        clients.append(c)
        enqueue(c, Array((monitor.greeting().line + "\r\n").utf8))
        flush(c)
        mutex.lock()
        clientsAccepted += 1
        mutex.broadcast()
        mutex.unlock()
    }

    private func receive(_ c: Client, _ buf: inout [UInt8]) {
        let n = read(c.fd, &buf, buf.count)
        if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
        if n <= 0 {
            // Disconnected (possibly mid-request): what it sent but did not finish is dropped unanswered.
            c.closed = true
            return
        }
        if !c.framer.append(buf[0..<n]) {
            c.closed = true  // more than 1 MiB without a complete request
            return
        }
        while let f = c.framer.next() { c.queued.append(f) }
    }

    private func process(_ c: Client, _ monitor: QMPMonitor) {
        while let f = c.queued.first {
            switch monitor.handle(f, negotiated: &c.negotiated) {
            case .waitForBoot: return  // retried on the next round, in order
            case .reply(let r):
                c.queued.removeFirst()
                enqueue(c, Array((r.line + "\r\n").utf8))
            }
        }
    }

    private func flush(_ c: Client) {
        while !c.output.isEmpty {
            // SAFETY: the pointer and length stay inside c.output; MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE.
            let n = c.output.withUnsafeBytes { send(c.fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN { return }
            if n <= 0 {
                c.closed = true
                c.output.removeAll()
                return
            }
            c.output.removeFirst(n)
        }
    }
}
