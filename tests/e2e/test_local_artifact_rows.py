"""A quick step's small artifacts are rows of the state database, not files (issue 8,
scale: a child's folders and files had set the pace of a large fan-out); everything
reads them back as before, and pruning takes them with the tree."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers

FANOUT = Path(__file__).resolve().parent / "programs" / "fanout.py"
PRINTS = """
from qlayer import Done, Workflow

wf = Workflow("prints")


@wf.stage()
def talk(args):
    print("a line of the stage's own")
    return Done(1)
"""


@pytest.fixture
def client(tmp_path):
    yield from helpers.local_client(tmp_path / "home")


def rows(client, job_id: str) -> int:
    with helpers.db(client) as conn:
        return conn.execute(
            "SELECT COUNT(*) FROM artifact_rows WHERE key >= ? AND key < ?",
            (f"jobs/{job_id}", f"jobs/{job_id}\U0010ffff"),
        ).fetchone()[0]


def test_a_fanouts_children_leave_no_files_and_read_back(client):
    job = client.run(FANOUT, {"n": 20})
    assert job.result(timeout=120) == {"children": 20}
    children = job.children()
    assert len(children) == 20
    folders = sorted(p.name for p in (client.home.artifacts / "jobs").iterdir())
    assert not [name for name in folders if name.startswith(f"{job.job_id}_")], folders
    assert children[3].result(timeout=10) == 3
    assert "stage child started (run 1, step 0, attempt 1)" in children[3].logs()
    assert "stage child finished" in job.logs(children=True)
    assert rows(client, job.job_id) >= 3 * 20

    report = client.prune(job_ids=[job.job_id])
    assert report.jobs == 21
    assert rows(client, job.job_id) == 0


def test_a_stage_that_prints_keeps_its_log_as_a_file(client, tmp_path):
    program = tmp_path / "prints.py"
    program.write_text(PRINTS)
    job = client.run(program, {})
    assert job.result(timeout=120) == 1
    [log] = client.store.list(f"jobs/{job.job_id}/logs/")
    # a stage's own output is a file (it survives a kill once printed), with qlayer's lines
    text = client.store.path(log).read_text()
    assert "a line of the stage's own" in text and "stage talk started" in text
    assert text in job.logs()
