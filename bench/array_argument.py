"""A 5 MB numpy array as a job argument (issue 8.3): submit and end to end, local substrate.

Run with ``.venv/bin/python bench/array_argument.py``. Prints a markdown table. The
floor is the same work done in-process: ``np.save`` of the array plus ``json.dumps`` of
the small rest into a folder (submit), then ``np.load`` and the stage's sum (end to end).
Also reports what the job wrote: the size of ``input.json`` and of the array's sidecar.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
PROGRAM = HERE / "programs" / "array_arg.py"


def floor(weights: np.ndarray, folder: Path) -> tuple[float, float]:
    """The same bytes written and read back in-process: (submit s, end to end s)."""
    started = time.perf_counter()
    np.save(folder / "input-0.npy", weights, allow_pickle=False)
    (folder / "input.json").write_text(json.dumps({"weights": {"file": "input-0.npy"}}))
    submitted = time.perf_counter() - started
    back = np.load(folder / "input-0.npy", allow_pickle=False)
    assert back.size == weights.size and float(back.sum()) > 0  # the stage's work
    return submitted, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=float, default=5.0)
    options = parser.parse_args()

    from qlayer import Client, keys

    weights = np.random.default_rng(7).random(int(options.mb * 1e6 / 8))
    with tempfile.TemporaryDirectory() as tmp:
        client = Client.local(home=Path(tmp) / "home", workers=1)
        try:
            client.up()
            client.run(PROGRAM, {"weights": weights[:10]}).result(timeout=120)  # warm
            submits, totals, floors_submit, floors_total = [], [], [], []
            sizes: dict[str, int] = {}
            for run in range(options.runs):
                started = time.perf_counter()
                job = client.run(PROGRAM, {"weights": weights})
                submits.append(time.perf_counter() - started)
                result = job.result(timeout=300)
                totals.append(time.perf_counter() - started)
                assert result["n"] == weights.size
                folder = Path(tmp) / f"floor-{run}"
                folder.mkdir()
                f_submit, f_total = floor(weights, folder)
                floors_submit.append(f_submit)
                floors_total.append(f_total)
                root = client.store.root / keys.job_prefix(job.job_id)
                sizes = {p.name: p.stat().st_size for p in root.glob("input*")}
        finally:
            client.down()

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms"

    title = f"{weights.nbytes / 1e6:.1f} MB float64 array argument"
    print(f"| {title} | qlayer local | floor (in-process) |")
    print("|---|---:|---:|")
    print(f"| submit (`client.run`) | {ms(submits)} | {ms(floors_submit)} |")
    print(f"| end to end (submit to result) | {ms(totals)} | {ms(floors_total)} |")
    print(f"| `input.json` | {sizes.get('input.json', 0)} B | |")
    print(f"| `input-0.npy` (the array, written once) | {sizes.get('input-0.npy', 0)} B | |")
    print(f"\nmedian of {options.runs} runs; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
