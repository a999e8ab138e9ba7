"""The AWS dispatcher and poller under faults, with moto (mock_aws) and a FAKE QPU service.

The provider is ``tests/e2e/programs/fake_qpu.py``: a FAKE QPU service, never a real one,
that keeps its own SQLite ledger of every ``submit``/``find_job``/``status``/``result``/
``cancel`` call and refuses (non-retryable, like IBM error 3458) a submission beyond its
own pending-job limit. The subclasses here add only a hook when a job is accepted (to
kill the dispatcher there, or to deliver a duplicate message meanwhile) and a throttled
``status``. Step Functions is a fake too (:class:`StrictSfn`): like the real service, a
task token takes one SendTaskSuccess/SendTaskFailure; a second use is ``TaskTimedOut``.

SQS is moto's: messages are sent, received (with real receipt handles), deleted when the
dispatcher reports success and left (with the visibility it set) when it reports a
partial batch failure, as Lambda's event source mapping does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from qlayer.aws.jobs import task_key
from test_handlers_dispatcher import execute_decision

from qlayer import keys
from qlayer.aws import handlers
from qlayer.dispatch import Limits, RateLimiter
from qlayer.providers.base import ProviderError
from qlayer.status import JobStatus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "programs"))

from fake_qpu import FAIL_MESSAGE, FATAL_MESSAGE, FakeQpu


# ------------------------------------------------------------------------------ fakes
class Crash(BaseException):
    """The dispatcher's Lambda is killed here (not an Exception: no handler catches it)."""


class HookedFakeQpu(FakeQpu):
    """The FAKE QPU service of fake_qpu.py, plus test hooks.

    ``on_accept`` runs after the fake accepted a job (it is in the fake's ledger) and
    before ``submit`` returns its id: the window where a dispatcher can die, or where a
    duplicate delivery can arrive. ``status_429`` makes that many ``status`` calls fail
    with a retryable 429 first (recorded in the fake's call log like every call).
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.on_accept: list[Any] = []
        self.status_429 = 0

    def submit(self, backend, request, *, idempotency_key):
        job_id = super().submit(backend, request, idempotency_key=idempotency_key)
        while self.on_accept:
            self.on_accept.pop(0)(job_id)
        return job_id

    def status(self, provider_job_id):
        if self.status_429 > 0:
            self.status_429 -= 1
            with self._conn() as conn:
                self._record(conn, "status", job_id=provider_job_id, outcome="429")
            raise ProviderError("429 Too Many Requests: slow down", retryable=True)
        return super().status(provider_job_id)


class StrictSfn:
    """A fake of Step Functions' task-token API: one answer per token, like the service."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answered: set[str] = set()
        self.crash_next_success = False

    def _use(self, kind: str, kwargs: dict[str, Any]) -> None:
        from botocore.exceptions import ClientError

        token = kwargs["taskToken"]
        if token in self.answered:
            raise ClientError(
                {"Error": {"Code": "TaskTimedOut", "Message": "Task Timed Out"}}, kind
            )
        self.calls.append((kind, kwargs))
        if kind != "heartbeat":
            self.answered.add(token)

    def send_task_success(self, **kwargs):
        if self.crash_next_success:
            self.crash_next_success = False
            raise Crash("the poller died before SendTaskSuccess")
        self._use("success", kwargs)

    def send_task_failure(self, **kwargs):
        self._use("failure", kwargs)

    def send_task_heartbeat(self, **kwargs):
        self._use("heartbeat", kwargs)

    def successes(self) -> list[dict[str, Any]]:
        return [json.loads(call["output"]) for kind, call in self.calls if kind == "success"]


