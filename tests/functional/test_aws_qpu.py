"""QPU work on the AWS path, in the cloud in a box: real providers' clients, nothing injected.

The stack is synthesized with ``provider_plugins="fakeqpu=fake_qpu:FakeQpu"`` and
``rate_limits={"fakeqpu": {"max_in_flight": 8, ...}}``; the fake QPU service
(tests/e2e/programs/fake_qpu.py: a FAKE service with its own SQLite queue and a durable
call log) refuses a 9th pending job, as IBM's Open Plan does a 4th. IBM devices go to a
fake IBM Quantum Platform service on 127.0.0.1 (tests/fakes/ibm_runtime) that the real
qiskit-ibm-runtime client talks to; the provider secret holds its account, put there as a
user would after a deploy. The dispatch queue, its redrive policy (maxReceiveCount 5),
the event source mapping (batch size 5) and the poller's schedule are the stack's.

Where the providers' services are (their state folders, the fake IBM service's address)
is baked into the runner image by the box's options: it is not stack configuration.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from cloud_box import FAKE_QPU_CODE, PROGRAMS, PROVIDER_PLUGINS, finish, until, wait_queue_empty

from qlayer import keys
from qlayer.cloudbox import BoxOptions, CloudBox, synthesize
from qlayer.cloudbox.server import REGION
from qlayer.keys import new_job_id

STACK = "Qlayer"
TINY = PROGRAMS / "aws_tiny.py"
ISA = PROGRAMS / "aws_isa.py"
ISA_FAN = PROGRAMS / "aws_isa_fan.py"
BASIS = PROGRAMS / "aws_basis.py"
#: BASIS's device: an ``ibm_*`` name goes to the fake IBM service (3 in flight, Open Plan).
BACKEND = "ibm_brisbane"
LIMIT = 8
RATE_LIMITS = {"fakeqpu": {"max_in_flight": LIMIT, "submits_per_s": 1000, "burst": 1000}}
#: The poller's rate(1 minute) fires every second here (the box's only time compression).
SPEEDUP = 60.0
#: Requests of the queue burst: 100 in ``make test`` (12.5 times the limit), 500 in
#: ``make test-burst`` (minutes: every request is some 50 AWS calls, all answered by the
#: one moto server in this process, one DynamoDB call at a time).
BURST = int(os.environ.get("QLAYER_TEST_BURST", "100"))
BURST_TIMEOUT_S = 900

pytestmark = [pytest.mark.moto, pytest.mark.slow]


@pytest.fixture(scope="module")
def ibm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.fakes.ibm_runtime import serve_in_thread

    with serve_in_thread(tmp_path_factory.mktemp("fake-ibm")) as fake:
        fake.ideal()  # counts without the device's noise: easy to check
        yield fake


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, ibm: Any) -> Iterator[CloudBox]:
    root = tmp_path_factory.mktemp("qpu-box")
    synthesis = synthesize(
        root / "cdk.out", provider_plugins=PROVIDER_PLUGINS, rate_limits=RATE_LIMITS
    )
    options = BoxOptions(
        plugins=[FAKE_QPU_CODE],
        image_env={
            "QLAYER_FAKE_QPU_DIR": str(root / "fake-qpu"),
            "QLAYER_FAKE_QPU_MAX_IN_FLIGHT": str(LIMIT),
            **ibm.client_env(),
        },
        max_processes=3,
        schedule_speedup=SPEEDUP,
    )
    with CloudBox(synthesis, root / "box", options) as running:
        running.fake_qpu_dir = root / "fake-qpu"  # type: ignore[attr-defined]
        secret = running.outputs["ProvidersSecretArn"]
        settings = {f"ibm_{k}": v for k, v in ibm.credentials().items()}
        running.client("secretsmanager").put_secret_value(
            SecretId=secret, SecretString=json.dumps(settings)
        )
        yield running


@pytest.fixture
def cloud(box: CloudBox, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``Client.aws`` as a user makes it. The client checks backend names with its own
    registry, so the user's machine has the plugin too (its code and QLAYER_PROVIDERS)."""
    from qlayer import Client

    monkeypatch.setenv("QLAYER_PROVIDERS", PROVIDER_PLUGINS)
    monkeypatch.setenv("QLAYER_FAKE_QPU_DIR", str(box.fake_qpu_dir))  # type: ignore[attr-defined]
    monkeypatch.syspath_prepend(str(FAKE_QPU_CODE))
    return Client.aws(stack=STACK, region=REGION)


