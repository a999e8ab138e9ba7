"""The "Fail job" state, and executions that ended FAILED / TIMED_OUT / ABORTED.

Both end in :func:`qlayer.core.transitions.fail` (or ``cancel_tree`` for a stopped
execution whose job was being cancelled): ERROR with the reason, the provider job and the
children cancelled, a failed child failing its parent. Never a silent hang.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from qlayer.aws.events import ExecutionStatusChange, FailureEvent, parse
from qlayer.aws.services import Services
from qlayer.core import transitions
from qlayer.core.ports import JobRecord
from qlayer.status import JobStatus


def cause_text(failure: Mapping[str, Any]) -> str:
    """The words of a caught Step Functions error (a Lambda's Cause is JSON)."""
    cause = failure.get("Cause") or ""
    try:
        parsed = json.loads(cause)
    except (TypeError, ValueError):
        return str(cause)
    if isinstance(parsed, dict):
        return str(
            parsed.get("errorMessage")
            or parsed.get("StatusReason")
            or parsed.get("message")
            or cause
        )
    return str(cause)


def fail_job(event: Mapping[str, Any], svc: Services) -> dict[str, Any]:
    """The "Fail job" step (an error decision or a caught failure), or an execution-ended event."""
    ports = svc.ports()
    if event.get("source") == "aws.states":
        change = parse(ExecutionStatusChange, event, what="execution status change")
        job_id, status = change.detail.name, change.detail.status
        record = svc.jobs.find(job_id)
        if record is None:
            return {"job_id": job_id, "changed": False}
        if status == "ABORTED" and record.cancel_requested:
            changed = transitions.cancel_tree(ports, job_id)
        else:
            words = {"FAILED": "failed", "TIMED_OUT": "timed out", "ABORTED": "was stopped"}.get(
                status, status
            )
            text = f"the job's execution {words}"
            why = " ".join(part for part in (change.detail.error, change.detail.cause) if part)
            if why:
                text += f": {why}"
            changed = transitions.fail(
                ports, job_id, f"Execution{status.title().replace('_', '')}", text
            )
        return {"job_id": job_id, "changed": changed}

    parsed = parse(FailureEvent, event, what="Fail job event")
    decision = parsed.decision
    error_type = str(decision.get("error_type") or "Error")
    message: str | None = decision.get("message")
    failure = decision.get("failure")
    if not message and isinstance(failure, Mapping):
        message = f"{failure.get('Error', error_type)}: {cause_text(failure)}"
        child = _failed_child(svc, parsed.job_id)
        if child is not None:
            error_type = child.error_type or error_type
            message = f"fan-out item {child.item_index} ({child.job_id}) failed: {child.message}"
    message = str(
        message or f"the job failed ({error_type}) without a message; see the execution history"
    )
    changed = transitions.fail(
        ports,
        parsed.job_id,
        error_type,
        message,
        seq=decision.get("seq"),
        stage=decision.get("stage"),
    )
    return {"job_id": parsed.job_id, "status": "ERROR", "changed": changed}


def _failed_child(svc: Services, job_id: str) -> JobRecord | None:
    for child in svc.jobs.children(job_id):
        if child.status == JobStatus.ERROR:
            return child
    return None
