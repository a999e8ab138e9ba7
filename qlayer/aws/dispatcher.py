"""The dispatcher: the SQS-fronted function that takes QPU requests from "Wait for QPU".

Each message is recorded in the tasks table (held WAITING with its task token) and is then
done with: SQS deletes it. The backends the batch touched are then drained: their waiting
requests go to the provider, oldest first, while the limits allow (:mod:`qlayer.aws.qpu`).
What is held back waits in the table — not in the queue — until the poller drains it as
slots come back, so backpressure costs no receives and nothing reaches the dead-letter
queue. A backend that runs on our own compute (Aer, a simulated ``fake_*`` device,
``braket_local``) is run here at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from qlayer.aws.events import DispatchMessage, EventError, SqsEvent, parse
from qlayer.aws.ledger import task_key
from qlayer.aws.qpu import cancel_task, close_sessions, deliver, drain, ledger_of
from qlayer.aws.services import Services
from qlayer.aws.steps import simulate_step
from qlayer.core.ports import Event
from qlayer.status import JobStatus

log = logging.getLogger("qlayer.aws")


def dispatcher(event: Mapping[str, Any], svc: Services) -> dict[str, Any]:
    """SQS batch -> each message recorded (or carried out); failed ones come back.

    Returns:
        ``{"batchItemFailures": [...]}``: only messages whose handling raised (a fault of
        ours or of AWS) — never a request held back by a limit.
    """
    batch = parse(SqsEvent, event, what="SQS event")
    failures = []
    touched: set[str] = set()
    for record in batch.Records:
        try:
            body = json.loads(record.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.error("dropping message %s: the body is not JSON", record.messageId)
            continue
        try:
            message = parse(DispatchMessage, body, what="dispatch message").check()
        except EventError as exc:
            log.error("dropping message %s: %s", record.messageId, exc)
            token = body.get("task_token") if isinstance(body, dict) else None
            if token:
                svc.send_token(
                    "send_task_failure",
                    taskToken=token,
                    error="InvalidDispatchMessage",
                    cause=str(exc)[:32000],
                )
            continue
        try:
            backend = dispatch_message(message, svc)
            if backend is not None:
                touched.add(backend)
        except Exception:
            log.exception(
                "message %s (%s) failed; it will be redelivered", record.messageId, message.job_id
            )
            failures.append({"itemIdentifier": record.messageId})
    for backend in sorted(touched):
        try:
            drain(svc, backend)
        except Exception:  # the requests are recorded: the poller drains them later
            log.exception("draining %s failed; the poller tries again", backend)
    return {"batchItemFailures": failures}


def dispatch_message(message: DispatchMessage, svc: Services) -> str | None:
    """Record one request (or carry out a cancel); the backend to drain, if any."""
    from qlayer.providers.base import AsyncProvider
    from qlayer.providers.registry import provider

    ledger = ledger_of(svc)
    if message.action == "cancel":
        cancel_task(svc, message.job_id, message.seq)
        return None
    if message.action == "close":
        if message.backend:
            close_sessions(svc, message.job_id, message.backend, message.group)
        return None
    assert message.seq is not None and message.backend and message.request_key
    key = task_key(message.job_id, message.seq)
    job = svc.jobs.find(message.job_id)
    if job is None or job.status.is_final:
        # A late message for a job that ended (cancelled, timed out): never submit provider
        # work for it — on a real QPU that would be paid for and thrown away.
        log.warning("not dispatching %s: job %s", key, "unknown" if job is None else job.status)
        if message.task_token:
            svc.send_token(
                "send_task_failure",
                taskToken=message.task_token,
                error="JobEnded",
                cause=f"job {message.job_id} has already ended",
            )
        existing = ledger.get(key)
        if existing is not None:
            ledger.finish(key, "CANCELLED", message="the job had ended")
        return None
    entry = ledger.hold(
        key,
        message.backend,
        message.request_key,
        token=message.task_token,
        heartbeat_s=message.heartbeat_s,
    )
    if entry.outcome is not None and message.task_token:
        # Ended before (a redelivery, or the state was re-entered): answer again.
        svc.send_token(
            "send_task_success", taskToken=message.task_token, output=json.dumps(entry.outcome)
        )
        return None
    if entry.state == "CANCELLED":
        return None
    found = provider(message.backend)
    if not isinstance(found, AsyncProvider):
        # Our own compute (Aer, a simulated device): run it here, now.
        decision = simulate_step(
            svc,
            message.job_id,
            message.seq,
            message.request_key,
            message.backend,
            status=JobStatus.WAITING_FOR_QPU,
        )
        deliver(svc, key, decision)
        return None
    if entry.state == "WAITING":
        svc.jobs.update(
            message.job_id,
            status=JobStatus.WAITING_FOR_QPU,
            stage="execute",
            seq=message.seq,
            event=Event(
                message.seq, "execute", "queued for provider", {"backend": message.backend}
            ),
        )
    return message.backend
