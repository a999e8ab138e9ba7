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

PASS_DEFINITION = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}})


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
