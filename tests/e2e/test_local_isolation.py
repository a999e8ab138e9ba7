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
