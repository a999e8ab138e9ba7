"""functions/poller and the dispatcher's asynchronous path, with moto (mock_aws) and a fake QPU.

The fake provider implements qlayer.providers.base.AsyncProvider: submit returns an id,
status is whatever the test sets, result runs Aer.
"""

from __future__ import annotations

import json

from aws_fixtures import event, invoke
from qlayer.aws.jobs import task_key
from test_handlers_dispatcher import Sfn, execute_decision, sqs_event

from qlayer.aws import handlers
from qlayer.providers.base import AsyncProvider, ProviderJobStatus
from qlayer.status import JobStatus


class FakeQpu(AsyncProvider):
    name = "fake"

    def __init__(self):
        self.submitted = []
        self.cancelled = []
        self.state = "QUEUED"

    def backends(self):
        return []

    def target(self, backend):
        raise NotImplementedError

    def submit(self, backend, request, *, idempotency_key):
        self.submitted.append(idempotency_key)
        self.request = request
        return f"qpu-{len(self.submitted)}"

    def status(self, provider_job_id):
        return ProviderJobStatus(
            self.state, message="calibration" if self.state == "ERROR" else None
        )

    def result(self, provider_job_id):
        from qlayer.providers.registry import provider_for

        return provider_for("aer").run("aer", self.request)

    def cancel(self, provider_job_id):
        self.cancelled.append(provider_job_id)


def setup(aws):
    qpu = FakeQpu()
    aws.provider_for = lambda backend: qpu
    aws.sfn = Sfn()
    job_id, decision = execute_decision(aws)
    handlers.dispatcher(sqs_event(job_id, decision), aws)
    handlers.dispatcher(sqs_event(job_id, decision, "again"), aws)  # redelivered
    return qpu, job_id


def test_submits_once_then_polls_to_done(aws):
    """moto: one provider job for two deliveries; WAITING_FOR_QPU; heartbeat; then success."""
    qpu, job_id = setup(aws)
    assert qpu.submitted == [f"{job_id}/1"]
    record = aws.jobs.get(job_id)
    assert record.status == JobStatus.WAITING_FOR_QPU and record.provider_job_ids == ["qpu-1"]
    assert aws.sfn.calls == []
    assert handlers.poller(event("poller_schedule"), aws)["waiting"] == 1
    assert aws.sfn.calls[-1][0] == "heartbeat"
    qpu.state = "DONE"
    assert handlers.poller(event("poller_schedule"), aws)["done"] == 1
    kind, call = aws.sfn.calls[-1]
    assert kind == "success" and json.loads(call["output"])["stage"] == "tally"
    assert aws.tasks.get(task_key(job_id, 1)).status == "DONE"
    assert aws.tasks.open_tasks() == []


def test_provider_error_is_an_error_decision(aws):
    """moto: the provider job failed -> the state machine gets an error decision with its words."""
    qpu, _job_id = setup(aws)
    qpu.state = "ERROR"
    assert handlers.poller(event("poller_schedule"), aws)["failed"] == 1
    sent = json.loads(aws.sfn.calls[-1][1]["output"])
    assert sent["kind"] == "error" and "calibration" in sent["message"]


def test_cancel_reaches_the_provider(aws):
    """moto: a cancel message cancels the provider job and closes the task."""
    qpu, job_id = setup(aws)
    handlers.dispatcher(
        {
            "Records": [
                {
                    "messageId": "c",
                    "body": json.dumps({"action": "cancel", "job_id": job_id, "seq": 1}),
                }
            ]
        },
        aws,
    )
    assert qpu.cancelled == ["qpu-1"]
    assert aws.tasks.get(task_key(job_id, 1)).status == "CANCELLED"


def test_app_handler_with_nothing_open(aws, monkeypatch):
    """moto: the scheduled event through functions/poller/app.py."""
    assert invoke("poller", event("poller_schedule"), aws, monkeypatch) == {
        "done": 0,
        "failed": 0,
        "waiting": 0,
        "errors": 0,
    }
