"""Scale of the local substrate: fan-outs, history, submit latency, disk per child.

Run with ``make bench`` or ``.venv/bin/python bench/scale.py``; prints a markdown table.
By default: N = 100, 1,000 and 10,000, history 0 and 20,000 jobs (about a minute). The
whole curve (N = 50,000 and 200,000 finished jobs, a few minutes more) with ``--full``;
or pick: ``--sizes 100,1000`` the fan-out sizes, ``--history 200000`` the size of the
history, ``--repeat 3`` runs each measure that many times (the range is shown),
``--fanouts-only`` runs the fan-outs alone (no history, no submit).

Beside wall time each fan-out reports the CPU seconds the daemon and its workers spent
(from ``/proc``): on a machine shared with others, wall time moves with their load and
CPU time much less.

Measures:
1. a fan-out of N trivial children then one collect stage (``tests/e2e/programs/fanout.py``),
   each N on a fresh home with a warm daemon (2 workers), beside the floor: the same
   stage functions called in one process;
2. the same 1,000-child job on a home that already holds ``--history`` finished jobs.
   The history is built fast by direct inserts into the state database (one top-level
   job per 1,000 children, each child DONE with its step, events and artifact rows, as
   the daemon leaves them; no artifact files), then the daemon is started on it;
3. submit latency of a program that imports qiskit at top level, warm daemon (median of
   10): ``Client.run`` in this process until it returns the job id, and ``qlayer run
   --json`` as a whole process, beside the floor of a process that only starts Python;
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
    """The disk blocks ``path`` takes (``du -sk``), in bytes."""
    blocks = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True)
    return int(blocks.stdout.split()[0]) * 1024


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) spent so far by ``pid`` and its live descendants."""
    pids, seen = [pid], 0
    while seen < len(pids):
        current = pids[seen]
        seen += 1
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text()
            except OSError:
                continue
            pids += [int(child) for child in children.split()]
    ticks = 0
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def fanout_once(n: int, home: Path | None = None) -> tuple[float, float, int]:
    """Wall time and CPU seconds (daemon and workers) of one N-child job on ``home``
    (fresh if None), and the disk it added to the home."""
    own = home is None
    root = Path(tempfile.mkdtemp(prefix="qlayer-scale-")) if own else home
    assert root is not None
    client = _client(root)
    try:
        pid = client.daemon_pid()
        assert pid is not None
        before = disk_bytes(root)
        cpu = tree_cpu_s(pid)
        started = time.perf_counter()
        result = client.run(FANOUT, {"n": n}).result(timeout=3600)
        wall = time.perf_counter() - started
        cpu = tree_cpu_s(pid) - cpu
        assert result == {"children": n}, result
        used = disk_bytes(root) - before
    finally:
        client.down()
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return wall, cpu, used


#: The small artifacts a trivial child leaves as rows (``qlayer.local.artifacts``): its
#: decision, its result and its log, as the daemon commits them.
CHILD_ROWS = (
    (
        "stages/0000-child/output.json",
        b'{"kind":"done","seq":0,"stage":"child","count":0,'
        b'"result_key":"jobs/20200101-000000-000000_1_0/result.json"}',
    ),
    ("result.json", b"0"),
    (
        "logs/0000-child.log",
        b"2020-01-01T00:00:00 INFO    stage child started (run 1, step 0, "
        b"attempt 1)\n2020-01-01T00:00:00 INFO    stage child finished in 0.000 s\n",
    ),
)


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
            rows, steps, events, artifacts = [], [], [], []
            for i in range(min(tree, jobs - start)):
                job_id = root if i == 0 else f"{root}_1_{i - 1}"
                parent = None if i == 0 else root
                rows.append((job_id, parent, None if i == 0 else i - 1, root, now, now, now))
                steps.append((job_id, 0, "stage", "child", "done", first, now, root))
                for event in ("submitted", "started", "finished", "done"):
                    events.append((job_id, now, 0, "child", event, None))
                artifacts += [(f"jobs/{job_id}/{name}", data) for name, data in CHILD_ROWS]
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
            conn.executemany("INSERT INTO artifact_rows (key, data) VALUES (?, ?)", artifacts)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a home that has been idle
    conn.close()
    os.sync()  # its writes reach the disk now, not during the measured run


