"""The JobStore contract (qlayer/core/ports.py), on SQLite and on DynamoDB under moto."""

from __future__ import annotations

import pytest

from qlayer.core.ports import KEEP, Event, NewJob
from qlayer.errors import JobNotFound
from qlayer.interpreter import Decision
from qlayer.status import JobStatus


def new(job_id: str, **kw) -> NewJob:
    first = Decision("next", seq=0, stage="build", input_key=f"jobs/{job_id}/in.json")
    fields = {
        "program_id": "p1",
        "workflow": "wf",
        "arguments": {"x": 1.5, "name": "a"},
        "backend": "aer",
        "first": first,
        **kw,
    }
    return NewJob(job_id, **fields)


def events(jobs, job_id):
    return [(e["seq"], e["stage"], e["event"]) for e in jobs.timeline(job_id)]


def test_create_is_create_only_and_records_submission(jobs):
    assert jobs.create(new("j1")) is True
    assert jobs.create(new("j1", backend="other")) is False
    job = jobs.get("j1")
    assert job.status == JobStatus.QUEUED and job.stage == "build" and job.seq == 0
    assert job.arguments == {"x": 1.5, "name": "a"} and job.backend == "aer"
    assert job.parent_id is None and job.finished_at is None and not job.cancel_requested
    assert events(jobs, "j1") == [(0, "build", "submitted")]
    assert jobs.timeline("j1")[0]["detail"] == {"backend": "aer"}


def test_a_jobs_environment_is_recorded(jobs):
    env = "0123456789abcdef0123456789abcdef"
    jobs.create(new("with-env", env=env))
    jobs.create(new("no-env"))
    assert jobs.get("with-env").env == env
    assert jobs.get("no-env").env is None


def test_missing_jobs(jobs):
    with pytest.raises(JobNotFound):
        jobs.get("nope")
    assert jobs.find("nope") is None
    with pytest.raises(JobNotFound):
        jobs.request_cancel("nope")


def test_a_job_recorded_in_error_is_final_from_the_start(jobs):
    jobs.create(new("bad", status=JobStatus.ERROR, message="no such program", error_type="E"))
    job = jobs.get("bad")
    assert job.status == JobStatus.ERROR and job.finished_at is not None
    assert (job.message, job.error_type) == ("no such program", "E")
    assert [e[2] for e in events(jobs, "bad")] == ["submitted", "error"]


def test_update_writes_fields_and_its_event_together(jobs):
    jobs.create(new("j1"))
    started = Event(0, "build", "started", {"attempt": 1})
    assert jobs.update("j1", status=JobStatus.RUNNING, seq=0, event=started)
    job = jobs.get("j1")
    assert job.status == JobStatus.RUNNING and job.stage == "build"  # KEEP by default
    assert jobs.timeline("j1")[-1]["detail"] == {"attempt": 1}
    assert jobs.update("j1", stage="execute", seq=1)
    assert jobs.update("j1", stage=KEEP, message="still here")
    assert (jobs.get("j1").stage, jobs.get("j1").seq) == ("execute", 1)
    assert jobs.update("j1", stage=None)
    assert jobs.get("j1").stage is None


def test_a_final_status_is_never_overwritten(jobs):
    jobs.create(new("j1"))
    assert jobs.update(
        "j1", status=JobStatus.CANCELLED, stage=None, event=Event(None, None, "cancelled")
    )
    before = events(jobs, "j1")
    assert jobs.get("j1").finished_at is not None
    assert not jobs.update("j1", status=JobStatus.DONE, event=Event(3, None, "done"))
    assert not jobs.update("j1", stage="again", message="late")
    job = jobs.get("j1")
    assert job.status == JobStatus.CANCELLED and job.stage is None and job.message is None
    assert events(jobs, "j1") == before  # the refused update's event was not written
    assert not jobs.update("missing", status=JobStatus.RUNNING)


