"""Retention: ``qlayer prune`` and the default retention (whole trees, never running)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from qlayer.core.ports import Event, NewJob
from qlayer.errors import JobNotFound
from qlayer.interpreter import Decision
from qlayer.local import state
from qlayer.local.jobstore import SqliteJobStore
from qlayer.local.paths import Home
from qlayer.local.retention import apply_default_retention, parse_age, prune
from qlayer.status import JobStatus
from qlayer.store.local import FolderStore

DAY = 86400.0


def _tree(jobs: SqliteJobStore, store: FolderStore, root: str, children: int, status: str) -> None:
    first = Decision("next", seq=0, stage="a", input_key="x")
    jobs.create(
        NewJob(
            root, program_id=f"prog-{root}", workflow="w", arguments={}, backend="aer", first=first
        )
    )
    store.put_json(f"jobs/{root}/result.json", {"r": 1})
    store.put_bytes(f"programs/prog-{root}/main.py", b"print()")
    for i in range(children):
        child = f"{root}_1_{i}"
        jobs.create(
            NewJob(
                child,
                program_id=f"prog-{root}",
                workflow="w",
                arguments={},
                backend="aer",
                first=first,
                parent_id=root,
                item_index=i,
            )
        )
        store.put_json(f"jobs/{child}/result.json", {"r": i})
        if status != "RUNNING":
            jobs.update(child, status=JobStatus.DONE, event=Event(0, None, "done"))
    if status != "RUNNING":
        jobs.update(root, status=JobStatus(status), event=Event(0, None, status.lower()))


@pytest.fixture
def home(tmp_path):
    home = Home.resolve(tmp_path / "home")
    conn = state.connect(home.db)
    jobs, store = SqliteJobStore(conn), FolderStore(home.artifacts)
    _tree(jobs, store, "OLD", 3, "DONE")
    _tree(jobs, store, "OLDERR", 0, "ERROR")
    _tree(jobs, store, "OLDRUN", 2, "RUNNING")
    conn.execute("UPDATE jobs SET finished_at = ?, updated_at = ?", (time.time() - 40 * DAY,) * 2)
    _tree(jobs, store, "NEW", 2, "DONE")
    yield home, conn
    conn.close()


def _ids(conn):
    return {row[0] for row in conn.execute("SELECT job_id FROM jobs")}


def test_prune_by_age_takes_whole_ended_trees_and_never_running_ones(home):
    home, conn = home
    dry = prune(conn, home.artifacts, older_than_s=30 * DAY, dry_run=True)
    assert dry.dry_run and sorted(dry.roots) == ["OLD", "OLDERR"] and dry.jobs == 5
    assert dry.artifact_bytes > 0 and dry.programs == 2
    assert "OLD_1_0" in _ids(conn) and (home.artifacts / "jobs/OLD").is_dir()  # nothing gone

    report = prune(conn, home.artifacts, older_than_s=30 * DAY)
    assert sorted(report.roots) == ["OLD", "OLDERR"] and report.jobs == 5
    assert report.artifact_bytes == dry.artifact_bytes
    assert _ids(conn) == {"OLDRUN", "OLDRUN_1_0", "OLDRUN_1_1", "NEW", "NEW_1_0", "NEW_1_1"}
    assert not (home.artifacts / "jobs/OLD_1_2").exists()
    assert not (home.artifacts / "programs/prog-OLD").exists()
    assert (home.artifacts / "programs/prog-OLDRUN").is_dir()
    for table in ("events", "steps"):
        left = {row[0] for row in conn.execute(f"SELECT DISTINCT job_id FROM {table}")}
        assert not left & {"OLD", "OLD_1_0", "OLDERR"}


def test_prune_by_status_and_by_job(home):
    home, conn = home
    assert prune(conn, home.artifacts, statuses=["error"]).roots == ["OLDERR"]
    report = prune(conn, home.artifacts, job_ids=["NEW"])
    assert report.roots == ["NEW"] and report.jobs == 3
    with pytest.raises(ValueError, match="child of a fan-out"):
        prune(conn, home.artifacts, job_ids=["OLD_1_0"])
    with pytest.raises(ValueError, match="running jobs are never pruned"):
        prune(conn, home.artifacts, job_ids=["OLDRUN"])
    with pytest.raises(JobNotFound):
        prune(conn, home.artifacts, job_ids=["nope"])
    with pytest.raises(ValueError, match="only DONE"):
        prune(conn, home.artifacts, statuses=["RUNNING"])


def test_the_default_retention_prunes_what_ended_30_days_ago(home, monkeypatch):
    home, conn = home
    monkeypatch.setenv("QLAYER_RETENTION_DAYS", "0")
    assert apply_default_retention(home) is None
    monkeypatch.delenv("QLAYER_RETENTION_DAYS")
    report = apply_default_retention(home)
    assert report is not None and sorted(report.roots) == ["OLD", "OLDERR"]
    assert "NEW" in _ids(conn)


def test_qlayer_prune_prints_what_it_reclaims(home):
    home, conn = home
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "qlayer.cli",
            "prune",
            "--older-than",
            "30d",
            "--dry-run",
            "--home",
            str(home.root),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "would reclaim 5 jobs in 2 trees" in run.stdout
    assert "OLD" in _ids(conn)


def test_ages_parse():
    assert parse_age("90s") == 90 and parse_age("2w") == 14 * DAY and parse_age("1.5") == 1.5 * DAY
    with pytest.raises(ValueError, match="invalid age"):
        parse_age("soon")


def test_a_coalesced_batch_goes_once_no_member_request_is_left(home):
    """A batch's ledger entry and ``jobs/_coalesced/`` folder belong to no job: they go
    when the last of their members' jobs is pruned, not before."""
    from qlayer.dispatch import batches
    from qlayer.local.ledger import SqliteLedger

    home, conn = home
    ledger, store = SqliteLedger(conn), FolderStore(home.artifacts)

    def batch(name: str, members: list[str]) -> str:
        key = batches.PREFIX + name
        for member in members:
            ledger.hold(member, "ibm_x", "req")
            ledger.finish(member, "DONE")
        ledger.hold(key, "ibm_x", "req")
        ledger.finish(key, "DONE")
        store.put_json(batches.manifest_key(key), {"members": [[m, 0, 1] for m in members]})
        return key

    gone = batch("a" * 24, ["OLD_1_0/1", "OLDERR/1"])
    kept = batch("b" * 24, ["OLD_1_1/1", "NEW_1_0/1"])  # NEW is not old enough
    folder = home.artifacts / batches.manifest_key(gone).rsplit("/", 1)[0]
    assert folder.is_dir()
    assert prune(conn, home.artifacts, older_than_s=30 * DAY, dry_run=True).batches == 1
    assert ledger.get(gone) is not None and folder.is_dir()

    report = prune(conn, home.artifacts, older_than_s=30 * DAY)
    assert report.batches == 1 and "1 coalesced batches" in report.summary()
    assert ledger.get(gone) is None and not folder.exists()
    assert ledger.get(kept) is not None
    assert prune(conn, home.artifacts, job_ids=["NEW"]).batches == 1
    assert ledger.get(kept) is None
    assert not (home.artifacts / batches.ARTIFACTS).exists() or not any(
        (home.artifacts / batches.ARTIFACTS).iterdir()
    )
