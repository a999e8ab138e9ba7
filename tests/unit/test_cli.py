"""The qlayer command's read-only commands and its error messages (no daemon needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROGRAM = """
from qlayer import Workflow, Done, Param
wf = Workflow("cli_demo", params={"nodes": Param(int, 8, "graph size")})

@wf.stage(compute="batch", memory_mb=4096)
def only(args):
    return Done(args["nodes"])
"""


def qlayer(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qlayer.cli", *args, "--home", str(home)]
        if args[0] not in ("describe",)
        else [sys.executable, "-m", "qlayer.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_describe_shows_params_and_stages(tmp_path):
    program = tmp_path / "p.py"
    program.write_text(PROGRAM)
    done = qlayer("describe", str(program), "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["params"]["nodes"]["default"] == 8
    assert info["stages"][0]["kind"] == "batch"


def test_backends_lists_simulators_and_fake_devices(tmp_path):
    done = qlayer("backends", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    names = {b["name"]: b for b in json.loads(done.stdout)}
    assert names["aer"]["kind"] == "simulator"
    assert names["fake_brisbane"]["kind"] == "qpu"
    assert names["fake_brisbane"]["num_qubits"] == 127


def test_errors_are_one_clear_line_and_exit_1(tmp_path):
    program = tmp_path / "p.py"
    program.write_text(PROGRAM)
    bad_type = qlayer("run", str(program), "--arg", "nodes=eight", home=tmp_path)
    assert bad_type.returncode == 1
    assert "argument 'nodes' must be int" in bad_type.stderr
    assert "Traceback" not in bad_type.stderr
    missing = qlayer("run", str(tmp_path / "nope.py"), home=tmp_path)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    syntax = qlayer("run", str(broken), home=tmp_path)
    assert syntax.returncode == 1
    assert "syntax error" in syntax.stderr and "line 1" in syntax.stderr
    unknown = qlayer("status", "no-such-job", home=tmp_path)
    assert unknown.returncode == 1
    assert "no job 'no-such-job'" in unknown.stderr
