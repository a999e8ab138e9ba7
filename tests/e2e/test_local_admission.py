"""Fast submission: the daemon checks programs in a warm worker, the client imports none."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers

from qlayer.errors import ArgumentError, BackendError, ProgramError

MARKED = """
import os, pathlib
pathlib.Path({side!r}).open("a").write(f"{{os.getpid()}}\\n")
from qlayer import Workflow, Param
wf = Workflow("marked", params={{"x": Param(int, 1, "a number")}})

@wf.stage()
def only(args):
    return args["x"] * 3
"""


@pytest.fixture
def client(tmp_path):
    yield from helpers.local_client(tmp_path / "home")


@pytest.mark.slow
def test_run_does_not_import_the_program_in_the_client(client, tmp_path):
    side = tmp_path / "imported-by.txt"
    program = tmp_path / "marked.py"
    program.write_text(MARKED.format(side=str(side)))
    client.up()
    job = client.run(program, {"x": 5})
    assert job.result(timeout=60) == 15
    importers = {int(line) for line in side.read_text().split()}
    assert os.getpid() not in importers  # loaded where qiskit is warm, not here
    job = client.run(program, cli_arguments=["x=7"])  # typed by the params there
    assert job.result(timeout=60) == 21
    with helpers.db(client) as conn:
        assert conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 0


@pytest.mark.slow
def test_every_check_still_fails_before_the_job_is_accepted(client, tmp_path):
    program = tmp_path / "marked.py"
    program.write_text(MARKED.format(side=str(tmp_path / "side.txt")))
    broken = tmp_path / "broken.py"
    broken.write_text("def nope(:\n")
    raises = tmp_path / "raises.py"
    raises.write_text("raise RuntimeError('no config file')\n")
    client.up()
    with pytest.raises(ProgramError, match="line 1"):
        client.run(broken)
    with pytest.raises(ArgumentError, match="unknown argument"):
        client.run(program, {"y": 1})
    with pytest.raises(ArgumentError):
        client.run(program, cli_arguments=["x=not-a-number"])
    with pytest.raises(BackendError):
        client.run(program, backend="no_such_backend")
    with pytest.raises(ProgramError, match="RuntimeError: no config file"):
        client.run(raises)
    with helpers.db(client) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 0


GREEDY = """
from qlayer import Workflow, Param
wf = Workflow("greedy", params={{"nodes": Param(int, 8, "graph size")}})

@wf.stage(compute="batch-gpu", gpus=64, vcpus=512, memory_mb={memory})
def only(args):
    return args["nodes"]
"""


def test_the_cli_reports_a_check_the_daemon_made_in_one_line(client, tmp_path):
    import subprocess

    program = tmp_path / "p.py"
    program.write_text(GREEDY.format(memory=4096))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "qlayer.cli",
            "run",
            str(program),
            "--arg",
            "nodes=eight",
            "--home",
            str(client.home.root),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "argument 'nodes' must be int" in done.stderr
    assert "Traceback" not in done.stderr


def test_this_machines_resources_are_checked_by_the_daemon(client, tmp_path):
    from qlayer.errors import WorkflowError

    huge = tmp_path / "huge.py"
    huge.write_text(GREEDY.format(memory=10**9))
    with pytest.raises(WorkflowError, match="declares memory_mb=1000000000; this machine"):
        client.run(huge)
    jobs_folder = client.home.artifacts / "jobs"
    assert not jobs_folder.exists() or not list(jobs_folder.iterdir())  # nothing left
    greedy = tmp_path / "greedy.py"
    greedy.write_text(GREEDY.format(memory=4096))
    job = client.run(greedy, notify=["desktop"], max_cost_usd=5)
    warnings = job.info()["warnings"]
    assert any("declares gpus=64" in w for w in warnings), warnings
    assert any("declares vcpus=512" in w for w in warnings), warnings
    assert client.store.get_json(f"jobs/{job.job_id}/input.json")["max_cost_usd"] == 5.0
    with helpers.db(client) as conn:
        [targets] = conn.execute("SELECT targets FROM notify_targets").fetchall()
    assert targets[0] == '["desktop"]'
    assert job.result(timeout=120) == 8
