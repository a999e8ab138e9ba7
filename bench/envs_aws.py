"""Per-program environments on the AWS substrate, in the cloud in a box (issue 10).

Run with ``.venv/bin/python bench/envs_aws.py`` (needs the package index and node for the
CDK). The stack is synthesized and run in the box (qlayer/cloudbox: moto's server, each
function in its own processes, Batch jobs as processes). For a small and a medium
requirement set:

* first build: the ``building environment`` -> ``environment ready`` time of the first job
  of the lock ("Build environment" on Batch: uv, a cold cache, the archive uploaded);
* time to first stage (``execution started`` -> the first stage's ``started``) of that
  job, of later jobs of the same lock (no build; the stage runner unpacks the archive the
  first time a process sees it, then keeps it) and of jobs with no requirements
  (median of ``--repeat``).

The box does not emulate Lambda's cold starts or AWS's latencies: the figures are the
layer's own overhead on this machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SETS = {
    "small (tabulate)": ["tabulate==0.9.0"],
    "medium (pendulum, arrow, humanize, python-slugify, termcolor)": [
        "pendulum>=3",
        "arrow>=1.3",
        "humanize>=4",
        "python-slugify>=8",
        "termcolor>=2",
    ],
}

PROGRAM = """
from qlayer import Done, Workflow

wf = Workflow("bench-env-aws"{requirements})


@wf.stage()
def start(args):
    return Done({{"ok": True}})
"""


def _at(timeline: list[dict[str, Any]], event: str) -> float:
    return float(next(e["at"] for e in timeline if e["event"] == event))


def first_stage_s(job: Any) -> float:
    timeline = job.timeline()
    return _at(timeline, "started") - _at(timeline, "execution started")


def build_s(job: Any) -> float:
    timeline = job.timeline()
    return _at(timeline, "environment ready") - _at(timeline, "building environment")


def run(client: Any, path: Path) -> Any:
    job = client.run(path, {})
    job.result(timeout=600)
    return job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from qlayer import Client
    from qlayer.cloudbox import CloudBox, synthesize
    from qlayer.cloudbox.server import REGION

    with tempfile.TemporaryDirectory(prefix="qlayer-bench-envs-aws-") as tmp:
        root = Path(tmp)
        rows: list[tuple[str, float, float, float, list[float], list[float]]] = []
        with CloudBox(synthesize(root / "cdk.out"), root / "box") as _box:
            client = Client.aws(stack="Qlayer", region=REGION)
            bare = root / "bare.py"
            bare.write_text(PROGRAM.format(requirements=""))
            run(client, bare)  # warm the functions' processes
            base = [first_stage_s(run(client, bare)) for _ in range(args.repeat)]
            for label, requirements in SETS.items():
                path = root / f"env_{len(rows)}.py"
                path.write_text(PROGRAM.format(requirements=f", requirements={requirements!r}"))
                started = time.perf_counter()
                first = client.run(path, {})
                submit_s = time.perf_counter() - started
                first.result(timeout=900)
                warm = [first_stage_s(run(client, path)) for _ in range(args.repeat)]
                rows.append((label, submit_s, build_s(first), first_stage_s(first), warm, base))
    print(f"Python {platform.python_version()}, {platform.machine()}, cloud in a box")
    print(
        "| requirements | submit (resolve) | first build | first job: to first stage | "
        "same lock: to first stage (median) | no requirements: to first stage (median) |"
    )
    print("|---|---|---|---|---|---|")
    for label, submit_s, built, first_s, warm, base in rows:
        print(
            f"| {label} | {submit_s:.2f} s | {built:.2f} s | {first_s:.2f} s | "
            f"{statistics.median(warm) * 1000:.0f} ms | {statistics.median(base) * 1000:.0f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
