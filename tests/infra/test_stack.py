"""QlayerStack: composition, outputs and constructor properties."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match, Template
from qlayer_infra.extract import state_machine_definition
from qlayer_infra.stack import QlayerStack

from .conftest import make_app


def test_outputs(template: Template) -> None:
    outputs = template.find_outputs("*")
    assert set(outputs) >= {
        "BucketName",
        "StateMachineArn",
        "JobsTableName",
        "TasksTableName",
        "DispatchQueueUrl",
        "StateMachineConsoleUrl",
        "ProvidersSecretArn",
        "ProvidersSecretName",
        "BraketResultsBucketName",
        "StateMachineLogGroupName",
        "Resources",
    }
    template.has_output(
        "StateMachineConsoleUrl",
        {
            "Value": {
                "Fn::Join": [
                    "",
                    Match.array_with([Match.string_like_regexp("console.aws.amazon.com/states")]),
                ]
            }
        },
    )


def test_outputs_name_the_retained_resources(template: Template, stack) -> None:
    """Their names are unique per stack now: the outputs are where a user finds them."""
    outputs = template.find_outputs("*")
    expected = {
        "ProvidersSecretArn": stack.ops.providers_secret.secret_arn,
        "BraketResultsBucketName": stack.storage.braket_results.bucket_name,
        "StateMachineLogGroupName": stack.workflow.log_group.log_group_name,
    }
    for name, value in expected.items():
        assert outputs[name]["Value"] == stack.resolve(value), name


def test_client_config_reads_every_output_it_names(template: Template) -> None:
    from qlayer.aws.config import STACK_OUTPUTS

    assert set(STACK_OUTPUTS.values()) <= set(template.find_outputs("*"))


def test_properties_reach_the_resources(tmp_path) -> None:
    app = make_app(tmp_path)
    stack = QlayerStack(
        app,
        "QlayerProd",
        env_name="prod",
        qpu_heartbeat_s=600,
        qpu_timeout_s=86400,
        gpu_instance_types=["g5.48xlarge"],
        simulator_memory_mb=8192,
    )
    template = Template.from_stack(stack)
    template.has_resource_properties(
        "AWS::StepFunctions::StateMachine", {"StateMachineName": "qlayer-prod-jobs"}
    )
    template.has_resource_properties(
        "AWS::Batch::ComputeEnvironment",
        {"ComputeResources": Match.object_like({"InstanceTypes": ["g5.48xlarge"]})},
    )
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "MemorySize": 8192,
            "Environment": {"Variables": Match.object_like({"QLAYER_FUNCTION": "simulator"})},
        },
    )
    wait = state_machine_definition(template.to_json())["States"]["Wait for QPU"]
    assert (wait["HeartbeatSeconds"], wait["TimeoutSeconds"]) == (600, 86400)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"env_name": "Prod_1"}, "env_name"),
        ({"qpu_heartbeat_s": 0}, "heartbeat"),
        ({"qpu_heartbeat_s": 7200, "qpu_timeout_s": 3600}, "heartbeat"),
    ],
)
def test_bad_properties_are_refused_with_a_reason(tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        QlayerStack(make_app(tmp_path), "Bad", **kwargs)


def test_synthesis_leaves_no_warnings(synthesized) -> None:
    from aws_cdk.assertions import Annotations as Found

    stack, _ = synthesized
    warnings = Found.from_stack(stack).find_warning("*", Match.any_value())
    assert not warnings, [w.entry.data for w in warnings]


def _policy_statements_of(raw: dict, function: str) -> list[dict]:
    from qlayer_infra.extract import functions_by_name

    resources = raw["Resources"]
    fn = resources[functions_by_name(raw)[function]]
    role = fn["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = []
    for resource in resources.values():
        if (
            resource["Type"] == "AWS::IAM::Policy"
            and {"Ref": role} in resource["Properties"]["Roles"]
        ):
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _can_put(statements: list[dict], prefix: str) -> bool:
    for statement in statements:
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        targets = (
            statement["Resource"]
            if isinstance(statement["Resource"], list)
            else [statement["Resource"]]
        )
        if "s3:PutObject" in actions and any(prefix in json.dumps(t) for t in targets):
            return True
    return False


def test_inbox_reports_are_allowed_and_only_where_needed(template: Template) -> None:
    """The trigger writes <spec>.error.json / .job.json and uploads programs; the
    finaliser and fail_job write <spec>.result.json. The stage runner may not touch inbox/."""
    raw = template.to_json()
    assert _can_put(_policy_statements_of(raw, "trigger"), "/inbox/*")
    assert _can_put(_policy_statements_of(raw, "trigger"), "/programs/*")
    assert _can_put(_policy_statements_of(raw, "finaliser"), "/inbox/*")
    assert _can_put(_policy_statements_of(raw, "fail_job"), "/inbox/*")
    assert not _can_put(_policy_statements_of(raw, "stage_runner"), "/inbox/*")
