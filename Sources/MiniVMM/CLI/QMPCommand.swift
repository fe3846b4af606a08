// SPDX-License-Identifier: MIT
import ArgumentParser
import Foundation

/// `minivmm qmp ADDRESS REQUEST...`: a tiny QMP client (for the nested lane's initramfs, which has no Python).
/// Negotiates capabilities, sends each request in order and prints each reply on its own line; `wait:EVENT`
/// waits for that event and prints it. Exit 1 when a reply is an error or a wait times out.
struct QMPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qmp",
        abstract: "Send QMP requests to a running minivmm (--qmp) and print the replies.",
        discussion: """
            Example: minivmm qmp unix:/tmp/q.sock '{"execute":"device_del","arguments":{"id":"/machine/unattached/device[3]"}}' \
            wait:DEVICE_DELETED '{"execute":"x-minivmm-finish"}'
            """)

    @Argument(help: "The server's address: unix:PATH.")
    var address: String

    @Argument(help: "Requests (JSON objects, sent in order) or wait:EVENT.")
    var requests: [String] = []

    @Option(help: "Seconds to wait for the greeting, each reply and each event.")
    var timeout: Double = 30

    func validate() throws {
        do { _ = try QMPAddress.parse(address) } catch { throw ValidationError(error.description) }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        for r in requests where !r.hasPrefix("wait:") {
            guard case .object = JSONValue.parse(Data(r.utf8)) else {
                throw ValidationError("not a JSON object (nor wait:EVENT): \(r)")
            }
        }
    }

    func run() throws {
        let client: QMPClient
        do { client = try QMPClient(address: address, timeout: timeout) } catch {
            throw ValidationError(error.description)
        }
        var ok = true
        let first = requests.first.flatMap { JSONValue.parse(Data($0.utf8)) }?["execute"]?.stringValue
        do {
            if first != "qmp_capabilities" {
                guard let r = try client.execute(#"{"execute":"qmp_capabilities"}"#, timeout: timeout),
                    r["return"] != nil
                else { throw ValidationError("capabilities negotiation failed") }
            }
            for req in requests {
                if req.hasPrefix("wait:") {
                    let name = String(req.dropFirst(5))
                    if let e = try client.waitEvent(name, timeout: timeout) {
                        print(e.line)
                    } else {
                        print("minivmm qmp: no \(name) event within \(timeout) s")
                        ok = false
                    }
                } else if let r = try client.execute(req, timeout: timeout) {
                    print(r.line)
                    if r["error"] != nil { ok = false }
                } else {
                    print("minivmm qmp: no reply within \(timeout) s")
                    ok = false
                }
                fflush(nil)
            }
        } catch let e as QMPSocketError {
            throw ValidationError(e.description)
        }
        if !ok { throw ExitCode(1) }
    }
}
