"""The AWS client offline: what it does before any job runs (moto in this process).

Jobs run through the client are tested in the cloud in a box (test_aws_steps.py,
test_cloud_in_a_box.py), where every step runs in its own function's process.
"""

from __future__ import annotations

import json

import pytest
from aws_fixtures import PROGRAMS, REGION

from qlayer import Client
from qlayer.aws.client import AwsClient, console_url
from qlayer.aws.config import AwsConfig, ConfigError
from qlayer.errors import ArgumentError


def test_bad_arguments_fail_before_anything_starts(aws):
    """moto: argument errors surface in run(), no execution is started."""
    with pytest.raises(ArgumentError):
        AwsClient(services=aws).run(PROGRAMS / "aws_tiny.py", {"nope": 1})
    assert aws.sfn.list_executions(stateMachineArn=aws.config.state_machine_arn)["executions"] == []


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
