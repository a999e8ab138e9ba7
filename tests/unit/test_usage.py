"""Usage accounting is derived from the timeline and the execute requests."""

from __future__ import annotations

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

from qlayer import codec
from qlayer.usage import add, from_timeline, shots_of


def request(primitive: str, pubs, shots=None, tier="local"):
    return {
        "primitive": primitive,
        "pubs": codec.encode(pubs),
        "shots": shots,
        "plan": {"tier": tier},
    }


def circuit() -> QuantumCircuit:
    qc = QuantumCircuit(1)
    qc.ry(Parameter("t"), 0)
    qc.measure_all()
    return qc


def test_sampler_shots_count_parameter_sets_and_pub_shots():
    pubs = [(circuit(), np.zeros((5, 1))), (circuit(), [0.1], 300)]
    assert shots_of(request("sampler", pubs, shots=100)) == 5 * 100 + 300
    assert shots_of(request("estimator", pubs)) == 0


def test_seconds_are_split_by_step_kind_and_tier():
    timeline = [
        {"at": 0.0, "seq": 0, "stage": "build", "event": "started"},
        {"at": 1.5, "seq": 0, "stage": "build", "event": "finished"},
        {"at": 1.6, "seq": 1, "stage": "execute", "event": "submitted"},
        {
            "at": 2.0,
            "seq": 1,
            "stage": "execute",
            "event": "device running",
            "detail": {"provider_job_id": "d1"},
        },
        {"at": 5.0, "seq": 1, "stage": "execute", "event": "finished"},
        {"at": 5.0, "seq": 2, "stage": "post", "event": "started"},
        {"at": 5.5, "seq": 2, "stage": "post", "event": "error"},
    ]
    used = from_timeline(
        timeline, {1: request("sampler", [circuit().assign_parameters([0.3])], 1000, "qpu")}
    )
    assert used["stage_seconds"] == 2.0
    assert used["qpu_seconds"] == 3.0
    assert used["simulator_seconds"] == 0.0
    assert used["shots"] == 1000
    assert used["provider_jobs"] == ["d1"]
    total = add(from_timeline([], {}), used)
    assert total["qpu_seconds"] == 3.0 and total["executes"] == 1


def test_qpu_seconds_reported_by_the_provider_win_over_wall_time():
    timeline = [
        {
            "at": 0.0,
            "seq": 1,
            "stage": "execute",
            "event": "device running",
            "detail": {"provider_job_id": "ibm-1", "state": "RUNNING"},
        },
        {
            "at": 100.0,
            "seq": 1,
            "stage": "execute",
            "event": "provider state",
            "detail": {"provider_job_id": "ibm-1", "state": "DONE", "usage_seconds": 4.2},
        },
        {"at": 100.5, "seq": 1, "stage": "execute", "event": "finished"},
    ]
    request = {"primitive": "estimator", "pubs": [], "plan": {"tier": "qpu"}}
    assert from_timeline(timeline, {1: request})["qpu_seconds"] == 4.2


def test_qpu_seconds_reported_count_when_no_poll_saw_the_job_running():
    # Queued at one poll, done at the next (a short job, or a coalesced request whose
    # share of the job's status came from the cache): no "device running" event.
    timeline = [
        {
            "at": 100.0,
            "seq": 1,
            "stage": "execute",
            "event": "provider state",
            "detail": {"provider_job_id": "ibm-1", "state": "DONE", "usage_seconds": 0.7},
        },
        {"at": 100.5, "seq": 1, "stage": "execute", "event": "finished"},
    ]
    request = {"primitive": "sampler", "pubs": [], "plan": {"tier": "qpu"}}
    assert from_timeline(timeline, {1: request})["qpu_seconds"] == 0.7


def test_a_request_that_never_ran_counts_no_shots():
    # Cancelled while its execute waited for the device: submitted, never running.
    timeline = [
        {"at": 0.0, "seq": 0, "stage": "build", "event": "started"},
        {"at": 1.0, "seq": 0, "stage": "build", "event": "finished"},
        {"at": 1.1, "seq": 1, "stage": "execute", "event": "submitted"},
        {"at": 2.0, "seq": None, "stage": None, "event": "cancelled"},
    ]
    requests = {1: request("sampler", [circuit().assign_parameters([0.3])], 1000, "qpu")}
    used = from_timeline(timeline, requests)
    assert used["shots"] == 0
    assert used["executes"] == 1
    assert from_timeline([], requests)["shots"] == 0
