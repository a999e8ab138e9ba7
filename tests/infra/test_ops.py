"""Ops: the KMS key, the alarm topic, alarms, and the provider secret."""

from __future__ import annotations

from typing import Any

from aws_cdk.assertions import Match, Template

from .conftest import resources_of


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


def test_providers_secret(template: Template) -> None:
    template.has_resource_properties("AWS::SecretsManager::Secret", {"Name": "qlayer/providers"})


def _roles_with_action(template_json: dict[str, Any], action: str) -> set[str]:
    roles: set[str] = set()
    for policy in resources_of(template_json, "AWS::IAM::Policy").values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        actions = {
            a
            for s in statements
            for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        }
        if action in actions:
            roles.update(r["Ref"] for r in policy["Properties"]["Roles"])
    return roles


def _role_of(stack, name: str) -> str:
    return stack.resolve(stack.compute.functions[name].role.node.default_child.logical_id)


def test_only_dispatcher_and_poller_read_the_secret(template_json: dict[str, Any], stack) -> None:
    readers = _roles_with_action(template_json, "secretsmanager:GetSecretValue")
    assert readers == {_role_of(stack, "dispatcher"), _role_of(stack, "poller")}
