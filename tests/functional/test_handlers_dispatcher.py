"""functions/dispatcher (SQS -> provider, exactly once), with moto (mock_aws): S3, DynamoDB, SFN.

Task tokens are fake: moto answers SendTaskSuccess for an unknown token with an error we
treat as "the state moved on"; the tests check the qpu_tasks table and the artifacts.
"""

from __future__ import annotations

import json

from aws_fixtures import event, invoke, submit
from qlayer.aws.jobs import task_key

from qlayer import keys
from qlayer.aws import handlers
from qlayer.aws.events import LoadEvent, StepEvent, parse
from qlayer.status import JobStatus


def execute_decision(svc, backend="aer"):
    job_id = submit(svc, backend=backend)
    first = handlers.load_job(LoadEvent(job_id=job_id), svc)
    decision = handlers.run_stage_step(parse(StepEvent, {"job_id": job_id, "decision": first}), svc)
    assert decision["kind"] == "execute"
    return job_id, decision


def sqs_event(job_id, decision, message_id="m-1", token="token-1"):
    body = {
        "task_token": token,
        "job_id": job_id,
        "seq": decision["seq"],
        "request_key": decision["request_key"],
        "backend": decision["backend"],
    }
    return {"Records": [{"messageId": message_id, "body": json.dumps(body)}]}


class Sfn:
    """Records task-token calls (botocore Stubber would need one expectation per call)."""

    def __init__(self):
        self.calls = []

    def send_task_success(self, **kwargs):
        self.calls.append(("success", kwargs))

    def send_task_failure(self, **kwargs):
        self.calls.append(("failure", kwargs))

    def send_task_heartbeat(self, **kwargs):
        self.calls.append(("heartbeat", kwargs))


def test_runs_a_simulated_device_once_and_wakes_the_state_machine(aws, monkeypatch):
    """moto: the task is claimed, run, recorded DONE; the decision goes back with the token."""
    aws.sfn = Sfn()
    job_id, decision = execute_decision(aws)
    out = handlers.dispatcher(sqs_event(job_id, decision), aws)
    assert out == {"batchItemFailures": []}
    [(kind, call)] = aws.sfn.calls
    assert kind == "success" and call["taskToken"] == "token-1"
    sent = json.loads(call["output"])
    assert sent["kind"] == "next" and sent["stage"] == "tally"
    task = aws.tasks.get(task_key(job_id, 1))
    assert task.status == "DONE" and task.decision == sent
    # redelivery: not run again, the same decision is sent again
    result_before = aws.store.get_bytes(keys.execute_result(job_id, 1))
    handlers.dispatcher(sqs_event(job_id, decision, "m-2"), aws)
    assert aws.sfn.calls[-1][1]["output"] == call["output"]
    assert aws.store.get_bytes(keys.execute_result(job_id, 1)) == result_before


def test_app_handler_with_moto_stepfunctions(aws, monkeypatch):
    """moto: through functions/dispatcher/app.py; moto rejects the fake token, which is ignored."""
    job_id, decision = execute_decision(aws)
    out = invoke("dispatcher", sqs_event(job_id, decision), aws, monkeypatch)
    assert out == {"batchItemFailures": []}
    assert aws.tasks.get(task_key(job_id, 1)).status == "DONE"


def test_live_claim_elsewhere_is_a_partial_batch_failure(aws):
    """moto: another dispatcher holds the claim -> this message is retried, the others not."""
    aws.sfn = Sfn()
    job_id, decision = execute_decision(aws)
    aws.tasks.claim(
        job_id=job_id,
        seq=1,
        backend="aer",
        request_key=decision["request_key"],
        task_token="t0",
        owner="someone-else",
    )
    good_job, good = execute_decision(aws)
    event_ = sqs_event(job_id, decision, "busy")
    event_["Records"] += sqs_event(good_job, good, "fine")["Records"]
    out = handlers.dispatcher(event_, aws)
    assert out == {"batchItemFailures": [{"itemIdentifier": "busy"}]}
    assert aws.tasks.get(task_key(good_job, 1)).status == "DONE"


def test_malformed_message_is_dropped_and_its_task_failed(aws):
    """moto: a message without request_key fails its task token at once (no hang, no retry loop)."""
    aws.sfn = Sfn()
    body = {"task_token": "t", "job_id": "20260101-000000-aaaaaa", "seq": 1}
    out = handlers.dispatcher({"Records": [{"messageId": "x", "body": json.dumps(body)}]}, aws)
    assert out == {"batchItemFailures": []}
    assert (
        aws.sfn.calls[0][0] == "failure"
        and aws.sfn.calls[0][1]["error"] == "InvalidDispatchMessage"
    )


def test_device_error_goes_back_as_an_error_decision(aws):
    """moto: a non-ISA circuit on a fake device -> error decision (routed to Fail job)."""
    aws.sfn = Sfn()
    job_id, decision = execute_decision(aws, backend="fake_manila_v2")
    handlers.dispatcher(sqs_event(job_id, decision), aws)
    sent = json.loads(aws.sfn.calls[0][1]["output"])
    assert sent["kind"] == "error" and "ISA" in sent["message"]
    assert aws.tasks.get(task_key(job_id, 1)).status == "ERROR"
    assert aws.jobs.get(job_id).status == JobStatus.WAITING_FOR_QPU  # Fail job ends it


def test_sample_event_parses():
    from qlayer.aws.events import DispatchMessage, SqsEvent

    [record] = parse(SqsEvent, event("dispatcher_sqs")).Records
    assert parse(DispatchMessage, json.loads(record.body)).check().backend == "fake_manila_v2"
