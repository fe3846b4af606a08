#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Back-to-back QMP hot-adds on strategy C (CPUs absent at boot are created at device_add) and an unplug request
for one CPU while another's plug is still being serviced, from two clients at once; then a burst of bad input.
minivmm must stay consistent: every plugged CPU is in the report's hot-add list, the run completes, the invariants
hold, and what the guest refused shows in hotAddRefusals.

    python3 scripts/qmp/back_to_back.py     (MINIVMM=path/to/minivmm; default .build/debug/minivmm)
"""
import asyncio
import json
import socket

from qemu.qmp import QMPClient

from common import Run, check_invariants, fail


def raw_abuse(path: str) -> None:
    """A raw client: malformed JSON, wrong shapes, 1000 commands in one write, a request cut off mid-way."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rwb")
    f.readline()  # greeting
    f.write(b'{"execute": "query-status"}\n')
    f.flush()
    first = f.readline()
    if b"Expecting capabilities negotiation" not in first:
        fail(f"before qmp_capabilities: {first!r}")
    f.write(b'{"execute":"qmp_capabilities"}{"execute":"foo","id":1}\nnot json\n[1,2]\n{"execute":3}\n')
    f.flush()
    replies = []
    while len(replies) < 5:
        line = f.readline()
        if b'"event"' not in line:
            replies.append(line)
    for want in (b'"return":{}', b"The command foo has not been found", b"JSON parse error",
                 b"QMP input must be a JSON object", b"'execute' must be a string"):
        if not any(want in r for r in replies):
            fail(f"no reply with {want!r} in {replies}")
    f.write(b'{"execute":"query-status","id":%d}' % 0 + b"".join(
        b'{"execute":"query-status","id":%d}' % i for i in range(1, 1000)))
    f.flush()
    got = 0
    while got < 1000:
        line = f.readline()
        if not line:
            fail("connection closed during the burst")
        if b'"return"' in line:
            got += 1
    print("qmp: 1000-command burst answered; malformed input got QEMU's errors")
    f.write(b'{"execute":"device_add","arguments":{"driver":"qemu64-x86_64-cpu","soc')
    f.flush()
    s.close()  # disconnect mid-command


async def main() -> None:
    run = Run("concurrent", ["--max-cpus", "8", "--boot-cpus", "2", "--strategy", "C"])
    await run.connect()
    a = run.qmp
    b = QMPClient("second")
    await b.connect(run.sock)
    await asyncio.get_running_loop().run_in_executor(None, raw_abuse, run.sock)

    def add(cpu: int):
        return {"driver": "qemu64-x86_64-cpu", "id": f"cpu{cpu}", "socket-id": cpu, "core-id": 0, "thread-id": 0}

    # Back to back from two clients at once, then unplug CPU 3 while 4 and 5 may still be plugging.
    await asyncio.gather(a.execute("device_add", add(3)), b.execute("device_add", add(4)),
                         a.execute("device_add", add(5)))
    await b.execute("device_del", {"id": "cpu3"})
    ev = await run.event("DEVICE_DELETED")
    print(f"qmp: event {json.dumps(dict(ev))}")
    if ev["data"] != {"device": "cpu3", "path": "/machine/peripheral/cpu3"}:
        fail(f"DEVICE_DELETED data {ev['data']}")
    await b.execute("device_add", add(6))
    await a.execute("x-minivmm-finish")
    await run.event("SHUTDOWN")
    await b.disconnect()
    await a.disconnect()
    status, out, report = run.finish()
    print(out, end="")
    print(f"qmp: report hotAdd {report['hotAdd']}, refusals {report['hotAddRefusals']}, "
          f"outcome {report['outcome']}")
    if report["outcome"] != "completed" or sorted(report["hotAdd"]) != [3, 4, 5, 6]:
        fail("expected a completed run with CPUs 3, 4, 5 and 6 hot-added")
    check_invariants(report, "concurrent")
    if status != 0:
        fail(f"minivmm exited {status}")
    print("qmp: PASS concurrent (two clients, back-to-back plugs, unplug during plugs, bad input)")


asyncio.run(main())
