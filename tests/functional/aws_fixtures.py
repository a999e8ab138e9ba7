"""Shared moto set-up for the AWS tests: a bucket, the two tables, a state machine, a queue.

Every test that uses these runs against moto (``mock_aws``): no AWS account, no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"
BUCKET = "qlayer-test-artifacts"
JOBS_TABLE = "qlayer-test-jobs"
TASKS_TABLE = "qlayer-test-tasks"
PROGRAMS = Path(__file__).parent / "programs"
EVENTS = Path(__file__).parents[1] / "events"

PASS_DEFINITION = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}})


def event(name: str) -> dict[str, Any]:
    """A sample event from tests/events/<name>.json."""
    return json.loads((EVENTS / f"{name}.json").read_text())


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)


def create_tables(dynamodb: Any) -> None:
    from aws_tables import create_tables as create

    create(dynamodb, JOBS_TABLE, TASKS_TABLE)


@pytest.fixture
def aws(aws_env: None, tmp_path: Path) -> Any:
    """moto: bucket, tables, a Pass state machine and a queue, and Services over them."""
    import boto3
    from moto import mock_aws

    from qlayer.aws.config import AwsConfig
    from qlayer.aws.services import Services

    with mock_aws():
        session = boto3.Session(region_name=REGION)
        session.client("s3").create_bucket(Bucket=BUCKET)
        create_tables(session.client("dynamodb"))
        iam = session.client("iam")
        role = iam.create_role(
            RoleName="sfn",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        machine = session.client("stepfunctions").create_state_machine(
            name="qlayer-test-jobs", definition=PASS_DEFINITION, roleArn=role
        )["stateMachineArn"]
        queue = session.client("sqs").create_queue(QueueName="qlayer-dispatch")["QueueUrl"]
        config = AwsConfig(
            bucket=BUCKET,
            jobs_table=JOBS_TABLE,
            tasks_table=TASKS_TABLE,
            state_machine_arn=machine,
            dispatch_queue_url=queue,
            region=REGION,
        )
        svc = Services.create(config, session, scratch=tmp_path / "scratch")
        svc.session = session  # type: ignore[attr-defined]
        yield svc


def submit(
    svc: Any,
    program: str = "aws_tiny.py",
    arguments: dict[str, Any] | None = None,
    backend: str | None = None,
) -> str:
    """Submit like AwsClient.run does, without starting an execution; returns the job id."""
    from qlayer.aws.client import prepare_job

    return prepare_job(svc, PROGRAMS / program, arguments or {}, backend=backend)


def lambda_env(svc: Any) -> dict[str, str]:
    c = svc.config
    return {
        "QLAYER_BUCKET": c.bucket,
        "QLAYER_JOBS_TABLE": c.jobs_table,
        "QLAYER_TASKS_TABLE": c.tasks_table,
        "QLAYER_STATE_MACHINE_ARN": c.state_machine_arn,
        "QLAYER_DISPATCH_QUEUE_URL": c.dispatch_queue_url,
        "AWS_REGION": REGION,
    }


class Context:
    """A stand-in for the Lambda context object (what Powertools' Logger reads)."""

    function_name = "qlayer-test"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:qlayer-test"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    log_group_name = "/aws/lambda/qlayer-test"
    log_stream_name = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def invoke(name: str, payload: dict[str, Any], svc: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Call functions/<name>/app.py's lambda_handler as Lambda would, with the stack's env vars."""
    import importlib

    from qlayer.aws import handlers

    for key, value in lambda_env(svc).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    handlers.services.cache_clear()
    module = importlib.import_module(f"functions.{name}.app")
    try:
        return module.lambda_handler(payload, Context())
    finally:
        handlers.services.cache_clear()


def run_until(
    svc: Any, job_id: str, decision: dict[str, Any], *, stop: str = "done"
) -> dict[str, Any]:
    """Drive a job through the step handlers as the state machine's Route would (Lambda tiers)."""
    from qlayer.aws import handlers
    from qlayer.aws.events import StepEvent, parse

    for _ in range(50):
        if decision["kind"] == stop or decision["kind"] in ("done", "error"):
            return decision
        ev = parse(StepEvent, {"job_id": job_id, "decision": decision})
        if decision["kind"] == "next":
            decision = handlers.run_stage_step(ev, svc)
        elif decision["kind"] == "execute":
            decision = handlers.simulate(ev, svc)
        else:
            return decision
    raise AssertionError("the job did not end in 50 steps")
