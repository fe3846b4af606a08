#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""QMP hotplug with a real client (qemu.qmp): strategy A boots all 8 possible CPUs; unplug two (device_del), wait
for DEVICE_DELETED, plug one back (device_add), finish through x-minivmm-finish, and check the report both from
x-minivmm-report and from --json. Also checks QEMU's error shapes on the way.

    python3 scripts/qmp/hotplug.py        (MINIVMM=path/to/minivmm; default .build/debug/minivmm)
"""
import asyncio
import json

from qemu.qmp import ExecuteError

from common import Run, check_invariants, fail


async def expect_error(qmp, cmd: str, args: dict, cls: str, desc: str) -> None:
    try:
        await qmp.execute(cmd, args)
    except ExecuteError as e:
        got = (e.error_class, str(e))
        if got != (cls, desc):
            fail(f"{cmd} {args}: got {got}, expected {(cls, desc)}")
        print(f"qmp: {cmd} refused as expected: {cls}: {desc}")
        return
    fail(f"{cmd} {args} succeeded; expected {cls}: {desc}")


async def main() -> None:
    run = Run("hotplug", ["--max-cpus", "8", "--boot-cpus", "8", "--strategy", "A"])
    await run.connect()
    qmp = run.qmp
    version = await qmp.execute("query-version")
    print(f"qmp: query-version {version}")
    cpus = await qmp.execute("query-hotpluggable-cpus")
    if len(cpus) != 8 or any("qom-path" not in c for c in cpus):
        fail(f"query-hotpluggable-cpus: expected 8 plugged CPUs, got {cpus}")
    paths = {c["props"]["socket-id"]: c["qom-path"] for c in cpus}
    print(f"qmp: hotpluggable CPUs: {sorted(paths)}")

    await expect_error(qmp, "device_add", {"driver": "qemu64-x86_64-cpu", "socket-id": "3", "core-id": 0,
                                           "thread-id": 0}, "GenericError",
                       "Invalid parameter type for 'socket-id', expected: integer")
    await expect_error(qmp, "device_add", {"socket-id": 3}, "GenericError", "Parameter 'driver' is missing")
    await expect_error(qmp, "device_add", {"driver": "qemu64-x86_64-cpu", "socket-id": 3, "core-id": 0,
                                           "thread-id": 0}, "GenericError", "CPU[3] with APIC ID 3 exists")
    await expect_error(qmp, "device_add", {"driver": "qemu64-x86_64-cpu", "socket-id": 8, "core-id": 0,
                                           "thread-id": 0}, "GenericError",
                       "Invalid CPU socket-id: 8 must be in range 0:7")
    await expect_error(qmp, "device_del", {"id": "nope"}, "DeviceNotFound", "Device 'nope' not found")
    await expect_error(qmp, "system_reset", {}, "GenericError", "system_reset is not supported by minivmm")

    for cpu in (5, 6):
        await qmp.execute("device_del", {"id": paths[cpu]})
    deleted = set()
    while len(deleted) < 2:
        ev = await run.event("DEVICE_DELETED")
        print(f"qmp: event {json.dumps(dict(ev))}")
        deleted.add(ev["data"]["path"])
    if deleted != {paths[5], paths[6]}:
        fail(f"DEVICE_DELETED for {deleted}, expected {paths[5]} and {paths[6]}")

    await qmp.execute("device_add", {"driver": "qemu64-x86_64-cpu", "id": "cpu5", "socket-id": 5, "core-id": 0,
                                     "thread-id": 0})
    fast = await qmp.execute("query-cpus-fast")
    print(f"qmp: query-cpus-fast: {[(c['cpu-index'], c['qom-path'], hex(c['x-minivmm-smbase'])) for c in fast]}")
    if 6 in [c["cpu-index"] for c in fast] or "/machine/peripheral/cpu5" not in [c["qom-path"] for c in fast]:
        fail("query-cpus-fast: expected CPU 6 gone and CPU 5 at /machine/peripheral/cpu5")
    await qmp.execute("x-minivmm-finish")
    ev = await run.event("SHUTDOWN")
    print(f"qmp: event {json.dumps(dict(ev))}")
    final = await qmp.execute("x-minivmm-report")
    await qmp.disconnect()
    status, out, report = run.finish()
    print(out, end="")
    if not final["final"] or final["report"]["invariants"] != report["invariants"]:
        fail("x-minivmm-report after SHUTDOWN differs from the --json report")
    if report["outcome"] != "completed" or report["hotAdd"] != [5]:
        fail(f"report: outcome {report['outcome']}, hotAdd {report['hotAdd']}; expected completed, [5]")
    check_invariants(report, "hotplug")
    if status != 0:
        fail(f"minivmm exited {status}")
    print("qmp: PASS hotplug (unplugged 5 and 6, plugged 5 back; invariants hold)")


asyncio.run(main())
