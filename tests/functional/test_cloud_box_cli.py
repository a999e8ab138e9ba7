"""`qlayer --target cloud-box run PROGRAM --wait`: a fresh box in its own process.

It synthesizes the stack, starts the box, runs the program through ``Client.aws``,
prints the states its execution entered, the result and the logs, and stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QLAYER = Path(sys.executable).with_name("qlayer")


@pytest.mark.slow
def test_run_a_program_in_a_fresh_cloud_box() -> None:
    program = REPO / "tests" / "functional" / "programs" / "aws_tiny.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    env["JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"] = "20"
    done = subprocess.run(
        [str(QLAYER), "--target", "cloud-box", "run", str(program), "--arg", "shots=8", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=480,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["status"] == "DONE"
    assert sum(report["result"]["counts"].values()) == 8
    assert report["states"][0] == "Load job" and report["states"][-1] == "Job done"
    assert "Wait for QPU" not in report["states"] and "Simulate on Lambda" in report["states"]
    assert "hello from build" in report["logs"]
    assert "cloud box up: moto on http://127.0.0.1:" in done.stderr
    # another target's commands cannot reach a box that is gone
    gone = subprocess.run(
        [str(QLAYER), "--target", "cloud-box", "status", report["job_id"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert gone.returncode == 2 and "lives for one program" in gone.stderr
