"""functions/finaliser ("Finalise"), with moto (mock_aws): S3, DynamoDB."""

from __future__ import annotations

from aws_fixtures import event, invoke, run_until, submit

from qlayer.aws import handlers
from qlayer.aws.events import LoadEvent, StepEvent, parse
from qlayer.status import JobStatus


def test_finalise_marks_done_once(aws, monkeypatch):
    """moto: DONE, finished_at set; a second call changes nothing."""
    job_id = submit(aws)
    done = run_until(aws, job_id, handlers.load_job(LoadEvent(job_id=job_id), aws))
    out = invoke("finaliser", {"job_id": job_id, "decision": done}, aws, monkeypatch)
    assert out == {"job_id": job_id, "status": "DONE", "changed": True}
    record = aws.jobs.get(job_id)
    assert record.status == JobStatus.DONE and record.finished_at and record.stage is None
    again = invoke("finaliser", {"job_id": job_id, "decision": done}, aws, monkeypatch)
    assert again["changed"] is False


def test_finalise_does_not_revive_a_cancelled_job(aws, monkeypatch):
    """moto: the conditional write keeps CANCELLED."""
    job_id = submit(aws)
    aws.jobs.update(job_id, status=JobStatus.CANCELLED)
    out = invoke(
        "finaliser", {"job_id": job_id, "decision": {"kind": "done", "seq": 2}}, aws, monkeypatch
    )
    assert out["status"] == "CANCELLED" and out["changed"] is False


def test_sample_event():
    assert parse(StepEvent, event("finaliser")).decision.kind == "done"
