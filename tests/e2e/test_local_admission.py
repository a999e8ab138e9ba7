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
