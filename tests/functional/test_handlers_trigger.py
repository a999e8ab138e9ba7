"""functions/trigger (inbox upload -> job), with moto (mock_aws): S3, DynamoDB, Step Functions."""

from __future__ import annotations

import json

from aws_fixtures import PROGRAMS, event, invoke
from qlayer.aws.handlers import SPEC_ERROR_SUFFIX

from qlayer import keys
from qlayer.program import bundle, upload
from qlayer.status import JobStatus

KEY = "inbox/my job(1).json"  # arrives URL-encoded in the event: inbox/my+job%281%29.json


def s3_event(key_encoded: str = "inbox/my+job%281%29.json") -> dict:
    payload = event("trigger_s3")
    payload["Records"][0]["s3"]["object"]["key"] = key_encoded
    return payload


def test_spec_with_uploaded_program_starts_an_execution(aws, monkeypatch):
    """moto: a valid spec -> job row QUEUED, input.json, an execution named by the job id."""
    program_id = upload(aws.store, bundle(PROGRAMS / "aws_tiny.py"))
    spec = {"program": f"programs/{program_id}/", "arguments": {"shots": 8}, "backend": "aer"}
    aws.store.put_json(KEY, spec)
    [out] = invoke("trigger", s3_event(), aws, monkeypatch)
    job_id = out["job_id"]
    assert out["key"] == KEY and "error" not in out
    record = aws.jobs.get(job_id)
    assert record.status == JobStatus.QUEUED and record.arguments == {"shots": 8}
    assert record.execution_arn and record.execution_arn.endswith(":" + job_id)
    described = aws.sfn.describe_execution(executionArn=record.execution_arn)
    assert json.loads(described["input"]) == {"job_id": job_id}
    raw = aws.store.get_json(keys.job_input(job_id))
    assert raw["prepared"] is False and raw["program_id"] == program_id
    # a redelivered event starts nothing new
    [again] = invoke("trigger", s3_event(), aws, monkeypatch)
    assert again["job_id"] == job_id and again["duplicate"] is True


def test_spec_pointing_at_a_py_file_uploads_it(aws, monkeypatch):
    """moto: 'program' may be the key of a .py in the bucket: it is bundled and uploaded."""
    aws.store.put_bytes("programs/uploads/aws_tiny.py", (PROGRAMS / "aws_tiny.py").read_bytes())
    aws.store.put_json(KEY, {"program": "programs/uploads/aws_tiny.py"})
    [out] = invoke("trigger", s3_event(), aws, monkeypatch)
    record = aws.jobs.get(out["job_id"])
    assert aws.store.exists(keys.program_prefix(record.program_id) + "manifest.json")


def test_malformed_spec_gets_an_error_file_and_an_error_job(aws, monkeypatch):
    """moto: unknown field + bad program -> <key>.error.json naming both; job in ERROR."""
    aws.store.put_json(KEY, {"program": "../x.sh", "argumentz": {}})
    [out] = invoke("trigger", s3_event(), aws, monkeypatch)
    report = aws.store.get_json(KEY + SPEC_ERROR_SUFFIX)
    assert "program" in report["message"] and "argumentz" in report["message"]
    record = aws.jobs.get(out["job_id"])
    assert record.status == JobStatus.ERROR and record.error_type == "EventError"
    assert aws.sfn.list_executions(stateMachineArn=aws.config.state_machine_arn)["executions"] == []


def test_not_json_and_syntax_errors(aws, monkeypatch):
    """moto: a spec that is not JSON, and a .py with a syntax error, are both reported."""
    aws.store.put_bytes(KEY, b"{nope")
    [out] = invoke("trigger", s3_event(), aws, monkeypatch)
    assert "not JSON" in out["error"]
    aws.store.put_bytes("inbox/bad.py", b"def broken(:\n")
    aws.store.put_json("inbox/b.json", {"program": "inbox/bad.py"})
    [out] = invoke("trigger", s3_event("inbox/b.json"), aws, monkeypatch)
    assert "syntax error" in out["error"]


def test_own_error_reports_are_ignored(aws, monkeypatch):
    """moto: the <key>.error.json we write also matches inbox/*.json: it starts nothing."""
    for own in ("inbox/x.json.error.json", "inbox/x.json.job.json", "inbox/x.json.result.json"):
        assert invoke("trigger", s3_event(own), aws, monkeypatch) == []
