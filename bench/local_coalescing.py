"""Coalescing on the local simulated device, measured end to end.

100 jobs, each one small unseeded sampler request (one 5-qubit PUB, 1000 shots) on
``fake_manila_v2`` (one job at a time, as a real device), all submitted at once: wall time
until the last result, and how many device runs served them — with coalescing (the
default) and without (``QLAYER_COALESCE=0``), in the same run.

Run: ``.venv/bin/python bench/local_coalescing.py``
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

PROGRAM = Path(__file__).parent / "programs" / "basis_state.py"


def measure(coalesce: bool, jobs: int) -> tuple[float, int]:
    from qlayer import Client

    os.environ["QLAYER_COALESCE"] = "1" if coalesce else "0"
    client = Client.local(tempfile.mkdtemp(prefix="qlayer-coalesce-"))
    client.up()
    try:
        client.run(PROGRAM, {"k": 0, "shots": 10}).result(timeout=120)  # warm: noise model built
        started = time.perf_counter()
        submitted = [client.run(PROGRAM, {"k": k % 32, "shots": 1000}) for k in range(jobs)]
        for job in submitted:
            job.result(timeout=600)
        wall = time.perf_counter() - started
        runs = set()
        for job in submitted:
            for event in job.timeline():
                if event["event"] == "device running":
                    members = [event["detail"]["provider_job_id"]]
                    members += event["detail"].get("coalesced_with", [])
                    runs.add(tuple(sorted(members)))
        return wall, len(runs)
    finally:
        client.down()


def main() -> int:
    jobs = 100
    rows = [
        ("without coalescing", *measure(False, jobs)),
        ("with coalescing", *measure(True, jobs)),
    ]
    print(f"| {jobs} jobs on fake_manila_v2, one small request each | wall (s) | device runs |")
    print("|---|---:|---:|")
    for name, wall, runs in rows:
        print(f"| {name} | {wall:.2f} | {runs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
