"""AwsClient / AwsJob against moto (mock_aws): S3, DynamoDB, Step Functions, CloudFormation.

moto's state machine here is a Pass state: the test drives the steps through the handlers
as the real state machine would, then reads everything back through the client.
"""

from __future__ import annotations

import json

import pytest
from aws_fixtures import PROGRAMS, REGION, run_until

from qlayer import Client
from qlayer.aws import handlers
from qlayer.aws.client import AwsClient, console_url
from qlayer.aws.config import AwsConfig, ConfigError
from qlayer.aws.events import LoadEvent, StepEvent, parse
from qlayer.errors import ArgumentError, JobFailed, JobNotFound
from qlayer.status import JobStatus


def finish(svc, job_id):
    decision = run_until(svc, job_id, handlers.load_job(LoadEvent(job_id=job_id), svc))
    if decision["kind"] == "done":
        handlers.finalise(parse(StepEvent, {"job_id": job_id, "decision": decision}), svc)
    else:
        handlers.fail_job({"job_id": job_id, "decision": decision}, svc)


def test_run_and_read_back(aws, tmp_path):
    """moto: run starts an execution named by the job id; result, logs, files, timeline, usage."""
    client = AwsClient(services=aws)
    job = client.run(PROGRAMS / "aws_tiny.py", {"shots": 20})
    execution = aws.sfn.describe_execution(executionArn=job.info()["execution_arn"])
    assert execution["name"] == job.job_id
    assert json.loads(execution["input"]) == {"job_id": job.job_id}
    assert job.info()["console_url"] == (
        f"https://{REGION}.console.aws.amazon.com/states/home?region={REGION}"
        f"#/v2/executions/details/{execution['executionArn']}"
    )
    finish(aws, job.job_id)
    result = job.result(wait=True, timeout=5)
    assert result["shots"] == 20 and sum(result["counts"].values()) == 20
    assert job.status() == JobStatus.DONE
    assert "hello from build" in job.logs()
    assert job.files() == ["note.txt"]
    assert job.download("note.txt", tmp_path).read_text() == "a saved file"
    events = [e["event"] for e in job.timeline()]
    assert events[0] == "submitted" and events[-1] == "done"
    usage = job.usage()
    assert usage["shots"] == 20 and usage["executes"] == 1
    assert [j.job_id for j in client.jobs()] == [job.job_id]
    assert client.job(job.job_id).status() == JobStatus.DONE
    with pytest.raises(JobNotFound):
        client.job("20000101-000000-000000")


def test_failed_job_raises_with_the_reason(aws):
    """moto: JobFailed carries the stage's exception; error.json is readable."""
    client = AwsClient(services=aws)
    job = client.run(PROGRAMS / "aws_tiny.py", {"fail_at": "build"})
    finish(aws, job.job_id)
    with pytest.raises(JobFailed, match="build failed on purpose"):
        job.result(timeout=5)
    assert job.error()["error_type"] == "ValueError"


def test_fan_out_children_and_their_logs(aws):
    """moto: children are listed, counted and their logs included on request."""
    client = AwsClient(services=aws)
    job = client.run(PROGRAMS / "aws_tiny.py", {"fan": 2})
    decision = handlers.load_job(LoadEvent(job_id=job.job_id), aws)
    decision = run_until(aws, job.job_id, decision, stop="fanout")
    step = parse(StepEvent, {"job_id": job.job_id, "decision": decision})
    for child in handlers.start_children(step, aws)["children"]:
        finish(aws, child)
    assert [c.job_id for c in job.children()] == [f"{job.job_id}_1_0", f"{job.job_id}_1_1"]
    assert job.info()["children"] == {"total": 2, "done": 2}
    assert "child" in job.logs(children=True)


def test_bad_arguments_fail_before_anything_starts(aws):
    """moto: argument errors surface in run(), no execution is started."""
    with pytest.raises(ArgumentError):
        AwsClient(services=aws).run(PROGRAMS / "aws_tiny.py", {"nope": 1})
    assert aws.sfn.list_executions(stateMachineArn=aws.config.state_machine_arn)["executions"] == []


def test_cancel_stops_the_execution(aws):
    """moto: cancel -> StopExecution, CANCELLED; a second cancel is False."""
    client = AwsClient(services=aws)
    job = client.run(PROGRAMS / "aws_tiny.py")
    arn = job.info()["execution_arn"]
    aws.sfn.stop_execution(executionArn=arn)  # moto's Pass machine ends at once; stop is idempotent
    assert job.cancel() is True
    assert job.status() == JobStatus.CANCELLED
    assert job.cancel() is False
    with pytest.raises(Exception, match="cancelled"):
        job.result(timeout=1)


def test_config_from_stack_outputs(aws):
    """moto: CloudFormation outputs -> names; a missing stack says how to fix it."""
    cfn = aws.session.client("cloudformation")
    template = {
        "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "BucketName": {"Value": "b"},
            "JobsTableName": {"Value": "j"},
            "TasksTableName": {"Value": "t"},
            "StateMachineArn": {"Value": "arn:aws:states:us-east-1:123456789012:stateMachine:m"},
            "DispatchQueueUrl": {"Value": "https://q"},
        },
    }
    cfn.create_stack(StackName="Qlayer", TemplateBody=json.dumps(template))
    config = AwsConfig.from_stack("Qlayer", cfn, REGION)
    assert (config.bucket, config.jobs_table, config.tasks_table) == ("b", "j", "t")
    with pytest.raises(ConfigError, match="cdk deploy"):
        AwsConfig.from_stack("Missing", cfn)


def test_client_aws_makes_no_call_until_used():
    """No network in the constructor: Client.aws() returns at once, offline."""
    client = Client.aws(stack="Nope", region="eu-west-1")
    assert isinstance(client, AwsClient) and client._services is None
    assert console_url("arn:aws:states:eu-west-1:1:execution:m:j").startswith("https://eu-west-1.")