class RecordingSqs:
    """moto's SQS client, with every change_message_visibility call recorded."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.visibility: list[int] = []

    def change_message_visibility(self, **kwargs):
        self.visibility.append(kwargs["VisibilityTimeout"])
        return self.client.change_message_visibility(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


# ------------------------------------------------------------------------------ set-up
@pytest.fixture
def fake(tmp_path, monkeypatch) -> HookedFakeQpu:
    monkeypatch.setenv("QLAYER_FAKE_QPU_MAX_IN_FLIGHT", "8")
    return HookedFakeQpu(tmp_path / "fake_qpu")


@pytest.fixture
def svc(aws, fake, monkeypatch):
    monkeypatch.setenv(
        "QLAYER_LIMITS",
        json.dumps({"fakeqpu": {"max_in_flight": 8, "submits_per_s": 1000, "burst": 1000}}),
    )
    aws.provider_for = lambda backend: fake
    aws.sfn = StrictSfn()
    aws.sqs = RecordingSqs(aws.sqs)
    aws.limiter = None  # built from QLAYER_LIMITS on first use
    aws.sleeps = []
    aws.sleep = aws.sleeps.append  # with_retries' backoff, without waiting
    return aws


def body(job_id: str, request_key: str, backend: str, seq: int = 1) -> dict[str, Any]:
    return {
        "task_token": f"token-{job_id}-{seq}",
        "job_id": job_id,
        "seq": seq,
        "request_key": request_key,
        "backend": backend,
    }


def a_job(svc, backend: str = "fakeqpu_ok") -> tuple[str, dict[str, Any]]:
    """A job at its execute step (run through the stage runner) and its dispatch message."""
    job_id, decision = execute_decision(svc)
    return job_id, body(job_id, decision["request_key"], backend, decision["seq"])


def more_jobs(svc, n: int, template: dict[str, Any]) -> list[dict[str, Any]]:
    """``n`` more jobs at their execute step, sharing ``template``'s request artifact."""
    out = []
    for i in range(n):
        job_id = f"burst-{i:03d}"
        svc.jobs.put_job(
            job_id,
            program_id="p",
            workflow="aws_tiny",
            arguments={},
            backend=template["backend"],
            stage="execute",
            status=JobStatus.RUNNING,
        )
        out.append(body(job_id, template["request_key"], template["backend"]))
    return out


def send(svc, bodies: list[dict[str, Any]]) -> None:
    for b in bodies:
        svc.sqs.send_message(QueueUrl=svc.config.dispatch_queue_url, MessageBody=json.dumps(b))


def lambda_batch(svc, max_messages: int = 10) -> dict[str, Any] | None:
    """Receive one batch like Lambda's event source mapping; run the dispatcher on it;
    delete what succeeded. Returns the dispatcher's answer (None: nothing visible)."""
    got = svc.sqs.receive_message(
        QueueUrl=svc.config.dispatch_queue_url, MaxNumberOfMessages=max_messages
    ).get("Messages", [])
    if not got:
        return None
    records = [
        {"messageId": m["MessageId"], "body": m["Body"], "receiptHandle": m["ReceiptHandle"]}
        for m in got
    ]
    out = handlers.dispatcher({"Records": records}, svc)
    failed = {f["itemIdentifier"] for f in out["batchItemFailures"]}
    for m in got:
        if m["MessageId"] not in failed:
            svc.sqs.delete_message(
                QueueUrl=svc.config.dispatch_queue_url, ReceiptHandle=m["ReceiptHandle"]
            )
    return out


