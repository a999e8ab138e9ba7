"""functions/loader ("Load job"), with moto (mock_aws): S3, DynamoDB."""

from __future__ import annotations

import pytest
from aws_fixtures import event, invoke, submit

from qlayer.aws.events import EventError, LoadEvent, parse
from qlayer.status import JobStatus


def test_loader_returns_the_first_decision(aws, monkeypatch):
    """moto: the app handler marks the job RUNNING, stores the execution ARN, returns 'next'."""
    job_id = submit(aws)
    arn = f"arn:aws:states:us-east-1:123456789012:execution:qlayer-test-jobs:{job_id}"
    decision = invoke("loader", {"job_id": job_id, "execution": arn}, aws, monkeypatch)
    assert decision["kind"] == "next" and decision["seq"] == 0 and decision["stage"] == "build"
    assert decision["compute"]["kind"] == "lambda"
    record = aws.jobs.get(job_id)
    assert record.status == JobStatus.RUNNING and record.execution_arn == arn


def test_loader_of_an_ended_job_routes_to_fail_job(aws, monkeypatch):
    """moto: an execution started for a job that ended (cancelled) does not run it again."""
    job_id = submit(aws)
    aws.jobs.update(job_id, status=JobStatus.CANCELLED)
    decision = invoke("loader", {"job_id": job_id}, aws, monkeypatch)
    assert decision["kind"] == "error" and decision["error_type"] == "JobEnded"


def test_loader_rejects_a_bad_event(aws, monkeypatch):
    """moto: a malformed event fails with a message naming the field."""
    with pytest.raises(EventError, match="job_id"):
        invoke("loader", {"job_id": "../etc"}, aws, monkeypatch)


def test_sample_event():
    assert parse(LoadEvent, event("loader")).execution.endswith(":20261123-203112-7f3a9c")
