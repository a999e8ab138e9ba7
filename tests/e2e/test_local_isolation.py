"""Programs run by the same warm worker see only their own modules (issue 8.1)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers

MAIN = """
from qlayer import Workflow

wf = Workflow("iso")


@wf.stage()
def start(args):
    import helper  # imported inside the stage

    return {"who": helper.f()}
"""

SINGLE = """
import helper
from qlayer import Workflow

wf = Workflow("iso-single")


@wf.stage()
def start(args):
    return {"who": helper.f()}
"""


@pytest.fixture
def client(tmp_path):
    # One worker: every job runs in the same warm process.
    yield from helpers.local_client(tmp_path / "home", workers=1)


def folder(root: Path, who: str, main: str = MAIN, entry: str = "main.py") -> Path:
    root.mkdir(parents=True)
    (root / entry).write_text(main)
    (root / "helper.py").write_text(f"def f():\n    return {who!r}\n")
    return root


def test_two_programs_with_their_own_helper_in_one_worker(client, tmp_path):
    a = folder(tmp_path / "a", "A")
    b = folder(tmp_path / "b", "B")
    for _ in range(3):
        assert client.run(a).result(timeout=120) == {"who": "A"}
        assert client.run(b).result(timeout=120) == {"who": "B"}


def test_single_file_program_with_a_sibling_module(client, tmp_path):
    prog = folder(tmp_path / "s", "S", SINGLE, "prog.py") / "prog.py"
    assert client.run(prog).result(timeout=120) == {"who": "S"}


SAVES_FILES = """
from qlayer import Workflow

wf = Workflow("files")


@wf.stage()
def start(args, ctx):
    ctx.save_file("grüße ✓.txt", "hallo")
    ctx.save_file("plots/fig 1.csv", "1,2")
    try:
        ctx.save_file("../escape.txt", "no")
    except ValueError as exc:
        return {"refused": str(exc)}
    return {"refused": None}
"""


def test_unicode_file_names_are_saved_listed_and_downloaded(client, tmp_path):
    import subprocess

    program = tmp_path / "files.py"
    program.write_text(SAVES_FILES)
    job = client.run(program)
    result = job.result(timeout=120)
    assert "'..' segments are not allowed" in result["refused"]
    assert sorted(job.files()) == ["grüße ✓.txt", "plots/fig 1.csv"]

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "qlayer.cli", *args, "--home", str(client.home.root)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    listed = cli("files", job.job_id)
    assert "grüße ✓.txt" in listed.stdout and "plots/fig 1.csv" in listed.stdout
    fetched = cli("download", job.job_id, "grüße ✓.txt")
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "grüße ✓.txt").read_text() == "hallo"
    for bad, says in [("../x", "'..'"), ("nothing.txt", "saved no file named 'nothing.txt'")]:
        refused = cli("download", job.job_id, bad)
        assert refused.returncode == 1
        assert "Traceback" not in refused.stderr
        assert says in refused.stderr
        assert len(refused.stderr.strip().splitlines()) <= 2, refused.stderr