def submit_latency(samples: int = 10) -> tuple[list[float], list[float], list[float]]:
    """``Client.run`` in this process, ``qlayer run --json`` as a whole process, and a
    process that only starts Python: seconds each, ``samples`` times."""
    root = Path(tempfile.mkdtemp(prefix="qlayer-scale-"))
    client = _client(root)
    cli = [sys.executable, "-m", "qlayer.cli", "run", str(QISKIT_TOP), "--json"]
    env = {**os.environ, "QLAYER_HOME": str(root)}
    try:
        client.run(QISKIT_TOP, {"x": 0}).result(timeout=120)
        in_process, whole, bare = [], [], []
        for i in range(samples):
            started = time.perf_counter()
            job = client.run(QISKIT_TOP, {"x": i})
            in_process.append(time.perf_counter() - started)
            job.result(timeout=120)
            started = time.perf_counter()
            done = subprocess.run([*cli, "--arg", f"x={i}"], env=env, capture_output=True)
            whole.append(time.perf_counter() - started)
            assert done.returncode == 0, done.stderr
            client.job(json.loads(done.stdout)["job_id"]).result(timeout=120)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - started)
        return in_process, whole, bare
    finally:
        client.down()
        shutil.rmtree(root, ignore_errors=True)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _span(values: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    """``low–high unit`` over the repeats (one value when there is one run)."""
    low, high = min(values) * scale, max(values) * scale
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{low:.{digits}f} {unit}"
    return f"{low:.{digits}f}–{high:.{digits}f} {unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="fan-out sizes (default 100,1000,10000)")
    parser.add_argument("--history", type=int, default=None, help="finished jobs (20000)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--fanouts-only", action="store_true", help="only the fan-outs (no history, no submit)"
    )
    parser.add_argument(
        "--full", action="store_true", help="the whole curve: N up to 50,000, history 200,000"
    )
    args = parser.parse_args()
    os.environ.setdefault("QLAYER_RETENTION_DAYS", "0")  # the history must stay
    sizes_text = args.sizes or ("100,1000,10000,50000" if args.full else "100,1000,10000")
    history_size = args.history or (200_000 if args.full else 20_000)
    sizes = [int(s) for s in sizes_text.split(",") if s]
    rows = []
    disk_per_child = None
    for n in sizes:
        runs = [fanout_once(n) for _ in range(args.repeat)]
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        disk_per_child = (runs[-1][2] / n, n)
        floor = floor_fanout(n)
        rows.append(
            (
                f"fan-out of {n:,} children, fresh home",
                _span(walls),
                _span(cpus),
                _span([w / n for w in walls], "ms", 1000),
                _fmt_s(floor),
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
    for history in () if args.fanouts_only else (0, history_size):
        walls, cpus = [], []
        for _ in range(args.repeat):
            root = Path(tempfile.mkdtemp(prefix="qlayer-scale-"))
            try:
                if history:
                    build_history(Home.resolve(root), history)
                wall, cpu, _used = fanout_once(1000, root)
                walls.append(wall)
                cpus.append(cpu)
            finally:
                shutil.rmtree(root, ignore_errors=True)
        rows.append(
            (
                f"1,000 children, {history:,} finished jobs in the home",
                _span(walls),
                _span(cpus),
                _span([w / 1000 for w in walls], "ms", 1000),
                _fmt_s(floor_fanout(1000)),
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
    if not args.fanouts_only:
        in_process, whole, bare = submit_latency()
        rows.append(
            (
                "submit (`Client.run`) of a program importing qiskit, warm daemon",
                f"{statistics.median(in_process) * 1000:.0f} ms",
                "",
                "",
                "—",
            )
        )
        rows.append(
            (
                "`qlayer run --json` of that program, whole process, warm daemon",
                f"{statistics.median(whole) * 1000:.0f} ms",
                "",
                "",
                f"{statistics.median(bare) * 1000:.0f} ms (`python -c pass`)",
            )
        )
    print("| measure | wall | CPU, daemon + workers | wall per child | floor (one process) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if disk_per_child:
        per, n = disk_per_child
        print(f"\nDisk per child job (fan-out of {n:,}): {per / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
