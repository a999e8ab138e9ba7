"""Overhead of the local layer against the floor: the same stages called in one process.

Run with ``make bench`` or ``.venv/bin/python bench/local_overhead.py``. Prints a
markdown table; ``--write docs/benchmarks.md`` also records it with the command.

Measures (issue targets in brackets):
1. per-stage overhead with warm workers: a 20-stage chain of no-op stages, per stage
   (median ≤ 25 ms);
2. submit-to-result overhead of a 4-stage job (build, transpile, execute, count) over
   calling the same stages in-process (≤ 150 ms);
3. throughput of 200 trivial jobs submitted at once on this machine (≥ 10 jobs/s);
4. the execute step: 200 small circuits in one Execute through qlayer vs one batched
   Aer call in-process (≥ 0.8× the floor's throughput).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
CHAIN = HERE / "programs" / "chain.py"
FOUR = HERE / "programs" / "four_stage.py"


def floor_four_stage(qubits: int, circuits: int, shots: int) -> float:
    """The 4-stage job's stages called directly, with the same cached pass manager."""
    from qiskit_aer.primitives import SamplerV2

    from qlayer.context import preset_pass_manager
    from qlayer.program import load_path

    wf = load_path(FOUR)
    args = {"qubits": qubits, "circuits": circuits, "shots": shots}
    started = time.perf_counter()
    built = wf.stages["build"].fn(args)
    isa = preset_pass_manager("aer", 1, 7).run(built)
    result = SamplerV2(seed=11).run(isa, shots=shots).result()
    wf.stages["count"].fn(result, None)  # count() takes ctx but does not use it
    return time.perf_counter() - started


def floor_chain(length: int) -> float:
    from qlayer.program import load_path

    wf = load_path(CHAIN)

    class Ctx:
        arguments = {"length": length}

    started = time.perf_counter()
    data: object = {}
    fn = wf.stages["step"].fn
    while True:
        out = fn(data, Ctx())
        if type(out).__name__ == "Done":
            break
        data = out.data
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument(
        "--write", type=Path, default=None, help="Record the table in this markdown file."
    )
    args = parser.parse_args()

    from qlayer import Client

    home = Path(tempfile.mkdtemp(prefix="qlayer-bench-"))
    client = Client.local(home)
    client.up()
    rows: list[tuple[str, str, str, str, str]] = []
    try:
        # warm up: program cache, pass manager, simulator
        client.run(FOUR, {"qubits": 5}).result(timeout=120)
        client.run(CHAIN, {"length": 2}).result(timeout=120)

        # 1. per-stage overhead
        length = 20
        per_stage = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            client.run(CHAIN, {"length": length}).result(timeout=120)
            wall = time.perf_counter() - started
            per_stage.append((wall - floor_chain(length)) / length)
        median_stage = statistics.median(per_stage) * 1000
        rows.append(
            (
                "per-stage overhead, warm workers (20-stage chain)",
                f"{median_stage:.1f} ms median",
                f"{floor_chain(length) / length * 1e6:.1f} µs",
                "≤ 25 ms",
                _ok(median_stage <= 25),
            )
        )

        # 2. 4-stage job submit-to-result
        overheads, walls, floors = [], [], []
        for _ in range(args.repeats):
            floor = floor_four_stage(5, 1, 1000)
            started = time.perf_counter()
            client.run(FOUR, {"qubits": 5, "circuits": 1, "shots": 1000}).result(timeout=120)
            wall = time.perf_counter() - started
            walls.append(wall)
            floors.append(floor)
            overheads.append(wall - floor)
        over = statistics.median(overheads) * 1000
        rows.append(
            (
                "4-stage job, submit to result",
                f"{statistics.median(walls) * 1000:.0f} ms median",
                f"{statistics.median(floors) * 1000:.0f} ms",
                "≤ +150 ms",
                f"+{over:.0f} ms {_ok(over <= 150)}",
            )
        )

        # 3. throughput of N trivial jobs
        started = time.perf_counter()
        submitted = [client.run(CHAIN, {"length": 1}) for _ in range(args.jobs)]
        submit_s = time.perf_counter() - started
        for job in submitted:
            job.result(timeout=600)
        total = time.perf_counter() - started
        rate = args.jobs / total
        rows.append(
            (
                f"throughput, {args.jobs} trivial jobs at once",
                f"{rate:.1f} jobs/s",
                f"submit {args.jobs / submit_s:.0f} jobs/s",
                "≥ 10 jobs/s",
                _ok(rate >= 10),
            )
        )

        # 4. execute step: 200 small circuits
        n_circuits = 200
        floor = min(floor_four_stage(10, n_circuits, 1000) for _ in range(3))
        walls = []
        for _ in range(3):
            started = time.perf_counter()
            client.run(FOUR, {"qubits": 10, "circuits": n_circuits, "shots": 1000}).result(
                timeout=300
            )
            walls.append(time.perf_counter() - started)
        wall = min(walls)
        ratio = floor / wall
        rows.append(
            (
                f"execute: {n_circuits} × 10-qubit circuits, whole job",
                f"{n_circuits / wall:.0f} circuits/s",
                f"{n_circuits / floor:.0f} circuits/s",
                "≥ 0.8× floor",
                f"{ratio:.2f}× {_ok(ratio >= 0.8)}",
            )
        )
    finally:
        client.down()

    table = render(rows)
    print(table)
    if args.write:
        record(args.write, table)
    return 0


def _ok(passed: bool) -> str:
    return "✓" if passed else "✗"


def render(rows: list[tuple[str, str, str, str, str]]) -> str:
    lines = [
        "| measure | qlayer local | floor (in-process) | target | met |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(lines)


def record(path: Path, table: str) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    section = (
        "## Local layer overhead\n\n"
        f"Command: `.venv/bin/python bench/local_overhead.py --write docs/benchmarks.md`  \n"
        f"Machine: {machine}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
        f"{table}\n"
    )
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find("## Local layer overhead")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
