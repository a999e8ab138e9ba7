"""functions/start_children ("Start children"), with moto (mock_aws): S3, DynamoDB."""

from __future__ import annotations

from aws_fixtures import event, invoke, submit

from qlayer import keys
from qlayer.aws import handlers
from qlayer.aws.events import LoadEvent, StepEvent, parse
from qlayer.status import JobStatus


def fan_out(svc, n=3, **arguments):
    job_id = submit(svc, arguments={"fan": n, **arguments})
    first = handlers.load_job(LoadEvent(job_id=job_id), svc)
    decision = handlers.run_stage_step(parse(StepEvent, {"job_id": job_id, "decision": first}), svc)
    assert decision["kind"] == "fanout"
    return job_id, decision


def test_creates_one_child_job_per_item(aws, monkeypatch):
    """moto: child rows, inputs and the children list; the parent shows the fan-out."""
    job_id, decision = fan_out(aws, 3)
    out = invoke("start_children", {"job_id": job_id, "decision": decision}, aws, monkeypatch)
    ids = [f"{job_id}_1_{i}" for i in range(3)]
    assert out == {
        "children": ids,
        "children_key": keys.step_dir(job_id, 1, "fanout") + "children.json",
        "count": 3,
    }
    assert aws.store.get_json(out["children_key"]) == ids
    child = aws.jobs.get(ids[2])
    assert child.parent_id == job_id and child.item_index == 2 and child.status == JobStatus.QUEUED
    first = handlers.load_job(LoadEvent(job_id=ids[2]), aws)
    assert first["stage"] == "square"
    parent = aws.jobs.get(job_id)
    assert parent.children_total == 3 and parent.stage.startswith("square")
    assert [r.job_id for r in aws.jobs.list_jobs()] == [job_id]  # children are not listed


def test_many_children_stay_out_of_the_state(aws, monkeypatch):
    """moto: past the inline Map limit only the S3 key travels (Distributed Map reads it)."""
    job_id, decision = fan_out(aws, 41)
    out = invoke("start_children", {"job_id": job_id, "decision": decision}, aws, monkeypatch)
    assert out["children"] == [] and out["count"] == 41
    assert len(aws.store.get_json(out["children_key"])) == 41


def test_sample_event():
    assert parse(StepEvent, event("start_children")).decision.kind == "fanout"
