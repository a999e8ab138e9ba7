"""JobTable and TaskTable against moto (mock_aws): conditional writes, run counts, listing."""

from __future__ import annotations

import pytest

from qlayer.errors import JobNotFound
from qlayer.status import JobStatus


def put(jobs, job_id, **kw):
    return jobs.put_job(
        job_id, program_id="p", workflow="w", arguments={"x": 1.5}, backend="aer", **kw
    )


def test_put_is_create_only(aws):
    """moto: a second put of the same id changes nothing."""
    assert put(aws.jobs, "j1") is True
    assert put(aws.jobs, "j1") is False
    record = aws.jobs.get("j1")
    assert record.status == JobStatus.QUEUED and record.arguments == {"x": 1.5}
    with pytest.raises(JobNotFound):
        aws.jobs.get("nope")


def test_final_status_is_never_overwritten(aws):
    """moto: after CANCELLED, updates are refused (False) and nothing changes."""
    put(aws.jobs, "j1")
    assert aws.jobs.update("j1", status=JobStatus.RUNNING, stage="build", seq=0, event="started")
    assert aws.jobs.update("j1", status=JobStatus.CANCELLED, clear_stage=True, event="cancelled")
    assert not aws.jobs.update("j1", status=JobStatus.DONE)
    assert not aws.jobs.request_cancel("j1")
    record = aws.jobs.get("j1")
    assert record.status == JobStatus.CANCELLED and record.stage is None and record.finished_at
    assert [e["event"] for e in record.timeline] == ["submitted", "started", "cancelled"]


def test_run_counts_are_idempotent(aws):
    """moto: runs is a map of number sets: recording a seq twice counts once."""
    put(aws.jobs, "j1")
    for seq in (0, 2, 2, 4):
        aws.jobs.record_run("j1", "update", seq)
    aws.jobs.record_run("j1", "build", 1)
    record = aws.jobs.get("j1")
    assert record.runs == {"update": [0, 2, 4], "build": [1]}
    assert record.runs_before(4) == {"update": 2, "build": 1}


def test_list_newest_first_without_children(aws):
    """moto: the by_created index lists top-level jobs only, newest first; status filter."""
    clock = iter(range(100, 200))
    aws.jobs.clock = lambda: float(next(clock))
    for name in ("a", "b", "c"):
        put(aws.jobs, name)
    put(aws.jobs, "c_1_0", parent_id="c", item_index=0)
    aws.jobs.update("b", status=JobStatus.DONE)
    assert [r.job_id for r in aws.jobs.list_jobs()] == ["c", "b", "a"]
    assert [r.job_id for r in aws.jobs.list_jobs(status="done")] == ["b"]
    assert [r and r.job_id for r in aws.jobs.get_many(["a", "zz", "c_1_0"])] == ["a", None, "c_1_0"]


def test_task_claim_is_conditional(aws):
    """moto: one owner per key; a dead claim is taken over after its lease; first id wins."""
    clock = [1000.0]
    aws.tasks.clock = lambda: clock[0]
    first = aws.tasks.claim(
        job_id="j", seq=1, backend="b", request_key="r", task_token="t1", owner="A"
    )
    assert first.owner == "A" and first.status == "CLAIMED"
    second = aws.tasks.claim(
        job_id="j", seq=1, backend="b", request_key="r", task_token="t2", owner="B"
    )
    assert second.owner == "A" and second.task_token == "t2"  # newest token kept
    clock[0] += 301
    third = aws.tasks.claim(
        job_id="j", seq=1, backend="b", request_key="r", task_token=None, owner="C"
    )
    assert third.owner == "C" and third.claims == 2
    assert aws.tasks.record_submission("j/1", "p-1").provider_job_id == "p-1"
    assert aws.tasks.record_submission("j/1", "p-2").provider_job_id == "p-1"
    assert [t.idempotency_key for t in aws.tasks.open_tasks()] == ["j/1"]
    aws.tasks.finish("j/1", "DONE", decision={"kind": "next"})
    assert aws.tasks.open_tasks() == [] and aws.tasks.get("j/1").decision == {"kind": "next"}