@pytest.fixture(autouse=True)
def _nothing_held_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that fails while runtime jobs are held lets them go, so the next test does not
    find IBM's slots taken."""
    yield
    if "ibm" in request.fixturenames:
        ibm = request.getfixturevalue("ibm")
        ibm.store.clear_rules()
        for held in ibm.store.jobs(pending=True)[0]:
            ibm.release(held["id"])
        ibm.ideal()


def fake_qpu(box: CloudBox) -> Any:
    import sys

    if str(FAKE_QPU_CODE) not in sys.path:
        sys.path.insert(0, str(FAKE_QPU_CODE))
    from fake_qpu import FakeQpu

    return FakeQpu(box.fake_qpu_dir)  # type: ignore[attr-defined]


def dead_letters(box: CloudBox) -> int:
    sqs = box.client("sqs")
    url = box.outputs["DispatchQueueUrl"]
    policy = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
    target = json.loads(policy["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"]
    dlq = sqs.get_queue_url(QueueName=target.rsplit(":", 1)[-1])["QueueUrl"]
    attrs = sqs.get_queue_attributes(
        QueueUrl=dlq,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def per_key(service: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in service.jobs():
        counts[job["key"]] = counts.get(job["key"], 0) + 1
    return counts


# -- backpressure ---------------------------------------------------------------------------
def test_burst_of_60_jobs_with_a_limit_of_8_all_answered(box: CloudBox, cloud: Any) -> None:
    """60 jobs at once, each one execute on the fake QPU: every one DONE, never more than 8
    provider jobs pending, nothing dead-lettered (held requests wait in the tasks table,
    not in the queue), exactly one provider job per request."""
    service = fake_qpu(box)
    before = len(service.jobs())
    started = time.monotonic()
    jobs = [cloud.run(TINY, {"shots": 8}, backend="fakeqpu_ok") for _ in range(60)]
    for job in jobs:
        row = finish(box, job, timeout=600)
        assert row["status"] == "DONE", row["message"]
        assert job.result(wait=False)["shots"] == 8
    elapsed = time.monotonic() - started
    assert len(service.jobs()) - before == 60
    mine = {f"{job.job_id}/1" for job in jobs}
    assert {k: n for k, n in per_key(service).items() if k in mine} == dict.fromkeys(mine, 1)
    assert not [c for c in service.calls("submit") if c["outcome"] == "rejected"]
    assert service.peak_in_flight() <= LIMIT
    assert dead_letters(box) == 0
    wait_queue_empty(box)
    # each request carried the state's heartbeat timeout: the poller paces its heartbeats
    assert {cloud.services.ledger.get(k).heartbeat_s for k in mine} == {3600}
    print(f"\n60 jobs through a limit of {LIMIT}: {elapsed:.1f} s")


@pytest.mark.timeout(BURST_TIMEOUT_S + 300)  # the box's start (its setup) counts too
def test_a_burst_of_requests_on_the_stacks_queue(box: CloudBox, cloud: Any) -> None:
    """:data:`BURST` "Wait for QPU" messages straight onto the dispatch queue (as that many
    executions would send them): every request answered once, within the limit, none
    dead-lettered."""
    assert BURST % 10 == 0 and BURST >= 10 * LIMIT, "a burst many times past the limit"
    from qiskit import QuantumCircuit

    from qlayer.aws.client import prepare_job
    from qlayer.dispatch import FINAL_STATES, LEDGER_STATES, OPEN_STATES, batches
    from qlayer.request import ExecuteRequest, encode_request

    svc = cloud.services
    service = fake_qpu(box)
    before = len(service.jobs())
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure_all()
    request = ExecuteRequest("sampler", [bell], "fakeqpu_quick", "tally", shots=8)
    messages = []
    for _ in range(BURST // 10):
        job_id = prepare_job(svc, TINY, {"shots": 8})
        for seq in range(1, 11):
            key = keys.execute_request(job_id, seq)
            svc.store.put_json(key, encode_request(request, {"shots": 8}, where="a test"))
            messages.append(
                {
                    "task_token": f"burst-{job_id}-{seq}",
                    "job_id": job_id,
                    "seq": seq,
                    "request_key": key,
                    "backend": "fakeqpu_quick",
                    "execution": "none",
                    "heartbeat_s": 3600,
                }
            )
    sqs = box.client("sqs")
    url = box.outputs["DispatchQueueUrl"]
    started = time.monotonic()
    for start in range(0, len(messages), 10):
        entries = [
            {"Id": str(i), "MessageBody": json.dumps(m)}
            for i, m in enumerate(messages[start : start + 10])
        ]
        assert not sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
    ledger = svc.ledger
    keys_ = [f"{m['job_id']}/{m['seq']}" for m in messages]

    mine = set(keys_)

    def none_open() -> bool:
        # One listing of the entries per look (a query per state), not a read per request:
        # 500 reads every 2 s would be most of the box's DynamoDB work.
        listed = {e.key: e.state for e in ledger.entries_in(LEDGER_STATES)}
        return mine <= listed.keys() and not any(listed[k] in OPEN_STATES for k in mine)

    def all_ended() -> bool:  # then every entry read consistently, once
        entries = [ledger.get(k) for k in keys_]
        return all(e is not None and e.state in FINAL_STATES for e in entries)

    try:
        until("every request to end", none_open, timeout=BURST_TIMEOUT_S, every=2.0)
        until("every entry to read as ended", all_ended, timeout=60, every=2.0)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{box.function_log('poller')[-4000:]}") from exc
    elapsed = time.monotonic() - started
    entries = [ledger.get(k) for k in keys_]
    assert {e.state for e in entries} == {"DONE"}
    assert all(e.outcome and e.outcome["kind"] == "next" for e in entries)
    # Exactly one provider job per request: its own, or the one job of the batch it was
    # coalesced into (qlayer.dispatch.batches: its provider job id is a share of it).
    batch_of = {e.key: batches.batch_of(e) for e in entries}
    alone = {k for k, b in batch_of.items() if b is None}
    shared = {b for b in batch_of.values() if b is not None}
    jobs_by_key = per_key(service)
    assert {k: jobs_by_key.get(k, 0) for k in alone | shared} == dict.fromkeys(alone | shared, 1)
    assert not [k for k in mine - alone if jobs_by_key.get(k)]  # no member went alone too
    assert len(service.jobs()) - before == len(alone) + len(shared)
    assert not [c for c in service.calls("submit") if c["outcome"] == "rejected"]
    assert service.peak_in_flight() <= LIMIT
    assert ledger.in_flight("fakeqpu_quick") == 0
    assert dead_letters(box) == 0
    wait_queue_empty(box)
    print(f"\n{BURST} requests through a limit of {LIMIT}: {elapsed:.1f} s")
    if os.environ.get("QLAYER_TEST_BURST_LOG"):
        print(box.function_log("poller")[-6000:])


# -- exactly once, cancel, the provider's own words -------------------------------------------
def test_a_duplicate_delivery_submits_nothing_more(box: CloudBox, cloud: Any) -> None:
    """SQS delivers at least once: the same message again, while the request is submitted
    and running, finds its entry and submits nothing."""
    service = fake_qpu(box)
    hold = box.fake_qpu_dir / "hold"  # type: ignore[attr-defined]
    hold.touch()  # no provider job goes past RUNNING meanwhile
    try:
        job = cloud.run(TINY, {"shots": 8}, backend="fakeqpu_ok")
        key = f"{job.job_id}/1"
        until("the submission", lambda: per_key(service).get(key), timeout=120)
        entry = cloud.services.ledger.get(key)
        duplicate = {
            "task_token": entry.token,
            "job_id": job.job_id,
            "seq": 1,
            "request_key": entry.request_key,
            "backend": "fakeqpu_ok",
            "execution": "the same",
            "heartbeat_s": 3600,
        }
        sqs = box.client("sqs")
        body = json.dumps(duplicate)
        sqs.send_message(QueueUrl=box.outputs["DispatchQueueUrl"], MessageBody=body)
        wait_queue_empty(box)
    finally:
        hold.unlink()
    row = finish(box, job, timeout=300)
    assert row["status"] == "DONE", row["message"]
    assert per_key(service)[key] == 1


def test_cancel_reaches_the_provider(box: CloudBox, cloud: Any) -> None:
    service = fake_qpu(box)
    job = cloud.run(TINY, {"shots": 8}, backend="fakeqpu_never")
    key = f"{job.job_id}/1"
    until("the submission", lambda: per_key(service).get(key), timeout=120)
    assert job.cancel() is True
    provider_job = next(j["job_id"] for j in service.jobs() if j["key"] == key)
    until(
        "the provider's cancel",
        lambda: [c for c in service.calls("cancel") if c["job_id"] == provider_job],
        timeout=120,
    )
    assert job.status().value == "CANCELLED"
    until("the ledger entry to end", lambda: cloud.services.ledger.get(key).state == "CANCELLED")


def test_a_throttled_submit_is_retried_into_one_job(box: CloudBox, cloud: Any) -> None:
    service = fake_qpu(box)
    job = cloud.run(TINY, {"shots": 8}, backend="fakeqpu_throttle")
    row = finish(box, job, timeout=300)
    assert row["status"] == "DONE", row["message"]
    key = f"{job.job_id}/1"
    outcomes = [c["outcome"] for c in service.calls("submit") if c["key"] == key]
    assert outcomes == ["429", "429", "ok"]
    assert per_key(service)[key] == 1


def test_provider_errors_end_the_job_with_the_providers_words(box: CloudBox, cloud: Any) -> None:
    from fake_qpu import FAIL_MESSAGE, FATAL_MESSAGE

    fatal = cloud.run(TINY, {"shots": 8}, backend="fakeqpu_fatal")
    failed = cloud.run(TINY, {"shots": 8}, backend="fakeqpu_fail")
    row = finish(box, fatal, timeout=300)
    assert row["status"] == "ERROR" and FATAL_MESSAGE in row["message"], row
    assert "submit to fakeqpu_fatal failed" in row["message"]
    row = finish(box, failed, timeout=300)
    assert row["status"] == "ERROR" and FAIL_MESSAGE in row["message"], row
    assert row["error_type"] == "ProviderError"
    for job in (fatal, failed):
        assert "Fail job" in box.entered_states(job.job_id)


# -- real providers' clients --------------------------------------------------------------------
def test_an_ibm_device_from_a_batch_stage(box: CloudBox, cloud: Any, ibm: Any) -> None:
    """A Batch stage transpiles for ``ibm_brisbane`` (its Target comes from the IBM service,
    with the stack's secret) and returns Execute to it; the dispatcher submits through the
    real qiskit-ibm-runtime client, the poller follows it, the next stage counts."""
    creations = ibm.job_creations()
    job = cloud.run(ISA, {"shots": 200})
    row = finish(box, job, timeout=600)
    assert row["status"] == "DONE", (row["message"], box.function_log("dispatcher")[-2000:])
    counts = job.result(wait=False)["counts"]
    assert sum(counts.values()) == 200 and set(counts) <= {"00", "11"}
    assert ibm.job_creations() == creations + 1
    states = box.entered_states(job.job_id)
    assert "Run stage on Batch" in states and "Wait for QPU" in states
    assert box.batch is not None
    [run] = [r for r in box.batch.runs if r.name.startswith(job.job_id)]
    assert run.environment["QLAYER_PROVIDERS_SECRET_ARN"] == box.outputs["ProvidersSecretArn"]


def test_a_cancelled_ibm_job_closes_its_session(box: CloudBox, cloud: Any, ibm: Any) -> None:
    """``mode="session"``: the dispatcher submits into a runtime session of the job's own;
    cancelling the job cancels the runtime job and closes the session (the cancel path)."""
    ibm.hold_next()  # the runtime job stays queued until cancelled
    job = cloud.run(ISA, {"shots": 50, "mode": "session"})
    key = f"{job.job_id}/1"
    until("the runtime job", lambda: ibm.store.jobs(tags=[key])[0], timeout=600)
    [runtime_job] = ibm.store.jobs(tags=[key])[0]
    assert runtime_job["program_id"] == "executor"
    session_id = runtime_job["session_id"]
    assert session_id and ibm.store.session(session_id)["accepting_jobs"]
    assert job.cancel() is True
    until(
        "the session to close",
        lambda: not ibm.store.session(session_id)["accepting_jobs"],
        timeout=180,
    )
    until(
        "the job's note of it",
        lambda: any(e["event"] == "sessions closed" for e in job.timeline()),
        timeout=60,
    )


def test_a_finished_ibm_session_job_closes_its_session(box: CloudBox, cloud: Any, ibm: Any) -> None:
    """Finalise has the dispatcher close the session a job held; its billed seconds (the
    fake bills 2 s per runtime job) reach the job's usage."""
    job = cloud.run(ISA, {"shots": 50, "mode": "session"})
    row = finish(box, job, timeout=600)
    assert row["status"] == "DONE", (row["message"], box.function_log("dispatcher")[-2000:])
    [runtime_job] = ibm.store.jobs(tags=[f"{job.job_id}/1"])[0]
    session_id = runtime_job["session_id"]
    until(
        "the session to close",
        lambda: not ibm.store.session(session_id)["accepting_jobs"],
        timeout=180,
    )
    until("its usage", lambda: job.usage()["session_seconds"] == 2.0, timeout=60)


def test_a_fan_outs_ibm_batch_is_closed_when_the_job_ends(
    box: CloudBox, cloud: Any, ibm: Any
) -> None:
    """The items of a fan-out run in runtime batches of group ``<job>_<seq>``; the
    dispatcher notes it on the parent, and the parent's Finalise has every batch of the
    group closed. Usually one batch; two when two dispatcher invocations open the group's
    batch at the same instant (a known limit, README: the tag lookup races across
    processes), and then both must be closed."""
    job = cloud.run(ISA_FAN, {"shots": 50, "items": 2})
    row = finish(box, job, timeout=600)
    assert row["status"] == "DONE", (row["message"], box.function_log("dispatcher")[-2000:])
    assert [sum(c.values()) for c in job.result(wait=False)["counts"]] == [50, 50]
    runtime_jobs = ibm.store.jobs(tags=[f"qlayer-session:{job.job_id}_1"])[0]
    assert 1 <= len(runtime_jobs) <= 2  # the two items' requests may share one (coalescing)
    batch_ids = {runtime_job["session_id"] for runtime_job in runtime_jobs}
    assert len(batch_ids) in (1, 2) and None not in batch_ids
    assert {ibm.store.session(b)["mode"] for b in batch_ids} == {"batch"}
    # The parent notes that its items hold the batch before the first of them is submitted:
    # noted after, the items (and the parent) could end first, and nothing closed it.
    held_at = [float(e["at"]) for e in job.timeline() if e["event"] == "batch held"]
    created = [
        datetime.fromisoformat(r["created"].replace("Z", "+00:00")).timestamp()
        for r in runtime_jobs
    ]
    assert held_at and min(held_at) <= min(created), (held_at, created)
    until(
        "the group's batches to close",
        lambda: not any(ibm.store.session(b)["accepting_jobs"] for b in batch_ids),
        timeout=180,
    )
    until(
        "the job's note of it",
        lambda: any(e["event"] == "sessions closed" for e in job.timeline()),
        timeout=60,
    )


def _behind_held_blockers(cloud: Any, ibm: Any, box: CloudBox, n: int) -> tuple[list, list]:
    """IBM's three slots taken by held runtime jobs of seeded requests (which never merge);
    ``n`` small unseeded requests wait in the tasks table behind them.

    Each blocker's hold is its own (a rule for its request's tag, set before the job
    exists), so no other runtime job created meanwhile can take one; each blocker must
    make exactly one runtime job and hold one of the backend's slots."""
    blockers = []
    for i in range(3):
        job_id = new_job_id()
        ibm.hold_next(tag=f"{job_id}/1")
        blockers.append(cloud.run(BASIS, {"k": 7, "shots": 20, "seed": i}, job_id=job_id))

    def runtime_jobs(job: Any) -> list[dict[str, Any]]:
        return ibm.store.jobs(tags=[f"{job.job_id}/1"])[0]

    def entries(of: list[Any]) -> list[str]:
        found = [cloud.services.ledger.get(f"{job.job_id}/1") for job in of]
        return [f"{e.state}{' (slot)' if e.slot else ''}" if e else "-" for e in found]

    def where() -> str:
        pending = [j["id"] for j in ibm.store.jobs(pending=True)[0]]
        return (
            f"blockers {entries(blockers)}, slots counted "
            f"{cloud.services.ledger.in_flight(BACKEND)}, pending runtime jobs {pending}; "
            f"dispatcher: {box.function_log('dispatcher')[-3000:]}"
        )

    until("the three held runtime jobs", lambda: all(map(runtime_jobs, blockers)), timeout=600)
    assert [len(runtime_jobs(b)) for b in blockers] == [1, 1, 1]  # exactly once each
    try:
        until(
            "the blockers' three slots",
            lambda: cloud.services.ledger.in_flight(BACKEND) == 3,
            timeout=120,
        )
        jobs = [cloud.run(BASIS, {"k": k, "shots": 50}) for k in range(n)]
        until(f"the {n} requests held back", lambda: set(entries(jobs)) == {"WAITING"}, timeout=400)
    except TimeoutError as exc:  # say where they are instead (and what holds the slots)
        raise AssertionError(f"{exc}: {where()}") from exc
    return blockers, jobs


def _shared_jobs(ibm: Any) -> list[dict[str, Any]]:
    runtime_jobs = ibm.store.jobs()[0]
    return [j for j in runtime_jobs if any(t.startswith("coalesced/") for t in j["tags"])]


def test_requests_queued_for_ibm_share_one_runtime_job(box: CloudBox, cloud: Any, ibm: Any) -> None:
    """Coalescing on the AWS path: when a slot comes back the poller's drain merges the
    waiting requests into one runtime job, and each job gets its own PUB's counts."""
    creations = ibm.job_creations()
    blockers, jobs = _behind_held_blockers(cloud, ibm, box, 4)
    for held in ibm.store.jobs(pending=True)[0]:
        ibm.release(held["id"])
    for k, job in enumerate(jobs):
        row = finish(box, job, timeout=600)
        assert row["status"] == "DONE", (row["message"], box.function_log("poller")[-2000:])
        result = job.result(wait=False)
        assert result["counts"] == {format(k, "03b"): 50}, (k, result)
        assert result["coalesced"] == 4
    assert ibm.job_creations() == creations + 4  # three blockers, one for the four
    assert len(_shared_jobs(ibm)) >= 1
    for blocker in blockers:
        assert finish(box, blocker, timeout=300)["status"] == "DONE"
    [submitted] = [
        e for e in jobs[0].timeline() if e["event"] == "submitted" and e["stage"] == "execute"
    ]
    assert submitted["detail"]["coalesced"]["requests"] == 4


def test_cancelling_one_coalesced_request_leaves_the_runtime_job_to_the_others(
    box: CloudBox, cloud: Any, ibm: Any
) -> None:
    before = {j["id"] for j in _shared_jobs(ibm)}
    blockers, jobs = _behind_held_blockers(cloud, ibm, box, 3)
    ibm.hold_next()  # the shared runtime job (the next one created) is held too
    for held in ibm.store.jobs(pending=True)[0]:
        ibm.release(held["id"])
    until("the shared runtime job", lambda: [j for j in _shared_jobs(ibm) if j["id"] not in before])
    [shared] = [j for j in _shared_jobs(ibm) if j["id"] not in before]
    until(
        "every request's share",
        lambda: all(
            (cloud.services.ledger.get(f"{job.job_id}/1").provider_job_id or "").startswith(
                "coalesced/"
            )
            for job in jobs
        ),
        timeout=300,
    )
    assert jobs[1].cancel() is True
    until(
        "the cancelled request's entry to end",
        lambda: cloud.services.ledger.get(f"{jobs[1].job_id}/1").state == "CANCELLED",
        timeout=180,
    )
    assert ibm.store.job(shared["id"])["status"] in ("Queued", "Running")
    ibm.release(shared["id"])
    for k in (0, 2):
        row = finish(box, jobs[k], timeout=600)
        assert row["status"] == "DONE", row["message"]
        assert jobs[k].result(wait=False)["counts"] == {format(k, "03b"): 50}
    assert ibm.store.job(shared["id"])["status"] == "Completed"
    assert jobs[1].status().value == "CANCELLED"
    for blocker in blockers:
        finish(box, blocker, timeout=300)


def test_braket_local_runs_as_a_simulator(box: CloudBox, cloud: Any) -> None:
    """``braket_local`` is Braket's simulator on our own compute: simulated on Lambda."""
    job = cloud.run(TINY, {"shots": 40}, backend="braket_local")
    row = finish(box, job, timeout=300)
    assert row["status"] == "DONE", row["message"]
    counts = job.result(wait=False)["counts"]
    assert sum(counts.values()) == 40 and set(counts) <= {"00", "11"}
    assert "Simulate on Lambda" in box.entered_states(job.job_id)
