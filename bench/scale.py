"""Scale of the local substrate: fan-outs, history, submit latency, disk per child.

Run with ``make bench`` or ``.venv/bin/python bench/scale.py``; prints a markdown table.
``--sizes 100,1000`` picks the fan-out sizes, ``--history 200000`` the size of the
history, ``--repeat 3`` runs each fan-out that many times (the median is shown).

Measures:
1. a fan-out of N trivial children then one collect stage (``tests/e2e/programs/fanout.py``),
   each N on a fresh home with a warm daemon (2 workers), beside the floor: the same
   stage functions called in one process;
2. the same 1,000-child job on a home that already holds ``--history`` finished jobs.
   The history is built fast by direct inserts into the state database (one top-level
   job per 1,000 children, each child DONE with its step and events, as the daemon
   leaves them; no artifact files), then the daemon is started on it;
3. submit latency: ``Client.run`` of a program that imports qiskit at top level, until
   it returns the job id (median of 10, warm daemon);
4. disk per child: the home's size after the largest fan-out, over its children.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qlayer.local.paths import Home

HERE = Path(__file__).parent
FANOUT = HERE.parent / "tests" / "e2e" / "programs" / "fanout.py"  # the tested one
QISKIT_TOP = HERE / "programs" / "qiskit_top.py"


def _client(home: Path):  # type: ignore[no-untyped-def]
    from qlayer.client import Client

    client = Client.local(home=home, workers=2)
    client.up()
    client.run(FANOUT, {"n": 2}).result(timeout=120)  # warm: workers up, program cached
    return client


def floor_fanout(n: int) -> float:
    """The fan-out's stage functions called directly in one process."""
    from qlayer.program import load_path

    wf = load_path(FANOUT)
    started = time.perf_counter()
    child = wf.stages["child"].fn
    results = [child(i).result for i in range(n)]
    wf.stages["collect"].fn(results)
    return time.perf_counter() - started


def disk_bytes(path: Path) -> int:
    out = subprocess.run(
        ["du", "-sb", "--apparent-size", str(path)], capture_output=True, text=True
    )
    blocks = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True)
    del out
    return int(blocks.stdout.split()[0]) * 1024


def fanout_once(n: int, home: Path | None = None) -> tuple[float, int]:
    """Wall time of one N-child job on ``home`` (fresh if None), and the home's disk use."""
    own = home is None
    root = Path(tempfile.mkdtemp(prefix="qlayer-scale-")) if own else home
    assert root is not None
    client = _client(root)
    try:
        before = disk_bytes(root)
        started = time.perf_counter()
        result = client.run(FANOUT, {"n": n}).result(timeout=3600)
        wall = time.perf_counter() - started
        assert result == {"children": n}, result
        used = disk_bytes(root) - before
    finally:
        client.down()
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return wall, used


def build_history(home: Home, jobs: int) -> None:
    """``jobs`` finished jobs by direct inserts: trees of one root and 999 children."""
    from qlayer.local import state

    conn = state.connect(home.db)
    now = time.time() - 86400
    first = json.dumps({"input_key": "x", "compute": None})
    tree = 1000
    with state.transaction(conn):
        for start in range(0, jobs, tree):
            root = f"20200101-000000-{start:06x}"
            rows, steps, events = [], [], []
            for i in range(min(tree, jobs - start)):
                job_id = root if i == 0 else f"{root}_1_{i - 1}"
                parent = None if i == 0 else root
                rows.append((job_id, parent, None if i == 0 else i - 1, root, now, now, now))
                steps.append((job_id, 0, "stage", "child", "done", first, now, root))
                for event in ("submitted", "started", "finished", "done"):
                    events.append((job_id, now, 0, "child", event, None))
            conn.executemany(
                "INSERT INTO jobs (job_id, parent_id, item_index, program_id, workflow,"
                " arguments, backend, status, stage, seq, created_at, updated_at, finished_at,"
                " root_id) VALUES (?,?,?,'p','bench_fanout','{}','aer','DONE',NULL,1,?,?,?,?)",
                [(*r[:3], r[4], r[5], r[6], r[3]) for r in rows],
            )
            conn.executemany(
                "INSERT INTO steps (job_id, seq, kind, stage, state, detail, created_at,"
                " root_id) VALUES (?,?,?,?,?,?,?,?)",
                steps,
            )
            conn.executemany(
                "INSERT INTO events (job_id, at, seq, stage, event, detail) VALUES (?,?,?,?,?,?)",
                events,
            )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a home that has been idle
    conn.close()
    os.sync()  # its writes reach the disk now, not during the measured run


def submit_latency(samples: int = 10) -> list[float]:
    root = Path(tempfile.mkdtemp(prefix="qlayer-scale-"))
    client = _client(root)
    try:
        client.run(QISKIT_TOP, {"x": 0}).result(timeout=120)
        times = []
        for i in range(samples):
            started = time.perf_counter()
            job = client.run(QISKIT_TOP, {"x": i})
            times.append(time.perf_counter() - started)
            job.result(timeout=120)
        return times
    finally:
        client.down()
        shutil.rmtree(root, ignore_errors=True)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,50000")
    parser.add_argument("--history", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("QLAYER_RETENTION_DAYS", "0")  # the history must stay
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows = []
    disk_per_child = None
    for n in sizes:
        runs = [fanout_once(n) for _ in range(args.repeat)]
        wall = statistics.median(r[0] for r in runs)
        disk_per_child = (runs[-1][1] / n, n)
        floor = floor_fanout(n)
        rows.append(
            (
                f"fan-out of {n:,} children, fresh home",
                _fmt_s(wall),
                f"{wall / n * 1000:.2f} ms",
                _fmt_s(floor),
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
    for history in (0, args.history):
        walls = []
        for _ in range(args.repeat):
            root = Path(tempfile.mkdtemp(prefix="qlayer-scale-"))
            try:
                if history:
                    build_history(Home.resolve(root), history)
                walls.append(fanout_once(1000, root)[0])
            finally:
                shutil.rmtree(root, ignore_errors=True)
        wall = statistics.median(walls)
        rows.append(
            (
                f"1,000 children, {history:,} finished jobs in the home",
                _fmt_s(wall),
                f"{wall:.2f} ms",
                _fmt_s(floor_fanout(1000)),
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
    latency = statistics.median(submit_latency())
    rows.append(
        (
            "submit (Client.run) of a program importing qiskit, warm daemon",
            f"{latency * 1000:.0f} ms",
            "",
            "—",
        )
    )
    print("| measure | qlayer local | per child | floor (one process) |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if disk_per_child:
        per, n = disk_per_child
        print(f"\nDisk per child job (fan-out of {n:,}): {per / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
