"""Ops: the KMS key, the alarm topic, alarms, and the provider secret."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Match, Template
from qlayer_infra.extract import DEFAULT_PSEUDO, resolve_intrinsics
from qlayer_infra.stack import QlayerStack

from .conftest import make_app, resources_of


def test_key_rotates(template: Template) -> None:
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_alarm_topic_is_encrypted(template: Template) -> None:
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})


def test_dead_letters_alarm(template: Template, stack) -> None:
    dlq = stack.resolve(stack.dispatch.dlq.queue_name)
    topic = stack.resolve(stack.ops.topic.topic_arn)
    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "MetricName": "ApproximateNumberOfMessagesVisible",
            "Namespace": "AWS/SQS",
            "Dimensions": [{"Name": "QueueName", "Value": dlq}],
            "Threshold": 0,
            "ComparisonOperator": "GreaterThanThreshold",
            "AlarmActions": [topic],
        },
    )


def test_failed_executions_alarm(template: Template, stack) -> None:
    machine = stack.resolve(stack.workflow.state_machine.state_machine_arn)
    topic = stack.resolve(stack.ops.topic.topic_arn)
    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "MetricName": "ExecutionsFailed",
            "Namespace": "AWS/States",
            "Dimensions": [{"Name": "StateMachineArn", "Value": machine}],
            "Threshold": 0,
            "ComparisonOperator": "GreaterThanThreshold",
            "AlarmActions": [topic],
        },
    )


def _providers_secret(template: Template) -> dict[str, Any]:
    """The provider settings secret (the gateway's token is the stack's other secret)."""
    (secret,) = [
        r
        for lid, r in template.find_resources("AWS::SecretsManager::Secret").items()
        if lid.startswith("OpsProviders")
    ]
    return secret  # type: ignore[no-any-return]


def test_providers_secret_holds_an_empty_json_object_under_the_stack_key(
    template: Template, stack
) -> None:
    """Was a random non-JSON string under the AWS-managed key (issue 7 item 9)."""
    secret = _providers_secret(template)
    props = secret["Properties"]
    assert json.loads(props["SecretString"]) == {}
    assert "GenerateSecretString" not in props
    assert props["KmsKeyId"] == stack.resolve(stack.ops.key.key_arn)


def test_providers_secret_name_is_unique_to_the_stack(template: Template) -> None:
    """A fixed name (qlayer/providers) collides with the secret a destroyed stack retained."""
    secret = _providers_secret(template)
    name = resolve_intrinsics(secret["Properties"]["Name"], lambda lid, attr: lid)
    stack_id_tail = DEFAULT_PSEUDO["AWS::StackId"].rsplit("-", 1)[1]
    assert name == f"qlayer/dev/providers-{stack_id_tail}"
    assert secret["DeletionPolicy"] == "Retain"


def test_a_given_secret_name_is_kept(tmp_path) -> None:
    stack = QlayerStack(make_app(tmp_path), "Named", providers_secret_name="team/qlayer")
    Template.from_stack(stack).has_resource_properties(
        "AWS::SecretsManager::Secret", {"Name": "team/qlayer"}
    )


def _roles_with_action(
    template_json: dict[str, Any], action: str, resource: Any = None
) -> set[str]:
    """Roles allowed ``action`` (on ``resource``, resolved, if given)."""
    roles: set[str] = set()
    for policy in resources_of(template_json, "AWS::IAM::Policy").values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        for s in statements:
            actions = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
            resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
            if action in actions and (resource is None or resource in resources):
                roles.update(r["Ref"] for r in policy["Properties"]["Roles"])
    return roles


def _role_of(stack, name: str) -> str:
    return stack.resolve(stack.compute.functions[name].role.node.default_child.logical_id)


def test_the_secret_is_read_by_the_dispatcher_poller_and_stage_code_only(
    template_json: dict[str, Any], stack
) -> None:
    """The Batch container runs stages too: an Execute to ibm_* needs the IBM account there
    as on the stage-runner Lambda (issue 7 item 3)."""
    secret = stack.resolve(stack.ops.providers_secret.secret_arn)
    readers = _roles_with_action(template_json, "secretsmanager:GetSecretValue", secret)
    batch_role = stack.resolve(stack.compute.batch_job_role.node.default_child.logical_id)
    assert readers == {
        _role_of(stack, "dispatcher"),
        _role_of(stack, "poller"),
        _role_of(stack, "stage_runner"),
        batch_role,
    }


def test_secret_readers_may_decrypt_it_through_secrets_manager_only(
    template_json: dict[str, Any], stack
) -> None:
    """The secret is encrypted with the stack's key: its key policy lets each reader decrypt,
    and only through Secrets Manager (the gateway decrypts its own token secret)."""
    (key,) = resources_of(template_json, "AWS::KMS::Key").values()
    decrypters = set()
    for statement in key["Properties"]["KeyPolicy"]["Statement"]:
        principal = statement.get("Principal", {}).get("AWS", {})
        if statement["Action"] == "kms:Decrypt" and "Fn::GetAtt" in principal:
            assert "secretsmanager." in json.dumps(statement["Condition"]["StringEquals"])
            decrypters.add(principal["Fn::GetAtt"][0])
    batch_role = stack.resolve(stack.compute.batch_job_role.node.default_child.logical_id)
    assert decrypters == {
        _role_of(stack, "dispatcher"),
        _role_of(stack, "poller"),
        _role_of(stack, "stage_runner"),
        _role_of(stack, "gateway"),
        batch_role,
    }


def test_job_ends_reach_the_job_events_topic(template: Template, stack) -> None:
    machine = stack.resolve(stack.workflow.state_machine.state_machine_arn)
    topic = stack.resolve(stack.ops.job_events.topic_arn)
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": ["aws.states"],
                "detail-type": ["Step Functions Execution Status Change"],
                "detail": {
                    "status": ["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"],
                    "stateMachineArn": [machine],
                    # Top-level jobs only: children's ids are <parent>_<seq>_<index>.
                    "name": [{"anything-but": {"wildcard": "*_*"}}],
                },
            },
            "Targets": [
                Match.object_like(
                    {
                        "Arn": topic,
                        "InputTransformer": Match.object_like(
                            {"InputPathsMap": Match.object_like({"detail-name": "$.detail.name"})}
                        ),
                    }
                )
            ],
        },
    )
    template.has_resource_properties(
        "AWS::SNS::Topic", {"DisplayName": "qlayer job ends", "KmsMasterKeyId": Match.any_value()}
    )
    template.has_output("JobEventsTopicArn", {"Value": topic})