def test_add_event_records_late_facts_of_ended_jobs(jobs):
    jobs.create(new("j1"))
    jobs.update("j1", status=JobStatus.ERROR, message="m", error_type="E")
    jobs.add_event("j1", Event(2, "execute", "provider job cancelled", {"provider_job_id": "p"}))
    assert events(jobs, "j1")[-1] == (2, "execute", "provider job cancelled")


def test_provider_job_ids_are_recorded_once_each(jobs):
    jobs.create(new("j1"))
    for pid in ("p1", "p2", "p1"):
        jobs.update("j1", provider_job_id=pid)
    assert sorted(jobs.get("j1").provider_job_ids) == ["p1", "p2"]


def test_fan_out_children_and_their_count(jobs):
    jobs.create(new("p"))
    jobs.set_fan_out("p", 3, 2)
    for index in (1, 0):
        jobs.create(new(f"p_3_{index}", parent_id="p", item_index=index))
    assert [c.job_id for c in jobs.children("p")] == ["p_3_0", "p_3_1"]
    assert jobs.children("p")[1].item_index == 1 and jobs.children("p")[1].parent_id == "p"
    assert jobs.child_done("p") == (1, 2)
    assert jobs.child_done("p") == (2, 2)
    parent = jobs.get("p")
    assert (parent.children_total, parent.children_done, parent.fanout_seq) == (2, 2, 3)
    # a second fan-out of the same job: only its children count
    jobs.set_fan_out("p", 7, 1)
    jobs.create(new("p_7_0", parent_id="p", item_index=0))
    assert [c.job_id for c in jobs.children("p")] == ["p_7_0"]
    assert jobs.get("p").children_done == 0
    assert jobs.children("nobody") == []
    with pytest.raises(JobNotFound):
        jobs.child_done("nobody")


def test_runs_are_recorded_once_per_step(jobs):
    jobs.create(new("j1"))
    for seq in (0, 2, 2, 4):
        jobs.record_run("j1", "update", seq)
    jobs.record_run("j1", "build", 1)
    assert jobs.runs_before("j1", 4) == {"update": 2, "build": 1}
    assert jobs.runs_before("j1", 5) == {"update": 3, "build": 1}
    assert jobs.runs_before("j1", 0) == {}


def test_request_cancel_flags_the_job_and_its_open_descendants(jobs):
    jobs.create(new("p"))
    jobs.set_fan_out("p", 1, 2)
    jobs.create(new("p_1_0", parent_id="p", item_index=0))
    jobs.create(new("p_1_1", parent_id="p", item_index=1))
    jobs.update("p_1_1", status=JobStatus.DONE)
    jobs.set_fan_out("p_1_0", 2, 1)
    jobs.create(new("p_1_0_2_0", parent_id="p_1_0", item_index=0))
    assert jobs.request_cancel("p") is True
    flagged = {j: jobs.get(j).cancel_requested for j in ("p", "p_1_0", "p_1_1", "p_1_0_2_0")}
    assert flagged == {"p": True, "p_1_0": True, "p_1_1": False, "p_1_0_2_0": True}
    jobs.update("p", status=JobStatus.CANCELLED)
    assert jobs.request_cancel("p") is False


def test_list_jobs_top_level_newest_first(jobs):
    import time

    for name in ("a", "b", "c"):
        jobs.create(new(name))
        time.sleep(0.002)  # distinct creation times
    jobs.create(new("c_1_0", parent_id="c", item_index=0))
    jobs.update("b", status=JobStatus.DONE)
    assert [j.job_id for j in jobs.list_jobs()] == ["c", "b", "a"]
    assert [j.job_id for j in jobs.list_jobs(status="done")] == ["b"]
    assert [j.job_id for j in jobs.list_jobs(limit=1)] == ["c"]


def test_atomic_groups_writes_without_changing_their_meaning(jobs):
    with jobs.atomic():
        jobs.create(new("j1"))
        jobs.update("j1", status=JobStatus.RUNNING)
        with jobs.atomic():  # nested: joins
            jobs.add_event("j1", Event(0, "build", "started"))
    assert jobs.get("j1").status == JobStatus.RUNNING
    assert [e[2] for e in events(jobs, "j1")] == ["submitted", "started"]