def visible(svc) -> int:
    attrs = svc.sqs.get_queue_attributes(
        QueueUrl=svc.config.dispatch_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def jobs_per_key(fake: FakeQpu) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in fake.jobs():
        counts[job["key"]] = counts.get(job["key"], 0) + 1
    return counts


def submits(fake: FakeQpu, outcome: str | None = "ok") -> list[dict[str, Any]]:
    return [c for c in fake.calls("submit") if outcome is None or c["outcome"] == outcome]


def log_text(svc, job_id: str, seq: int = 1) -> str:
    return svc.store.get_bytes(keys.log_key(job_id, seq, "execute")).decode()


def poll_until_done(svc, rounds: int = 10) -> None:
    for _ in range(rounds):
        if not svc.tasks.open_tasks():
            return
        handlers.poller({}, svc)
    raise AssertionError("tasks still open")


def end_job(svc, job_id: str) -> None:
    """What the state machine does with an error decision: the "Fail job" step."""
    decision = svc.sfn.successes()[-1]
    handlers.fail_job({"job_id": job_id, "decision": decision}, svc)


# ------------------------------------------------------------------------------ 1. exactly once
def test_same_message_delivered_twice_in_a_row_submits_once(svc, fake):
    """moto + fake QPU: a redelivered message (after the first one finished) finds the
    recorded provider job; the fake saw one submit; one success reaches the state machine."""
    job_id, msg = a_job(svc)
    send(svc, [msg])
    assert lambda_batch(svc) == {"batchItemFailures": []}
    send(svc, [msg])  # SQS at-least-once: the same message again
    assert lambda_batch(svc) == {"batchItemFailures": []}
    assert jobs_per_key(fake) == {f"{job_id}/1": 1}
    assert len(submits(fake, None)) == 1 and fake.calls("find_job") == []
    poll_until_done(svc)
    assert [s["stage"] for s in svc.sfn.successes()] == ["tally"]
    send(svc, [msg])  # a delivery after the job moved on: answered again, not submitted
    lambda_batch(svc)
    assert len(submits(fake, None)) == 1
    assert svc.tasks.in_flight("fakeqpu_ok") == 0


def test_duplicate_while_the_first_holds_its_claim(svc, fake):
    """moto + fake QPU: a duplicate delivered while the first dispatcher is inside the
    provider's submit is a partial batch failure, made visible again when the first one's
    lease ends (not after the queue's timeout); redelivered then, it submits nothing."""
    job_id, msg = a_job(svc)
    other_job, other = a_job(svc)  # a message in the same batch that is fine
    inner: list[Any] = []

    def duplicate_arrives(_provider_job_id: str) -> None:
        send(svc, [msg, other])
        inner.append(lambda_batch(svc))

    fake.on_accept.append(duplicate_arrives)
    send(svc, [msg])
    assert lambda_batch(svc) == {"batchItemFailures": []}
    [answer] = inner
    [failure] = answer["batchItemFailures"]  # the duplicate only, not the other message
    assert svc.tasks.get(task_key(other_job, 1)).provider_job_id is not None
    # deferred until the claim's lease ends (300 s), not the queue's visibility timeout
    assert 290 <= svc.sqs.visibility[-1] <= 300
    assert visible(svc) == 0
    # redelivered after the lease: the first dispatcher recorded its job meanwhile
    svc.tasks.clock = lambda: time.time() + 301
    handlers.dispatcher(
        {"Records": [{"messageId": failure["itemIdentifier"], "body": json.dumps(msg)}]}, svc
    )
    assert jobs_per_key(fake) == {f"{job_id}/1": 1, f"{other_job}/1": 1}
    assert len(submits(fake, None)) == 2


def test_dispatcher_killed_after_the_provider_accepted(svc, fake):
    """moto + fake QPU: the Lambda dies after the provider accepted the job and before
    record_submission. A redelivery during the lease is deferred; after it, the claim is
    taken over, find_job finds the job by its key, and the fake sees no second submit."""
    job_id, msg = a_job(svc)
    key = f"{job_id}/1"

    def die(_provider_job_id: str) -> None:
        raise Crash("the dispatcher's Lambda was killed")

    fake.on_accept.append(die)
    with pytest.raises(Crash):
        handlers.dispatcher({"Records": [{"messageId": "m1", "body": json.dumps(msg)}]}, svc)
    [accepted] = fake.jobs()
    task = svc.tasks.get(key)
    assert task.status == "CLAIMED" and task.provider_job_id is None and task.slot

    # SQS redelivers at once (the invocation failed): the dead claim is still leased
    out = handlers.dispatcher({"Records": [{"messageId": "m2", "body": json.dumps(msg)}]}, svc)
    assert out == {"batchItemFailures": [{"itemIdentifier": "m2"}]}
    assert len(submits(fake, None)) == 1

    svc.tasks.clock = lambda: time.time() + 301  # the lease ended
    out = handlers.dispatcher({"Records": [{"messageId": "m3", "body": json.dumps(msg)}]}, svc)
    assert out == {"batchItemFailures": []}
    assert len(submits(fake, None)) == 1  # exactly one provider job
    assert [c["job_id"] for c in fake.calls("find_job")] == [accepted["job_id"]]
    task = svc.tasks.get(key)
    assert task.status == "SUBMITTED" and task.provider_job_id == accepted["job_id"]
    assert svc.jobs.get(job_id).provider_job_ids == [accepted["job_id"]]
    assert svc.tasks.in_flight("fakeqpu_ok") == 1  # the dead claim's slot, not a second one
    assert "not submitted again" in log_text(svc, job_id)
    poll_until_done(svc)
    assert [s["stage"] for s in svc.sfn.successes()] == ["tally"]
    assert svc.tasks.in_flight("fakeqpu_ok") == 0


def test_cancel_of_a_claim_whose_dispatcher_died_reaches_the_provider(svc, fake):
    """moto + fake QPU: the job is cancelled while its only record is a dead claim: the
    provider is asked (find_job) and the fake sees the cancel of the job it accepted."""
    job_id, msg = a_job(svc)
    fake.on_accept.append(lambda _id: (_ for _ in ()).throw(Crash("killed")))
    with pytest.raises(Crash):
        handlers.dispatcher({"Records": [{"messageId": "m1", "body": json.dumps(msg)}]}, svc)
    [accepted] = fake.jobs()
    cancel = {"action": "cancel", "job_id": job_id, "seq": 1}
    handlers.dispatcher({"Records": [{"messageId": "c", "body": json.dumps(cancel)}]}, svc)
    assert [c["job_id"] for c in fake.calls("cancel")] == [accepted["job_id"]]
    assert fake.jobs()[0]["state"] == "CANCELLED"
    assert svc.tasks.get(f"{job_id}/1").status == "CANCELLED"
    assert svc.tasks.in_flight("fakeqpu_ok") == 0
    assert f"cancelled provider job {accepted['job_id']} on fakeqpu_ok" in log_text(svc, job_id)


# ------------------------------------------------------------------------------ 2. completion
def test_done_twice_and_running_after_done_deliver_once(svc, fake):
    """moto + fake QPU (echo: QUEUED, RUNNING, QUEUED, RUNNING, DONE, DONE, RUNNING...):
    out-of-order states only keep the token alive; a second poller that listed the task
    before the first finished it sees DONE again, then a stale RUNNING: one success, the
    result fetched once, the job moved on to its next stage and not back."""
    job_id, msg = a_job(svc, "fakeqpu_echo")
    handlers.dispatcher({"Records": [{"messageId": "m", "body": json.dumps(msg)}]}, svc)
    for _ in range(4):  # QUEUED, RUNNING, QUEUED, RUNNING
        assert handlers.poller({}, svc)["waiting"] == 1
        assert svc.jobs.get(job_id).status == JobStatus.WAITING_FOR_QPU
    stale = svc.tasks.open_tasks()  # a second poller's listing, taken now
    assert handlers.poller({}, svc)["done"] == 1  # DONE
    record = svc.jobs.get(job_id)
    assert record.status == JobStatus.RUNNING and record.stage == "tally" and record.seq == 2

    svc.tasks.open_tasks = lambda limit=500: stale  # the racing poller
    assert handlers.poller({}, svc) == {"done": 0, "failed": 0, "waiting": 0, "errors": 0}
    handlers.poller({}, svc)  # RUNNING after DONE: a heartbeat the service refuses
    assert [s["stage"] for s in svc.sfn.successes()] == ["tally"]
    assert len(fake.calls("result")) == 1
    assert svc.tasks.get(f"{job_id}/1").status == "DONE"
    record = svc.jobs.get(job_id)
    assert record.status == JobStatus.RUNNING and record.stage == "tally" and record.seq == 2
    assert sum(1 for e in record.timeline if e["event"] == "finished" and e["seq"] == 1) == 1


def test_poller_killed_before_waking_the_state_machine(svc, fake):
    """moto + fake QPU: the poller recorded the outcome and died before SendTaskSuccess;
    the next poll delivers it (from the task, without asking the provider): no lost
    completion, no second result fetch."""
    _job_id, msg = a_job(svc)
    handlers.dispatcher({"Records": [{"messageId": "m", "body": json.dumps(msg)}]}, svc)
    handlers.poller({}, svc)  # QUEUED
    handlers.poller({}, svc)  # RUNNING
    svc.sfn.crash_next_success = True
    with pytest.raises(Crash):
        handlers.poller({}, svc)  # DONE, then killed
    status_calls = len(fake.calls("status"))
    assert handlers.poller({}, svc)["done"] == 1
    assert len(fake.calls("status")) == status_calls
    assert [s["stage"] for s in svc.sfn.successes()] == ["tally"]
    assert len(fake.calls("result")) == 1
    assert svc.tasks.open_tasks() == []


def test_throttled_status_is_retried_with_backoff(svc, fake):
    """moto + fake QPU: status answers 429 twice, then the job's state: with_retries
    backs off twice (injected sleep) and the poll goes on; past the retries the task
    stays open and is polled again next time."""
    job_id, msg = a_job(svc)
    handlers.dispatcher({"Records": [{"messageId": "m", "body": json.dumps(msg)}]}, svc)
    fake.status_429 = 2
    assert handlers.poller({}, svc)["waiting"] == 1
    assert len(svc.sleeps) == 2 and svc.sleeps[1] > svc.sleeps[0]
    assert [c["outcome"] for c in fake.calls("status")] == ["429", "429", "QUEUED"]
    fake.status_429 = svc.retry_attempts  # throttled past every retry
    assert handlers.poller({}, svc)["errors"] == 1
    assert svc.tasks.get(f"{job_id}/1").status == "SUBMITTED" and svc.sfn.successes() == []
    poll_until_done(svc)
    assert [s["stage"] for s in svc.sfn.successes()] == ["tally"]


def test_throttled_submit_is_retried_into_one_job(svc, fake):
    """moto + fake QPU (throttle: the first two submits per key get 429): one job."""
    job_id, msg = a_job(svc, "fakeqpu_throttle")
    out = handlers.dispatcher({"Records": [{"messageId": "m", "body": json.dumps(msg)}]}, svc)
    assert out == {"batchItemFailures": []}
    assert [c["outcome"] for c in submits(fake, None)] == ["429", "429", "ok"]
    assert jobs_per_key(fake) == {f"{job_id}/1": 1} and len(svc.sleeps) == 2


def test_fatal_submit_error_ends_the_job_with_the_providers_words(svc, fake):
    """moto + fake QPU (fatal: 400 at submit): not retried, not redelivered; an error
    decision carries the provider's message to Fail job, which ends the job in ERROR."""
    job_id, msg = a_job(svc, "fakeqpu_fatal")
    out = handlers.dispatcher({"Records": [{"messageId": "m", "body": json.dumps(msg)}]}, svc)
    assert out == {"batchItemFailures": []}
    assert len(submits(fake, None)) == 1 and svc.sleeps == []
    [sent] = svc.sfn.successes()
    assert sent["kind"] == "error" and FATAL_MESSAGE in sent["message"]
    assert svc.tasks.get(f"{job_id}/1").status == "ERROR"
    assert svc.tasks.in_flight("fakeqpu_fatal") == 0
    end_job(svc, job_id)
    record = svc.jobs.get(job_id)
    assert record.status == JobStatus.ERROR and FATAL_MESSAGE in record.message
    assert FATAL_MESSAGE in log_text(svc, job_id)


def test_provider_job_failure_ends_the_job_with_the_providers_words(svc, fake):
    """moto + fake QPU (fail: the job ends ERROR on the device): the poller sends an error
    decision with the provider's message; Fail job puts the job in ERROR with it."""
    job_id, msg = a_job(svc, "fakeqpu_fail")
    handlers.dispatcher({"Records": [{"messageId": "m", "body": json.dumps(msg)}]}, svc)
    poll_until_done(svc)
    [sent] = svc.sfn.successes()
    assert sent["kind"] == "error" and FAIL_MESSAGE in sent["message"]
    provider_job_id = fake.jobs()[0]["job_id"]
    end_job(svc, job_id)
    record = svc.jobs.get(job_id)
    assert record.status == JobStatus.ERROR and FAIL_MESSAGE in record.message
    assert fake.calls("result") == [] and svc.tasks.in_flight("fakeqpu_fail") == 0
    assert f"provider job {provider_job_id} on fakeqpu_fail ended ERROR" in log_text(svc, job_id)


# ------------------------------------------------------------------------------ 3. limits
@pytest.mark.slow
def test_burst_of_60_with_a_limit_of_8(svc, fake):
    """moto SQS + fake QPU (which refuses a 9th pending job): 60 execute requests, limit 8
    (QLAYER_LIMITS). Lambda batches of 10, two per round, then one poll. At most 8 provider
    jobs in flight at the fake, all 60 submitted once, none refused, every deferral a
    partial batch failure with a short visibility, the counter back to 0."""
    svc.defer_s = 0  # deferred messages come back at once (the harness is the clock)
    _job_id, template = a_job(svc)
    bodies = [template, *more_jobs(svc, 59, template)]
    send(svc, bodies)
    deferred = 0
    for _round in range(200):
        for _ in range(2):
            out = lambda_batch(svc)
            if out is not None:
                deferred += len(out["batchItemFailures"])
        assert svc.tasks.in_flight("fakeqpu_ok") <= 8
        handlers.poller({}, svc)
        if visible(svc) == 0 and not svc.tasks.open_tasks():
            break
    else:
        raise AssertionError("the burst did not drain")
    assert fake.peak_in_flight() == 8
    assert len(submits(fake, "ok")) == 60 and submits(fake, "rejected") == []
    assert set(jobs_per_key(fake).values()) == {1} and len(jobs_per_key(fake)) == 60
    assert fake.calls("find_job") == []  # a deferral is no takeover
    assert deferred > 0 and set(svc.sqs.visibility) == {0}
    assert len(svc.sfn.successes()) == 60
    assert svc.tasks.in_flight("fakeqpu_ok") == 0


def test_over_the_limit_the_message_comes_back_after_the_deferral(svc, fake, monkeypatch):
    """moto SQS: at the backend's in-flight limit a message is a partial batch failure
    whose visibility is QLAYER_DISPATCH_DEFER_S (45 s here), not the queue's timeout;
    its claim is released, so the redelivery (once a slot is free) submits at once."""
    monkeypatch.setenv("QLAYER_DISPATCH_DEFER_S", "45")
    svc.defer_s = handlers._defer_s_from_env()
    svc.limiter = RateLimiter({"fakeqpu": Limits(1, 1000.0, 1000, source="a test's limit")})
    first_job, first = a_job(svc)
    second_job, second = a_job(svc)
    send(svc, [first])
    lambda_batch(svc)
    send(svc, [second])
    out = lambda_batch(svc)
    assert len(out["batchItemFailures"]) == 1 and svc.sqs.visibility == [45]
    assert visible(svc) == 0  # invisible for 45 s
    task = svc.tasks.get(f"{second_job}/1")
    assert task.status == "CLAIMED" and task.lease_until == 0 and not task.slot
    poll_until_done(svc)  # the first job ends: its slot is free
    handlers.dispatcher({"Records": [{"messageId": "again", "body": json.dumps(second)}]}, svc)
    assert jobs_per_key(fake) == {f"{first_job}/1": 1, f"{second_job}/1": 1}
    assert fake.calls("find_job") == []


def test_submission_rate_defers_with_the_token_wait(svc, fake):
    """Token bucket (burst 2, 0.5/s, a fixed clock): the third message is deferred by the
    time its token needs (2 s), not submitted."""
    svc.limiter = RateLimiter({"fakeqpu": Limits(100, 0.5, 2, source="test")}, clock=lambda: 1000.0)
    msgs = [a_job(svc)[1] for _ in range(3)]
    send(svc, msgs)
    out = lambda_batch(svc)
    assert len(out["batchItemFailures"]) == 1 and svc.sqs.visibility == [2]
    assert len(submits(fake)) == 2 and svc.tasks.in_flight("fakeqpu_ok") == 2


# ------------------------------------------------------------------------------ 4. logs
def test_provider_job_ids_in_the_execute_log(svc, fake):
    """moto + fake QPU: the execute step's log names the provider job at submit and at
    completion; a cancel of another job is logged with its provider job id."""
    job_id, msg = a_job(svc)
    handlers.dispatcher({"Records": [{"messageId": "m", "body": json.dumps(msg)}]}, svc)
    [job] = fake.jobs()
    pid = job["job_id"]
    text = log_text(svc, job_id)
    assert f"submitted to fakeqpu_ok: provider job {pid} (key {job_id}/1)" in text
    poll_until_done(svc)
    assert f"provider job {pid} on fakeqpu_ok done (key {job_id}/1)" in log_text(svc, job_id)

    other_id, other = a_job(svc, "fakeqpu_never")
    handlers.dispatcher({"Records": [{"messageId": "o", "body": json.dumps(other)}]}, svc)
    other_pid = fake.jobs()[1]["job_id"]
    cancel = {"action": "cancel", "job_id": other_id, "seq": 1}
    handlers.dispatcher({"Records": [{"messageId": "c", "body": json.dumps(cancel)}]}, svc)
    assert [c["job_id"] for c in fake.calls("cancel")] == [other_pid]
    assert f"cancelled provider job {other_pid} on fakeqpu_never" in log_text(svc, other_id)
    assert svc.tasks.in_flight("fakeqpu_never") == 0
