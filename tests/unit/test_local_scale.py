"""Scale of the local substrate: batched fan-outs, fair scheduling, limits, a busy db."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from qlayer import FanOut, Workflow
from qlayer.core.ports import JobRecord, NewJob, Orchestrator, Ports
from qlayer.errors import StateBusy
from qlayer.interpreter import Decision, route
from qlayer.local import state
from qlayer.local.jobstore import SqliteJobStore
from qlayer.local.scheduler import FanOutFeeder, Scheduler
from qlayer.local.state import transaction
from qlayer.status import JobStatus
from qlayer.store.local import FolderStore


class _Quiet(Orchestrator):
    loads_job_inputs = False

    def stop(self, job: JobRecord) -> None:
        pass

    def cancel_provider_jobs(self, job: JobRecord) -> None:
        pass


def _home(tmp_path: Path) -> tuple[sqlite3.Connection, SqliteJobStore, Ports]:
    conn = state.connect(tmp_path / "qlayer.db")
    jobs = SqliteJobStore(conn)
    return conn, jobs, Ports(jobs, FolderStore(tmp_path / "artifacts"), _Quiet())


def _first(stage: str = "a") -> Decision:
    return Decision("next", seq=0, stage=stage, input_key=f"in/{stage}")


def _fanout(ports: Ports, parent: str, n: int) -> Decision:
    key = f"jobs/{parent}/stages/0001-fanout/items.json"
    ports.store.put_json(key, {"items": list(range(n))})
    return Decision("fanout", seq=1, stage="child", then="collect", items_key=key, count=n)


def _start_parent(conn: sqlite3.Connection, jobs: SqliteJobStore, parent: str) -> None:
    jobs.create(NewJob(parent, program_id="p", workflow="w", arguments={}, backend="aer"))
    conn.execute("UPDATE steps SET state = 'done' WHERE job_id = ?", (parent,))


def test_a_fan_out_is_created_in_bounded_batches_and_resumes_after_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("QLAYER_FANOUT_BATCH", "40")
    conn, jobs, ports = _home(tmp_path)
    _start_parent(conn, jobs, "P")
    decision = _fanout(ports, "P", 100)
    feeder = FanOutFeeder(conn, ports, lambda job_id, fn: fn())

    def created() -> int:
        return int(conn.execute("SELECT COUNT(*) FROM jobs WHERE parent_id = 'P'").fetchone()[0])

    with transaction(conn):
        conn.execute(
            "INSERT INTO steps (job_id, seq, kind, stage, state, detail, created_at)"
            " VALUES ('P', 1, 'fanin', 'fan-in', 'waiting', ?, 0)",
            (json.dumps(decision.to_json()),),
        )
        feeder.start("P", decision)
    assert created() == 40  # the first batch, in the fan-out's own transaction
    assert jobs.get("P").children_total == 100
    feeder.feed()
    assert created() == 80
    # the daemon dies here: a new one counts the children made and carries on
    restarted = FanOutFeeder(conn, ports, lambda job_id, fn: fn())
    restarted.recover()
    assert restarted.pending()
    restarted.feed()
    assert created() == 100
    assert not restarted.pending()
    indexes = [c.item_index for c in jobs.children("P")]
    assert indexes == list(range(100))  # each child once, in item order


def test_a_cancelled_fan_out_stops_creating_children(tmp_path, monkeypatch):
    monkeypatch.setenv("QLAYER_FANOUT_BATCH", "10")
    conn, jobs, ports = _home(tmp_path)
    _start_parent(conn, jobs, "P")
    feeder = FanOutFeeder(conn, ports, lambda job_id, fn: fn())
    with transaction(conn):
        feeder.start("P", _fanout(ports, "P", 50))
    jobs.update("P", status=JobStatus.CANCELLED)
    feeder.feed()
    assert not feeder.pending()
    assert conn.execute("SELECT COUNT(*) FROM jobs WHERE parent_id = 'P'").fetchone()[0] == 10


def test_a_small_job_is_scheduled_before_a_big_trees_remaining_children(tmp_path):
    conn, jobs, ports = _home(tmp_path)
    _start_parent(conn, jobs, "BIG")
    with transaction(conn):
        FanOutFeeder(conn, ports, lambda job_id, fn: fn()).start("BIG", _fanout(ports, "BIG", 50))
    jobs.create(
        NewJob("SMALL", program_id="p", workflow="w", arguments={}, backend="aer", first=_first())
    )
    scheduler = Scheduler(conn)
    order = []
    while (step := scheduler.next_stage()) is not None:
        scheduler.served(step)
        conn.execute("UPDATE steps SET state = 'done' WHERE step_id = ?", (step["step_id"],))
        order.append(step["job_id"])
    assert len(order) == 51
    assert order.index("SMALL") <= 1  # not after the 50 children queued before it
    big = [job_id for job_id in order if job_id != "SMALL"]
    assert big == [f"BIG_1_{i}" for i in range(50)]  # within a tree: oldest first


def test_a_fan_out_over_the_maximum_size_is_refused(monkeypatch):
    wf = Workflow("big")
    wf.stage(name="a")(lambda data: data)
    wf.stage(name="b")(lambda data: data)
    monkeypatch.setenv("QLAYER_MAX_FANOUT", "10")
    refused = route(wf, "a", FanOut(list(range(11)), stage="b", then="b"))
    assert refused.kind == "error"
    assert refused.message is not None
    assert "11 items" in refused.message and "maximum fan-out size of 10" in refused.message
    assert route(wf, "a", FanOut(list(range(10)), stage="b", then="b")).kind == "fanout"


def test_a_locked_state_database_is_a_clear_error_not_sqlites(tmp_path):
    holder = state.connect(tmp_path / "qlayer.db")
    holder.execute("BEGIN IMMEDIATE")
    try:
        waiter = state.connect(tmp_path / "qlayer.db")  # opening needs no write lock
        waiter.execute("PRAGMA busy_timeout=50")
        jobs = SqliteJobStore(waiter)
        with pytest.raises(StateBusy, match=r"stayed locked by another process for 0\.05 s"):
            jobs.create(NewJob("J", program_id="p", workflow="w", arguments={}, backend="aer"))
        assert not waiter.in_transaction
    finally:
        holder.execute("ROLLBACK")


class _Keeping(_Quiet):
    keeps_first_inputs = True  # as the daemon's orchestrator


def test_a_childs_small_item_is_kept_in_its_step_not_written_as_a_file(tmp_path):
    from qlayer import Done, keys
    from qlayer.planner import Resources
    from qlayer.steps import JobInfo, run_stage

    conn = state.connect(tmp_path / "qlayer.db")
    jobs = SqliteJobStore(conn)
    store = FolderStore(tmp_path / "artifacts")
    ports = Ports(jobs, store, _Keeping())
    _start_parent(conn, jobs, "P")
    key = "jobs/P/stages/0001-fanout/items.json"
    items = [7, "x" * 5000]  # a small item, and one past the inline limit
    store.put_json(key, {"items": items})
    decision = Decision("fanout", seq=1, stage="child", then="collect", items_key=key, count=2)
    with transaction(conn):
        FanOutFeeder(conn, ports, lambda job_id, fn: fn()).start("P", decision)
    small, big = (
        json.loads(row["detail"])
        for row in conn.execute(
            "SELECT detail FROM steps WHERE job_id IN ('P_1_0', 'P_1_1') ORDER BY job_id"
        )
    )
    assert small["input"] == {"data": 7, "state": None}
    assert not store.exists(keys.stage_input("P_1_0", 0, "child"))  # no file for it
    assert "input" not in big and store.exists(keys.stage_input("P_1_1", 0, "child"))

    wf = Workflow("w")
    wf.stage(name="child")(lambda item: Done(item * 2))
    info = JobInfo(job_id="P_1_0", arguments={}, backend="aer")
    done = run_stage(store, wf, info, 0, "child", Resources(), given_input=small["input"])
    assert done.kind == "done" and done.result_key is not None
    assert store.get_value(done.result_key) == 14
