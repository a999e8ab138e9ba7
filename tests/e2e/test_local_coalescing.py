"""Coalescing on a simulated device: requests queued behind a busy device share one run.

Each job prepares its own basis state |k>, so a result split back to the wrong job, or
cut at the wrong PUB, shows at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers
from helpers import wait_for

from qlayer.status import JobStatus

BASIS = (
    Path(__file__).resolve().parents[2] / "bench" / "programs" / "basis_state.py"
)  # shared with the benchmark


@pytest.fixture
def client(tmp_path):
    yield from helpers.local_client(tmp_path / "home")


def run_behind_a_busy_device(client, n: int, **arguments):
    # Warm workers first: a cold worker's first stage (seconds) could outlast the blocker.
    helpers.warm_workers(client, BASIS, {"k": 0, "shots": 10, "seed": 2})
    # A seeded job never merges: it runs alone and keeps the device busy for seconds.
    blocker = client.run(BASIS, {"k": 1, "shots": 2_000_000, "seed": 1})
    helpers.wait_device_running(client, blocker.job_id)
    jobs = [client.run(BASIS, {"k": k, "shots": 300} | arguments) for k in range(n)]
    return blocker, jobs


@pytest.mark.slow
def test_queued_requests_share_one_device_run_and_get_their_own_results(client):
    blocker, jobs = run_behind_a_busy_device(client, 12)
    assert blocker.result(timeout=180)["coalesced"] == 1
    coalesced = []
    for k, job in enumerate(jobs):
        result = job.result(timeout=180)
        counts = result["counts"]
        assert sum(counts.values()) == 300
        expected = format(k, "05b")
        assert max(counts, key=counts.get) == expected, (k, counts)  # noisy, but |k> dominates
        coalesced.append(result["coalesced"])
    # all twelve were queued behind the blocker, so they ran as one device job...
    assert coalesced == [12] * 12
    # ...and each is still its own provider job in the ledger, DONE, once
    mine = {job.job_id for job in jobs}
    rows = [r for r in helpers.device_rows(client) if r["job_id"] in mine]
    assert len(rows) == 12 and {r["status"] for r in rows} == {"DONE"}
    running = [e for e in jobs[0].timeline() if e["event"] == "device running"]
    assert len(running) == 1 and len(running[0]["detail"]["coalesced_with"]) == 11


@pytest.mark.slow
def test_seeded_requests_never_share_a_run(client):
    blocker, jobs = run_behind_a_busy_device(client, 3, seed=5)
    blocker.result(timeout=180)
    assert [job.result(timeout=180)["coalesced"] for job in jobs] == [1, 1, 1]


@pytest.mark.slow
def test_cancelling_one_member_mid_run_requeues_the_others(client):
    blocker, jobs = run_behind_a_busy_device(client, 4, shots=1_000_000)  # a long merged run
    blocker.result(timeout=180)
    helpers.wait_device_running(client, jobs[0].job_id)
    assert jobs[1].cancel() is True
    assert jobs[1].wait(timeout=60).status == JobStatus.CANCELLED
    results = [jobs[i].result(timeout=180) for i in (0, 2, 3)]
    # the merged run was stopped with the cancelled job; the other three ran again, together
    assert [r["coalesced"] for r in results] == [3, 3, 3]
    assert [sum(r["counts"].values()) for r in results] == [1_000_000] * 3
    rows = {r["job_id"]: r["status"] for r in helpers.device_rows(client)}
    assert rows[jobs[1].job_id] == "CANCELLED"


# -- a remote QPU service: the fake IBM Quantum Platform, through the real runtime client ----
@pytest.fixture
def ibm(tmp_path, monkeypatch):
    """The fake IBM service on 127.0.0.1, the daemon's account on it (the environment a user
    sets: QISKIT_IBM_*), one provider job at a time, fast polls."""
    from tests.fakes.ibm_runtime import serve_in_thread

    with serve_in_thread(tmp_path / "ibm") as fake:
        fake.ideal()  # |k> exactly: a result split to the wrong job shows
        for name, value in fake.client_env().items():
            monkeypatch.setenv(name, value)
        creds = fake.credentials()
        monkeypatch.setenv("QISKIT_IBM_TOKEN", creds["token"])
        monkeypatch.setenv("QISKIT_IBM_INSTANCE", creds["instance"])
        monkeypatch.setenv("QISKIT_IBM_URL", creds["url"])
        monkeypatch.setenv("QISKIT_IBM_CHANNEL", creds["channel"])
        limits = {"ibm": {"max_in_flight": 1, "submits_per_s": 1000, "burst": 1000}}
        monkeypatch.setenv("QLAYER_RATE_LIMITS", json.dumps(limits))
        monkeypatch.setenv("QLAYER_QPU_POLL_S", "0.1")
        yield fake


@pytest.fixture
def ibm_client(ibm, tmp_path):
    yield from helpers.local_client(tmp_path / "home")


def runtime_jobs(fake) -> list[dict]:
    return fake.store.jobs(descending=False)[0]


def batch_jobs(fake) -> list[dict]:
    return [j for j in runtime_jobs(fake) if any(t.startswith("coalesced/") for t in j["tags"])]


def behind_a_held_runtime_job(client, fake, n: int, *, hold: int = 1, **arguments):
    """A seeded job (it never merges) holds the device's one slot, its runtime job held
    queued; ``n`` small unseeded jobs queue behind it."""
    fake.hold_next(count=hold)
    blocker = client.run(BASIS, {"k": 1, "shots": 100, "seed": 1}, backend="ibm_brisbane")
    wait_for(lambda: fake.store.jobs(tags=[f"{blocker.job_id}/1"])[0], 120, "the blocker's job")
    jobs = [
        client.run(BASIS, {"k": k, "shots": 200} | arguments, backend="ibm_brisbane")
        for k in range(n)
    ]
    wait_for(lambda: all(j.status() == JobStatus.WAITING_FOR_QPU for j in jobs), 120, "the queue")
    wait_for(lambda: len(ledger_rows(client, "WAITING")) == n, 60, "every request held back")
    return blocker, jobs


def ledger_rows(client, state: str | None = None) -> list[dict]:
    with helpers.db(client) as conn:
        rows = conn.execute("SELECT * FROM provider_ledger ORDER BY created_at").fetchall()
    return [dict(r) for r in rows if state is None or r["state"] == state]


def release(fake, job: dict) -> None:
    fake.release(job["id"])


@pytest.mark.slow
def test_requests_queued_for_a_remote_qpu_share_one_provider_job(ibm_client, ibm):
    blocker, jobs = behind_a_held_runtime_job(ibm_client, ibm, 6)
    [held] = runtime_jobs(ibm)
    release(ibm, held)
    assert blocker.result(timeout=120)["coalesced"] == 1
    for k, job in enumerate(jobs):
        result = job.result(timeout=120)
        assert result["counts"] == {format(k, "05b"): 200}, (k, result)  # its own PUB
        assert result["coalesced"] == 6
    # two runtime jobs in all: the blocker's and the six requests' one
    assert ibm.job_creations() == 2 and len(batch_jobs(ibm)) == 1
    rows = ledger_rows(ibm_client)
    members = [r for r in rows if r["key"].endswith("/1") and r["job_id"] != blocker.job_id]
    assert len(members) == 6 and {r["state"] for r in members} == {"DONE"}
    [submitted] = [
        e for e in jobs[0].timeline() if e["event"] == "submitted" and e["stage"] == "execute"
    ]
    assert submitted["detail"]["coalesced"]["requests"] == 6
    assert submitted["detail"]["provider_job_id"] == batch_jobs(ibm)[0]["id"]
    # each request's usage is its part of the shared job's QPU seconds
    seconds = [job.usage()["qpu_seconds"] for job in jobs]
    assert sum(seconds) == pytest.approx(blocker.usage()["qpu_seconds"], abs=1e-3)


@pytest.mark.slow
def test_a_restart_reattaches_to_the_shared_provider_job(ibm_client, ibm):
    _blocker, jobs = behind_a_held_runtime_job(ibm_client, ibm, 3, hold=2)
    release(ibm, runtime_jobs(ibm)[0])
    wait_for(lambda: batch_jobs(ibm), 120, "the shared runtime job")
    helpers.kill_daemon(ibm_client)
    ibm_client.up()
    [shared] = batch_jobs(ibm)
    release(ibm, shared)
    for k, job in enumerate(jobs):
        assert job.result(timeout=120)["counts"] == {format(k, "05b"): 200}
    assert ibm.job_creations() == 2, "the restarted daemon submitted again"


@pytest.mark.slow
def test_cancelling_one_member_keeps_the_shared_job_for_the_others(ibm_client, ibm):
    _blocker, jobs = behind_a_held_runtime_job(ibm_client, ibm, 3, hold=2)
    release(ibm, runtime_jobs(ibm)[0])
    wait_for(lambda: batch_jobs(ibm), 120, "the shared runtime job")
    wait_for(
        lambda: all(any(e["event"] == "submitted" for e in job.timeline()) for job in jobs),
        60,
        "every member's share",
    )
    assert jobs[1].cancel() is True
    assert jobs[1].wait(timeout=60).status == JobStatus.CANCELLED
    [shared] = batch_jobs(ibm)
    release(ibm, shared)
    for k in (0, 2):
        assert jobs[k].result(timeout=120)["counts"] == {format(k, "05b"): 200}
    assert ibm.store.job(shared["id"])["status"] == "Completed"
    assert not ibm.calls("POST", f"/jobs/{shared['id']}/cancel")
