"""Per-program environments on the local substrate: first build, warm start (issue 10).

Run with ``.venv/bin/python bench/envs.py`` (``--write docs/benchmarks.md`` records the
table with the command). Needs the package index (uv downloads the pins).

For a small and a medium requirement set, in a fresh ``$QLAYER_HOME`` and a fresh uv
cache (cold: every wheel is downloaded):

* submit: ``client.run`` of the first job (the lock is resolved here, once);
* first build: the ``building environment`` → ``environment ready`` time of that job,
  beside the floor: the same ``uv pip install --target`` run by hand (its own cold cache);
* time to first stage (submit → ``started``) of the first job, of a second job with the
  same lock (warm: no resolve, no build) and of a job with no requirements (median of
  five each); the target is warm within 200 ms of no requirements.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETS = {
    "small (tabulate)": ["tabulate==0.9.0"],
    "medium (8 requirements: pendulum, arrow, humanize...)": [
        "pendulum>=3",
        "arrow>=1.3",
        "humanize>=4",
        "python-slugify>=8",
        "termcolor>=2",
        "more-itertools>=10",
        "toml>=0.10",
        "tabulate>=0.9",
    ],
}

PROGRAM = """
from qlayer import Done, Workflow

wf = Workflow("bench-env")


@wf.stage()
def start(args):
    return Done(1)
"""

REPEATS = 5


def folder(root: Path, requirements: list[str]) -> Path:
    root.mkdir(parents=True)
    (root / "main.py").write_text(PROGRAM)
    if requirements:
        (root / "requirements.txt").write_text("\n".join(requirements) + "\n")
    return root


def first_stage_s(client, prog: Path) -> tuple[float, float, object]:
    """(submit seconds, submit → first ``started`` seconds, the job)."""
    started = time.time()
    job = client.run(prog)
    submitted = time.time() - started
    job.result(timeout=900)
    at = next(e["at"] for e in job.timeline() if e["event"] == "started")
    return submitted, at - started, job


def floor_build(pins: list[str]) -> float:
    from qlayer.envs import Base
    from qlayer.envs.lock import python_options
    from qlayer.envs.uv import index_options, uv_bin, without_constraints

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "r.txt").write_text("".join(p + "\n" for p in pins))
        env = {**os.environ, "UV_CACHE_DIR": str(Path(tmp) / "cache")}
        command = [uv_bin(), "pip", "install", "--target", str(Path(tmp) / "site"), "--no-deps"]
        command += [
            "--link-mode",
            "copy",
            "--compile-bytecode",
            "-q",
            "-r",
            str(Path(tmp) / "r.txt"),
        ]
        command += python_options(Base.current()) + without_constraints(index_options())
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        return time.perf_counter() - started


def measure(name: str, requirements: list[str]) -> dict[str, str]:
    from qlayer import Client

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UV_CACHE_DIR"] = str(Path(tmp) / "uv-cache")  # cold, for the daemon too
        client = Client.local(home=Path(tmp) / "home", workers=2)
        try:
            client.up()
            plain = folder(Path(tmp) / "plain", [])
            first_stage_s(client, plain)  # warm the daemon
            prog = folder(Path(tmp) / "prog", requirements)
            submit_s, first_s, job = first_stage_s(client, prog)
            events = {e["event"]: e for e in job.timeline()}
            build_s = events["environment ready"]["detail"]["build_s"]
            env = client.jobstore.get(job.job_id).env
            from qlayer.envs import load_lock

            pins = list(load_lock(client.store, env).install)
            warm = [first_stage_s(client, prog)[1] for _ in range(REPEATS)]
            none = [first_stage_s(client, plain)[1] for _ in range(REPEATS)]
        finally:
            client.down()
    floor = floor_build(pins)
    gap = (statistics.median(warm) - statistics.median(none)) * 1000
    return {
        "set": f"{name}, {len(pins)} pin{'s' if len(pins) != 1 else ''} installed",
        "submit": f"{submit_s:.2f} s",
        "build": f"{build_s:.2f} s",
        "floor": f"{floor:.2f} s",
        "first": f"{first_s:.2f} s",
        "warm": f"{statistics.median(warm) * 1000:.0f} ms",
        "none": f"{statistics.median(none) * 1000:.0f} ms",
        "gap": f"{gap:+.0f} ms {'✓' if gap <= 200 else '✗'}",
    }


def table(rows: list[dict[str, str]]) -> str:
    head = (
        "| requirement set | first submit (resolves) | first build | floor: uv by hand | "
        "first job, submit → stage | warm job, submit → stage | no requirements | "
        "warm − none (≤ 200 ms) |\n|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['set']} | {r['submit']} | {r['build']} | {r['floor']} | {r['first']} | "
        f"{r['warm']} | {r['none']} | {r['gap']} |\n"
        for r in rows
    )
    return head + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="record the table in this markdown file")
    args = parser.parse_args()
    rows = [measure(name, reqs) for name, reqs in SETS.items()]
    text = table(rows)
    print(text)
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if args.write:
        section = (
            "\n## Program environments (issue 10)\n\n"
            "`.venv/bin/python bench/envs.py` — fresh home and cold uv cache per set; medians "
            f"of {REPEATS} for the warm and no-requirements jobs.\n\n" + text
        )
        with args.write.open("a") as handle:
            handle.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
