"""Dispatch: SQS queue + DLQ, the dispatcher's event source, the poller schedule, Braket."""

from __future__ import annotations

from aws_cdk.assertions import Capture, Match, Template
from qlayer_infra.dispatch import MAX_RECEIVE_COUNT, VISIBILITY_FACTOR


def test_queue_visibility_is_six_times_the_dispatcher_timeout(template: Template, stack) -> None:
    visibility = Capture()
    template.has_resource_properties(
        "AWS::SQS::Queue",
        {
            "VisibilityTimeout": visibility,
            "RedrivePolicy": {
                "deadLetterTargetArn": Match.any_value(),
                "maxReceiveCount": MAX_RECEIVE_COUNT,
            },
            "KmsMasterKeyId": Match.any_value(),
        },
    )
    timeout = stack.compute.functions["dispatcher"].timeout.to_seconds()
    assert visibility.as_number() >= VISIBILITY_FACTOR * timeout == 6 * timeout


def test_queues_are_encrypted_and_tls_only(template: Template) -> None:
    for queue in template.find_resources("AWS::SQS::Queue").values():
        assert "KmsMasterKeyId" in queue["Properties"]
    for policy in template.find_resources("AWS::SQS::QueuePolicy").values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny" and "aws:SecureTransport" in str(s.get("Condition"))
            for s in statements
        )


def test_dispatcher_reports_partial_batch_failures(template: Template, stack) -> None:
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "FunctionName": stack.resolve(stack.compute.functions["dispatcher"].function_name),
            "EventSourceArn": stack.resolve(stack.dispatch.queue.queue_arn),
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
        },
    )


def test_poller_runs_every_minute(template: Template, stack) -> None:
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "ScheduleExpression": "rate(1 minute)",
            "Targets": [
                Match.object_like(
                    {"Arn": stack.resolve(stack.compute.functions["poller"].function_arn)}
                )
            ],
        },
    )


def test_braket_task_events_reach_the_poller(template: Template, stack) -> None:
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": ["aws.braket"],
                "detail-type": ["Braket Task State Change"],
                "detail": Match.any_value(),
            },
            "Targets": [
                Match.object_like(
                    {"Arn": stack.resolve(stack.compute.functions["poller"].function_arn)}
                )
            ],
        },
    )
