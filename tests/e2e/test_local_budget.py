"""A budget stops a QAOA loop at the iteration that would cross it (issue 12, cost)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers

from qlayer.errors import JobFailed
from qlayer.status import JobStatus

QAOA = Path(__file__).resolve().parents[2] / "examples" / "qaoa_maxcut.py"
PER_REQUEST = 0.25  # dollars a request on the priced simulator costs


@pytest.fixture
def client(tmp_path, monkeypatch):
    # A priced stand-in for a QPU provider: every request on `aer` costs $0.25.
    monkeypatch.setenv("QLAYER_PRICES", json.dumps({"aer": {"per_task_usd": PER_REQUEST}}))
    yield from helpers.local_client(tmp_path / "home")


def ran_requests(job) -> set[int]:
    """Steps whose execute request reached the (simulated) provider and finished."""
    return {
        e["seq"]
        for e in job.timeline()
        if e["stage"] == "execute" and e["event"] in ("submitted", "finished")
    }


def test_the_budget_stops_the_loop_at_the_request_that_would_cross_it(client):
    job = client.run(QAOA, {"nodes": 4, "p": 1, "maxiter": 30, "shots": 200}, max_cost_usd=1.0)
    with pytest.raises(JobFailed, match=r"max_cost_usd=\$1\.0000"):
        job.result(timeout=300)
    info = job.info()
    assert job.status() == JobStatus.ERROR
    assert info["error_type"] == "BudgetExceeded"
    used = job.usage()
    # Four requests fit ($1.00); the fifth would have made it $1.25 and was never sent.
    assert used["cost_usd"] == pytest.approx(4 * PER_REQUEST)
    assert len(ran_requests(job)) == 4
    refused = [e for e in job.timeline() if e["event"] == "error"]
    assert refused and refused[-1]["stage"] == "execute"
    assert "would cost about $0.2500" in info["message"]
    assert "from $1.0000" in info["message"]


def test_a_run_without_a_budget_or_with_room_is_untouched(client):
    job = client.run(QAOA, {"nodes": 4, "p": 1, "maxiter": 2, "shots": 200}, max_cost_usd=100.0)
    job.result(timeout=300)
    assert job.status() == JobStatus.DONE
    used = job.usage()
    assert 0 < used["cost_usd"] <= 100.0
    assert used["cost_usd"] == pytest.approx(PER_REQUEST * len(ran_requests(job)))


def test_a_bad_budget_is_refused_at_submit(client):
    from qlayer.errors import WorkflowError

    with pytest.raises(WorkflowError, match="positive number of dollars"):
        client.run(QAOA, {"nodes": 4}, max_cost_usd=-1)


def test_estimate_prices_a_stand_in_run_for_the_target(client):
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "qlayer.cli",
            "estimate",
            str(QAOA),
            "--backend",
            "ibm_torino",
            "--arg",
            "nodes=4",
            "--arg",
            "p=1",
            "--arg",
            "maxiter=3",
            "--json",
            "--home",
            str(client.home.root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["status"] == "DONE" and found["stand_in"] == "aer"
    total = found["total"]
    assert total["requests"] == sum(row["requests"] for row in found["stages"]) >= 2
    # IBM bills QPU seconds: 2 s a request + 0.00025 s a shot, at $96 a minute.
    assert total["usd"] == pytest.approx(total["qpu_seconds"] * 1.6)
    assert total["qpu_seconds"] == pytest.approx(2.0 * total["requests"] + 0.00025 * total["shots"])
    assert any("ibm.com/quantum/pricing" in said for said in found["assumptions"])
