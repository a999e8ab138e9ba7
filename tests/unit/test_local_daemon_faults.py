"""The daemon's loop under faults confined to one job: that job ends, the loop goes on.

The daemon is built but not run (no workers are forked): each test calls the part of the
loop that meets the fault.
"""

from __future__ import annotations

import pytest

from qlayer.core.ports import NewJob
from qlayer.interpreter import Decision
from qlayer.local.daemon import Daemon
from qlayer.local.paths import Home
from qlayer.status import JobStatus


@pytest.fixture
def daemon(tmp_path):
    made = Daemon(Home.resolve(tmp_path / "home"), workers=1)
    yield made
    made.remote.shutdown()
    made.conn.close()


def _job(daemon: Daemon, job_id: str) -> None:
    first = Decision("next", seq=0, stage="start", input_key=f"jobs/{job_id}/in.json")
    daemon.jobs.create(NewJob(job_id, "prog", "wf", {}, "aer", first=first))


def _steps(daemon: Daemon, job_id: str) -> set[str]:
    rows = daemon.conn.execute("SELECT state FROM steps WHERE job_id = ?", (job_id,))
    return {row["state"] for row in rows}


def test_a_corrupted_execute_step_fails_its_job_and_not_the_loop(daemon):
    _job(daemon, "bad")
    _job(daemon, "good")
    for job_id, detail in (("bad", "{not json"), ("good", None)):
        decision = Decision("execute", seq=1, then="t", request_key="r", backend="aer")
        daemon.conn.execute(
            "INSERT INTO steps (job_id, seq, kind, stage, state, detail, created_at)"
            " VALUES (?, 1, 'execute', 'execute', 'pending', ?, 1)",
            (job_id, detail or __import__("json").dumps(decision.to_json())),
        )
    daemon.submit_executes()
    bad = daemon.jobs.get("bad")
    assert bad.status == JobStatus.ERROR
    assert "could not carry on" in (bad.message or "")
    assert _steps(daemon, "bad") == {"done"}  # nothing of it is picked up again
    [row] = daemon.conn.execute("SELECT job_id FROM device_jobs").fetchall()
    assert row["job_id"] == "good"


def test_a_stage_fails_on_its_third_own_death_and_says_which_attempts_were_whose(daemon):
    from qlayer.local import faults
    from qlayer.local.pool import Assignment

    _job(daemon, "j")
    daemon.conn.execute(
        "UPDATE steps SET state = 'running', attempts = 5, deaths = ? WHERE job_id = 'j'",
        ('[{"attempt": 2, "how": "signal 9"}, {"attempt": 4, "how": "exit code 1"}]',),
    )
    [step] = daemon.conn.execute("SELECT step_id FROM steps WHERE job_id = 'j'").fetchall()
    busy = Assignment("stage", "j", 0, "start", step_id=step["step_id"], memory_mb=2048)
    faults._stage_worker_died(daemon, busy, "signal 9")
    job = daemon.jobs.get("j")
    assert job.status == JobStatus.ERROR and job.error_type == "WorkerDied"
    assert job.message == (
        "the worker running stage 'start' died 3 times: attempts 2 (signal 9), "
        "4 (exit code 1), 5 (signal 9). Attempts 1, 3 were interrupted by a daemon restart, "
        "which does not count. If it ran out of memory, raise memory_mb (now 2048 MiB) in "
        "@wf.stage()."
    )


def _fill_the_database(daemon: Daemon) -> None:
    """Cap the database at its size now: the next page it needs is 'disk full' (SQLITE_FULL),
    a real full disk as SQLite reports it, whoever runs the test (root included)."""
    pages = daemon.conn.execute("PRAGMA page_count").fetchone()[0]
    daemon.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    daemon.conn.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_database_pauses_the_daemon_which_resumes_when_there_is_room(daemon):
    import sqlite3

    from qlayer.local.health import Status
    from qlayer.local.state import transaction

    _fill_the_database(daemon)
    with (
        pytest.raises(sqlite3.OperationalError, match="full") as raised,
        transaction(daemon.conn),
    ):
        for index in range(5000):
            daemon.conn.execute(
                "INSERT INTO events (job_id, at, event, detail) VALUES ('j', 0, 'x', ?)",
                ("y" * 1000 + str(index),),
            )
    assert not daemon.conn.in_transaction  # the next transaction can begin
    assert daemon.health.absorb(raised.value)
    assert daemon.health.paused
    status = Status.read(daemon.home)
    assert status is not None and "database or disk is full" in (status.problem or "")
    assert not daemon.health.probe(daemon.health.next_probe)  # still full
    daemon.conn.execute("PRAGMA max_page_count = 1073741823")
    assert daemon.health.probe(daemon.health.next_probe)
    assert not daemon.health.paused
    assert Status.read(daemon.home).problem is None  # type: ignore[union-attr]


def test_a_fault_of_the_machine_fails_no_job(daemon, tmp_path, monkeypatch):
    _job(daemon, "j")
    fault = tmp_path / "fault"
    fault.write_text("ENOSPC")
    monkeypatch.setenv("QLAYER_FAULT_FILE", str(fault))

    def writes_an_artifact() -> None:
        daemon.store.put_json("jobs/j/x.json", {})

    daemon._guarded("j", writes_an_artifact)
    assert daemon.jobs.get("j").status == JobStatus.QUEUED
    assert daemon.health.paused and "No space left on device" in (daemon.health.problem or "")


def test_a_device_job_that_ended_unheard_runs_again_after_a_restart(daemon):
    # The daemon died (or could not write) between recording that a device job ended
    # and applying its outcome to the step: recovery queues it again, and the worker
    # answers it from the recorded outcome instead of simulating it again.
    _job(daemon, "j")
    daemon.conn.execute(
        "INSERT INTO steps (job_id, seq, kind, stage, state, detail, created_at)"
        " VALUES ('j', 1, 'execute', 'execute', 'waiting', '{}', 1)"
    )
    daemon.conn.execute(
        "INSERT INTO device_jobs (device_job_id, idempotency_key, job_id, seq, backend,"
        " request_key, status, submitted_at) VALUES ('dev-1', 'j/1', 'j', 1, 'aer', 'r',"
        " 'DONE', 1)"
    )
    daemon.devices.recover()
    [row] = daemon.conn.execute("SELECT status FROM device_jobs").fetchall()
    assert row["status"] == "QUEUED"
