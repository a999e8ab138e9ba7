"""Coalescing on a simulated device: requests queued behind a busy device share one run.

Each job prepares its own basis state |k>, so a result split back to the wrong job, or
cut at the wrong PUB, shows at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers

from qlayer.status import JobStatus

BASIS = (
    Path(__file__).resolve().parents[2] / "bench" / "programs" / "basis_state.py"
)  # shared with the benchmark


@pytest.fixture
def client(tmp_path):
    yield from helpers.local_client(tmp_path / "home")


def run_behind_a_busy_device(client, n: int, **arguments):
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
    rows = [r for r in helpers.device_rows(client) if r["job_id"] != blocker.job_id]
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
