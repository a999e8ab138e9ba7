"""The local dispatcher and remote QPU services, with real faults.

The provider is ``programs/fake_qpu.py``: a FAKE QPU service (never a real one) plugged
into the daemon through ``QLAYER_PROVIDERS``. It keeps its own durable ledger of every
call, so each test counts provider jobs per execute request across daemon kills.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers
from fake_qpu import FAIL_MESSAGE, FATAL_MESSAGE, FakeQpu
from helpers import wait_for

from qlayer.errors import JobCancelled, JobFailed
from qlayer.status import JobStatus

PROGRAM = helpers.PROGRAMS / "qpu_chain.py"
FAKE = helpers.PROGRAMS / "fake_qpu.py"


@pytest.fixture
def fake_dir(tmp_path):
    return tmp_path / "fake_qpu"


@pytest.fixture
def env(monkeypatch, fake_dir):
    """The daemon's environment (it inherits the test's): the fake plugged in, fast polls."""
    monkeypatch.setenv("QLAYER_PROVIDERS", f"fakeqpu={FAKE}:FakeQpu")
    monkeypatch.setenv("QLAYER_FAKE_QPU_DIR", str(fake_dir))
    monkeypatch.setenv("QLAYER_QPU_POLL_S", "0.02")
    monkeypatch.setenv("QLAYER_QPU_POLLS_PER_S", "2000")
    monkeypatch.setenv("QLAYER_QPU_RETRY_BASE_S", "0.05")
    return monkeypatch


@pytest.fixture
def fake(env, fake_dir):
    return FakeQpu(fake_dir)


@pytest.fixture
def client(env, tmp_path):
    yield from helpers.local_client(tmp_path / "home")


@pytest.fixture
def side(tmp_path):
    return tmp_path / "side.log"


def jobs_per_key(fake: FakeQpu) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in fake.jobs():
        counts[job["key"]] = counts.get(job["key"], 0) + 1
    return counts


def ends(side: Path, job_id: str, stage: str) -> int:
    return sum(
        1
        for what, job, _seq, name in helpers.read_side(side)
        if what == "end" and job == job_id and name == stage
    )


def test_execute_on_a_remote_qpu(client, fake, side):
    job = client.run(PROGRAM, {"side": str(side), "executes": 2}, backend="fakeqpu_ok")
    result = job.result(timeout=60)
    assert result == {"totals": [32, 32], "job": job.job_id}
    assert jobs_per_key(fake) == {f"{job.job_id}/1": 1, f"{job.job_id}/3": 1}
    info = job.info()
    provider_ids = [j["job_id"] for j in fake.jobs()]
    assert info["provider_job_ids"] == provider_ids
    events = job.timeline()
    submitted = [e for e in events if e["event"] == "submitted" and e["stage"] == "execute"]
    assert [e["detail"]["provider_job_id"] for e in submitted] == provider_ids
    assert any(e["event"] == "device running" for e in events)
    assert len(fake.calls("result")) == 2


def ledger_row(client, key: str) -> dict:
    with helpers.db(client) as conn:
        row = conn.execute("SELECT * FROM provider_ledger WHERE key = ?", (key,)).fetchone()
    return dict(row) if row else {}


def submits(fake: FakeQpu, outcome: str | None = "ok") -> list[dict]:
    return [c for c in fake.calls("submit") if outcome is None or c["outcome"] == outcome]


def events(job, name: str) -> list[dict]:
    return [e for e in job.timeline() if e["event"] == name]


@pytest.mark.slow
def test_daemon_killed_after_provider_accepted_before_ledger_record(client, fake, fake_dir, side):
    job = client.run(PROGRAM, {"side": str(side)}, backend="fakeqpu_block")
    key = f"{job.job_id}/1"
    # The fake accepted the job and blocks its reply: the daemon has not recorded the id.
    wait_for(lambda: list(fake_dir.glob("accepted.*")), 60, "the provider to accept the job")
    row = ledger_row(client, key)
    assert row["state"] == "CLAIMED" and row["provider_job_id"] is None
    assert job.status() == JobStatus.WAITING_FOR_QPU

    helpers.kill_daemon(client)
    (fake_dir / "go").touch()
    client.up()

    assert job.result(timeout=60)["totals"] == [32]
    [accepted] = fake.jobs()
    assert jobs_per_key(fake) == {key: 1}
    assert len(submits(fake, None)) == 1, "the restarted daemon asked, it did not resubmit"
    assert [c["key"] for c in fake.calls("find_job")] == [key]
    row = ledger_row(client, key)
    assert (row["provider_job_id"], row["claims"], row["state"]) == (accepted["job_id"], 2, "DONE")
    assert job.info()["provider_job_ids"] == [accepted["job_id"]]
    assert ends(side, job.job_id, "measure") == 1


@pytest.mark.slow
def test_duplicate_queue_entry_submits_once(client, fake, fake_dir, side):
    from qlayer.dispatch import submit_once
    from qlayer.local.control import poke
    from qlayer.local.ledger import SqliteLedger
    from qlayer.request import decode_request

    (fake_dir / "hold").parent.mkdir(parents=True, exist_ok=True)
    (fake_dir / "hold").touch()
    job = client.run(PROGRAM, {"side": str(side)}, backend="fakeqpu_ok")
    key = f"{job.job_id}/1"
    wait_for(lambda: ledger_row(client, key).get("provider_job_id"), 60, "the submission")
    provider_job_id = ledger_row(client, key)["provider_job_id"]

    # The same step queued again: the daemon runs its submit path a second time.
    with helpers.db(client) as conn:
        conn.execute(
            "UPDATE steps SET state = 'pending' WHERE job_id = ? AND seq = 1", (job.job_id,)
        )
    poke(client.home)
    wait_for(lambda: len(events(job, "queued for provider")) == 2, 30, "the duplicate entry")
    # And a second dispatcher (another process's view of the same ledger) submits it too.
    request_key = ledger_row(client, key)["request_key"]
    request = decode_request(client.store.get_json(request_key))
    other = SqliteLedger(client.home.db)
    assert submit_once(other, fake, key, "fakeqpu_ok", request) == provider_job_id
    other.close()

    (fake_dir / "hold").unlink()
    assert job.result(timeout=60)["totals"] == [32]
    assert jobs_per_key(fake) == {key: 1}
    assert len(submits(fake, None)) == 1
    assert ends(side, job.job_id, "measure") == 1


@pytest.mark.slow
def test_daemon_restarted_while_polling_polls_again(client, fake, fake_dir, side):
    fake_dir.mkdir(parents=True, exist_ok=True)
    (fake_dir / "hold").touch()
    job = client.run(PROGRAM, {"side": str(side)}, backend="fakeqpu_ok")
    wait_for(lambda: events(job, "device running"), 60, "the provider job to run")
    first_daemon = client.daemon_pid()
    helpers.kill_daemon(client)
    polled_before = len(fake.calls("status"))
    client.up()
    second_daemon = client.daemon_pid()
    wait_for(lambda: len(fake.calls("status")) > polled_before + 2, 60, "polls to resume")
    (fake_dir / "hold").unlink()

    assert job.result(timeout=60)["totals"] == [32]
    assert len(submits(fake, None)) == 1 and not fake.calls("find_job")
    pids = {c["pid"] for c in fake.calls("status")}
    assert pids == {first_daemon, second_daemon}
    assert len(fake.calls("result")) == 1
    assert ends(side, job.job_id, "measure") == 1


@pytest.mark.slow
def test_events_twice_or_out_of_order_are_harmless(client, fake, side):
    from qlayer.dispatch import poll_once
    from qlayer.local.ledger import SqliteLedger

    job = client.run(PROGRAM, {"side": str(side)}, backend="fakeqpu_echo")
    assert job.result(timeout=60)["totals"] == [32]
    key = f"{job.job_id}/1"
    [provider_job] = fake.jobs()
    # The daemon saw QUEUED, RUNNING, QUEUED, RUNNING, DONE and recorded each change.
    states = [
        e["detail"]["state"]
        for e in job.timeline()
        if e["stage"] == "execute" and e["event"] in ("provider state", "device running")
    ]
    assert states == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "DONE"]
    # The provider now says DONE again, then RUNNING after DONE: the ledger keeps DONE.
    assert fake.status(provider_job["job_id"]).state == "DONE"
    assert fake.status(provider_job["job_id"]).state == "RUNNING"
    ledger = SqliteLedger(client.home.db)
    calls = len(fake.calls())
    assert poll_once(ledger, fake, key).state == "DONE"
    assert len(fake.calls()) == calls, "a final state is not polled again"
    ledger.close()
    # The completion delivered a second time (the step queued again, the daemon
    # restarted): the recorded outcome is reused, nothing runs or is fetched again.
    with helpers.db(client) as conn:
        conn.execute(
            "UPDATE steps SET state = 'waiting' WHERE job_id = ? AND seq = 1", (job.job_id,)
        )
    helpers.kill_daemon(client)
    client.up()
    wait_for(lambda: helpers.step_rows(client, job.job_id)[1]["state"] == "done", 60, "redelivery")
    assert job.status() == JobStatus.DONE
    assert len(fake.calls("result")) == 1
    assert ends(side, job.job_id, "measure") == 1
    assert len(events(job, "done")) == 1
    assert len(submits(fake, None)) == 1


@pytest.mark.slow
def test_completion_that_never_arrives_ends_in_error(client, fake, env):
    env.setenv("QLAYER_QPU_TIMEOUT_S", "2")
    job = client.run(PROGRAM, {}, backend="fakeqpu_never")
    started = time.monotonic()
    with pytest.raises(JobFailed, match="no completion from fakeqpu_never"):
        job.result(timeout=60)
    assert time.monotonic() - started < 30
    info = job.info()
    assert info["status"] == "ERROR" and info["error_type"] == "Timeout"
    assert "QLAYER_QPU_TIMEOUT_S" in info["message"] and "last state RUNNING" in info["message"]
    [provider_job] = fake.jobs()
    wait_for(lambda: fake.calls("cancel"), 30, "the provider job to be cancelled")
    assert [c["job_id"] for c in fake.calls("cancel")] == [provider_job["job_id"]]
    assert "no completion" in job.logs()


@pytest.mark.slow
def test_retryable_provider_error_backs_off_then_succeeds(client, fake):
    job = client.run(PROGRAM, {}, backend="fakeqpu_throttle")
    assert job.result(timeout=60)["totals"] == [32]
    assert [c["outcome"] for c in fake.calls("submit")] == ["429", "429", "ok"]
    assert len(fake.jobs()) == 1


@pytest.mark.slow
def test_fatal_provider_errors_surface_the_providers_message(client, fake):
    refused = client.run(PROGRAM, {}, backend="fakeqpu_fatal")
    failed = client.run(PROGRAM, {}, backend="fakeqpu_fail")
    with pytest.raises(JobFailed, match="uncoupled qubits"):
        refused.result(timeout=60)
    with pytest.raises(JobFailed, match="calibration drift"):
        failed.result(timeout=60)
    info = refused.info()
    assert FATAL_MESSAGE in info["message"] and info["error_type"] == "ProviderError"
    assert [c["outcome"] for c in fake.calls("submit") if c["backend"] == "fakeqpu_fatal"] == [
        "400"
    ], "a fatal error is not retried"
    info = failed.info()
    assert FAIL_MESSAGE in info["message"] and info["error_type"] == "ProviderError"
    assert info["provider_job_ids"] == [fake.jobs()[0]["job_id"]]


@pytest.mark.slow
def test_cancel_reaches_the_provider(client, fake, fake_dir, side):
    fake_dir.mkdir(parents=True, exist_ok=True)
    (fake_dir / "hold").touch()
    job = client.run(PROGRAM, {"side": str(side)}, backend="fakeqpu_ok")
    parent = client.run(PROGRAM, {"side": str(side), "fanout": 3}, backend="fakeqpu_ok")
    wait_for(lambda: events(job, "device running"), 60, "the provider job to run")
    wait_for(lambda: len(fake.jobs()) == 4, 60, "the children's provider jobs")
    assert job.cancel()
    with pytest.raises(JobCancelled):
        job.result(timeout=60)
    [mine] = [j["job_id"] for j in fake.jobs() if j["key"] == f"{job.job_id}/1"]
    wait_for(lambda: [c["job_id"] for c in fake.calls("cancel")] == [mine], 30, "the cancel")
    assert {j["job_id"]: j["state"] for j in fake.jobs()}[mine] == "CANCELLED"
    wait_for(lambda: events(job, "provider job cancelled"), 30, "the cancel's confirmation")

    # Cancelling a fan-out parent cancels its children's provider jobs.
    assert parent.cancel()
    with pytest.raises(JobCancelled):
        parent.result(timeout=60)
    children = {j["job_id"] for j in fake.jobs() if j["job_id"] != mine}
    wait_for(
        lambda: {c["job_id"] for c in fake.calls("cancel")} == {mine, *children}, 30, "cancels"
    )
    assert all(c.status() == JobStatus.CANCELLED for c in parent.children())
    assert not any(
        what == "start" and name == "measure" for what, _j, _s, name in helpers.read_side(side)
    )


@pytest.mark.slow
def test_burst_of_500_requests_is_queued_within_limits(client, fake, env):
    limit = 8
    env.setenv("QLAYER_FAKE_QPU_MAX_IN_FLIGHT", str(limit))  # the fake refuses a 9th
    limits = {"fakeqpu": {"max_in_flight": limit, "submits_per_s": 1000, "burst": 1000}}
    env.setenv("QLAYER_RATE_LIMITS", json.dumps(limits))
    started = time.monotonic()
    jobs = [client.run(PROGRAM, {"executes": 10, "shots": 8}) for _ in range(50)]

    def in_flight() -> int:
        return next(b["in_flight"] for b in client.backends() if b["name"] == "fakeqpu_ok")

    peak = wait_for(lambda: in_flight(), 60, "a request in flight")  # qlayer backends shows it
    assert 0 < peak <= limit
    for job in jobs:
        assert job.result(timeout=240)["totals"] == [8] * 10
    elapsed = time.monotonic() - started
    assert in_flight() == 0
    assert len(fake.jobs()) == 500
    assert set(jobs_per_key(fake).values()) == {1}
    assert not submits(fake, "rejected"), "the provider refused a submission"
    assert fake.peak_in_flight() == limit
    print(f"500 provider jobs through a cap of {limit} in {elapsed:.1f} s")
