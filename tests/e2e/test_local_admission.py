"""Fast submission: the daemon checks programs in a warm worker, the client imports none."""

from __future__ import annotations

import json
import os
import re
import subprocess
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


def _qlayer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "qlayer.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _imported(stderr: str) -> set[str]:
    return {
        line.split("|")[-1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.slow
def test_a_plain_cli_run_submits_without_the_cli_libraries_and_says_the_same(client, tmp_path):
    program = tmp_path / "marked.py"
    program.write_text(MARKED.format(side=str(tmp_path / "side.txt")))
    client.up()
    home = str(client.home.root)
    plain = _qlayer("run", str(program), "--arg", "x=4", "--json", "--home", home)
    assert plain.returncode == 0, plain.stderr
    job_id = json.loads(plain.stdout)["job_id"]
    assert client.job(job_id).result(timeout=60) == 12
    loaded = _imported(plain.stderr)
    heavy = {m for m in loaded if m.split(".")[0] in ("typer", "rich", "pydantic", "qiskit")}
    assert heavy == set(), sorted(heavy)
    assert "qlayer.cli_app" not in loaded and "qlayer.workflow" not in loaded

    # The same command through the whole CLI (a global option sends it there) prints the
    # same lines, and a refusal the same message.
    spoken = _qlayer("run", str(program), "-a", "x=5", "--home", home)
    whole = _qlayer("--target", "local", "run", str(program), "-a", "x=5", "--home", home)
    assert "qlayer.cli_app" in _imported(whole.stderr)
    for done in (spoken, whole):
        assert done.returncode == 0, done.stderr
    said = [re.sub(r"\d{8}-\d{6}-[0-9a-f]{6}", "ID", d.stdout) for d in (spoken, whole)]
    assert said[0] == said[1]
    assert said[0].splitlines()[0] == "job ID submitted"
    refused = [
        _qlayer(*prefix, "run", str(program), "--arg", "x=four", "--home", home)
        for prefix in ((), ("--target", "local"))
    ]
    for done in refused:
        assert done.returncode == 1
        lines = [line for line in done.stderr.splitlines() if not line.startswith("import time")]
        assert lines == ["error: argument 'x' must be int, got 'four'"], lines


def test_only_a_plain_local_run_takes_the_short_path():
    from qlayer.cli import parse_plain_run

    local: dict[str, str] = {}
    parsed = parse_plain_run(
        [
            "run",
            "p.py",
            "-a",
            "x=1",
            "--arg=y=2",
            "--notify",
            "desktop",
            "--max-cost-usd",
            "2",
            "--backend",
            "aer",
            "--arg-file",
            "a.json",
            "--home",
            "h",
            "--json",
        ],
        local,
    )
    assert parsed == {
        "program": "p.py",
        "json": True,
        "arg": ["x=1", "y=2"],
        "notify": ["desktop"],
        "max_cost_usd": 2.0,
        "backend": "aer",
        "arg_file": "a.json",
        "home": "h",
    }
    for argv in (
        ["run", "p.py", "--wait"],
        ["run", "p.py", "-w"],
        ["run", "--help"],
        ["run"],
        ["run", "p.py", "q.py"],
        ["run", "p.py", "--arg"],
        ["run", "p.py", "--max-cost-usd", "lots"],
        ["run", "p.py", "--backend", "a", "--backend", "b"],
        ["run", "p.py", "--timeout", "5"],
        ["--target", "aws", "run", "p.py"],
        ["status", "J"],
        [],
    ):
        assert parse_plain_run(argv, local) is None, argv
    assert parse_plain_run(["run", "p.py"], {"QLAYER_TARGET": "aws"}) is None
