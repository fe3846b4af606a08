# SPDX-License-Identifier: MIT
"""Shared helpers for the QMP scripts: start minivmm with --qmp, connect with qemu.qmp, check a report."""
import asyncio
import json
import os
import subprocess
import sys
import tempfile

from qemu.qmp import QMPClient


def minivmm_path() -> str:
    return os.environ.get("MINIVMM", ".build/debug/minivmm")


def fail(msg: str) -> None:
    print(f"qmp: FAIL {msg}", file=sys.stderr)
    sys.exit(1)


class Run:
    """One `minivmm run --qmp unix:SOCK --qmp-wait ... --json REPORT` and a qemu.qmp client connected to it."""

    def __init__(self, name: str, args: list[str]):
        self.dir = tempfile.mkdtemp(prefix=f"minivmm-qmp-{name}-")
        self.sock = os.path.join(self.dir, "qmp.sock")
        self.json = os.path.join(self.dir, "report.json")
        cmd = [minivmm_path(), "run", "--qmp", f"unix:{self.sock},server=on,wait=off", "--qmp-wait",
               "--timeout", "60", "--quiet", "--json", self.json] + args
        print("qmp: " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.qmp = QMPClient(name)

    async def connect(self) -> None:
        for _ in range(100):
            if os.path.exists(self.sock):
                break
            await asyncio.sleep(0.05)
        await self.qmp.connect(self.sock)
        print(f"qmp: connected, greeting {self.qmp.greeting}")

    async def event(self, name: str, timeout: float = 20.0) -> dict:
        async def wait() -> dict:
            async for ev in self.qmp.events:
                if ev["event"] == name:
                    return ev
            raise RuntimeError("event stream ended")
        return await asyncio.wait_for(wait(), timeout)

    def finish(self) -> tuple[int, str, dict]:
        out, _ = self.proc.communicate(timeout=90)
        with open(self.json) as f:
            report = json.load(f)
        return self.proc.returncode, out, report


def check_invariants(report: dict, where: str) -> None:
    for inv in report["invariants"]:
        ok = inv["passed"] or inv.get("expected") == "fails"
        print(f"qmp: {where}: invariant {inv['id']} {'PASS' if inv['passed'] else 'FAIL'}: {inv['detail']}")
        if not ok:
            fail(f"{where}: invariant {inv['id']} failed: {inv['detail']}")
