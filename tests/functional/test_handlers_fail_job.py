"""functions/fail_job ("Fail job" and execution-ended events), with moto (mock_aws)."""

from __future__ import annotations

from aws_fixtures import event, invoke, submit

from qlayer import keys
from qlayer.status import JobStatus


def test_error_decision_puts_the_job_in_error(aws, monkeypatch):
    """moto: ERROR with the reason in the row and in error.json."""
    job_id = submit(aws)
    payload = {**event("fail_job"), "job_id": job_id}
    out = invoke("fail_job", payload, aws, monkeypatch)
    assert out["changed"] is True
    record = aws.jobs.get(job_id)
    assert record.status == JobStatus.ERROR and record.error_type == "ValueError"
    assert record.message == "build failed on purpose"
    assert aws.store.get_json(keys.job_error(job_id))["message"] == "build failed on purpose"


def test_caught_failure_keeps_the_cause(aws, monkeypatch):
    """moto: 'Record failure' output (States error + Lambda cause JSON) -> readable message."""
    job_id = submit(aws)
    out = invoke(
        "fail_job", {**event("fail_job_record_failure"), "job_id": job_id}, aws, monkeypatch
    )
    assert out["changed"] is True
    record = aws.jobs.get(job_id)
    assert record.error_type == "States.TaskFailed"
    assert "Task timed out after 900.00 seconds" in (record.message or "")


def test_final_status_is_not_overwritten(aws, monkeypatch):
    """moto: DONE stays DONE."""
    job_id = submit(aws)
    aws.jobs.update(job_id, status=JobStatus.DONE)
    out = invoke("fail_job", {**event("fail_job"), "job_id": job_id}, aws, monkeypatch)
    assert out["changed"] is False and aws.jobs.get(job_id).status == JobStatus.DONE


def test_aborted_execution_of_a_cancelled_job(aws, monkeypatch):
    """moto: EventBridge ABORTED + cancel flag -> CANCELLED; a cancel message for the dispatcher."""
    job_id = submit(aws)
    aws.jobs.update(job_id, status=JobStatus.RUNNING, stage="execute", seq=1)
    aws.jobs.request_cancel(job_id)
    payload = event("execution_aborted")
    payload["detail"]["name"] = job_id
    out = invoke("fail_job", payload, aws, monkeypatch)
    assert out["changed"] is True and aws.jobs.get(job_id).status == JobStatus.CANCELLED
    sqs = aws.sqs
    messages = sqs.receive_message(QueueUrl=aws.config.dispatch_queue_url).get("Messages", [])
    assert messages and '"cancel"' in messages[0]["Body"]


def test_aborted_execution_without_cancel_is_an_error(aws, monkeypatch):
    """moto: someone stopped the execution in the console -> ERROR, not a silent hang."""
    job_id = submit(aws)
    payload = event("execution_aborted")
    payload["detail"]["name"] = job_id
    invoke("fail_job", payload, aws, monkeypatch)
    record = aws.jobs.get(job_id)
    assert record.status == JobStatus.ERROR and record.error_type == "ExecutionAborted"


def test_a_job_never_prepared_still_ends_visibly_in_error(aws, monkeypatch):
    """moto: an execution started by hand for a job with no row and no input.json fails
    in "Load job"; "Fail job" records the job in ERROR instead of dropping the failure."""
    job_id = "20261123-000000-abcdef"
    payload = {**event("fail_job_record_failure"), "job_id": job_id}
    out = invoke("fail_job", payload, aws, monkeypatch)
    assert out["changed"] is True
    record = aws.jobs.get(job_id)
    assert record.status == JobStatus.ERROR
    assert record.error_type == "States.TaskFailed"
    assert aws.store.get_json(keys.job_error(job_id))["error_type"] == "States.TaskFailed"
