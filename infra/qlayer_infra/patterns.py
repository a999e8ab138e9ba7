"""EventBridge patterns the stack's rules share."""

from __future__ import annotations

from typing import Any

from aws_cdk import aws_events as events
from aws_cdk import aws_stepfunctions as sfn


def execution_ended(
    state_machine: sfn.IStateMachine, statuses: list[str], **detail: Any
) -> events.EventPattern:
    """Executions of ``state_machine`` that ended in one of ``statuses`` (more ``detail``
    fields narrow it, e.g. ``name``)."""
    return events.EventPattern(
        source=["aws.states"],
        detail_type=["Step Functions Execution Status Change"],
        detail={
            "status": statuses,
            "stateMachineArn": [state_machine.state_machine_arn],
            **detail,
        },
    )
