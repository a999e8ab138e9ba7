"""functions/fan_in ("Fan in"), with moto (mock_aws): S3, DynamoDB."""

from __future__ import annotations

from aws_fixtures import event, invoke, run_until
from test_handlers_start_children import fan_out

from qlayer import keys
from qlayer.aws import handlers
from qlayer.aws.events import LoadEvent, StepEvent, parse


def run_children(svc, ids):
    for child in ids:
        decision = run_until(svc, child, handlers.load_job(LoadEvent(job_id=child), svc))
        ev = parse(StepEvent, {"job_id": child, "decision": decision})
        (handlers.finalise if decision["kind"] == "done" else handlers.fail_job)(
            ev if decision["kind"] == "done" else {"job_id": child, "decision": decision}, svc
        )


def test_fan_in_hands_the_results_on_in_order(aws, monkeypatch):
    """moto: every child DONE -> 'then' gets their results in item order; the job ends DONE."""
    job_id, decision = fan_out(aws, 3)
    out = handlers.start_children(parse(StepEvent, {"job_id": job_id, "decision": decision}), aws)
    run_children(aws, out["children"])
    nxt = invoke("fan_in", {"job_id": job_id, "decision": decision}, aws, monkeypatch)
    assert nxt["kind"] == "next" and nxt["stage"] == "gather"
    done = run_until(aws, job_id, nxt)
    handlers.finalise(parse(StepEvent, {"job_id": job_id, "decision": done}), aws)
    assert aws.store.get_value(keys.job_result(job_id)) == {"squares": [0, 1, 4]}


def test_a_failed_child_fails_the_fan_in(aws, monkeypatch):
    """moto: a child in ERROR -> error decision naming the item and its reason."""
    job_id, decision = fan_out(aws, 3, fail_at="square")
    out = handlers.start_children(parse(StepEvent, {"job_id": job_id, "decision": decision}), aws)
    run_children(aws, out["children"])
    nxt = invoke("fan_in", {"job_id": job_id, "decision": decision}, aws, monkeypatch)
    assert nxt["kind"] == "error" and "fan-out item 1" in nxt["message"]
    assert "failed on purpose" in nxt["message"]


def test_sample_event():
    assert parse(StepEvent, event("fan_in")).decision.count == 3
