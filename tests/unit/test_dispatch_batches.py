"""Coalescing over a ledger (qlayer.dispatch.batches): compatible waiting requests share one
provider job, exactly once, each member getting its own results; a restart re-attaches,
a member's cancel never loses the others.

The provider is a FAKE queue service (the outer edge); the ledger, the store, the calls
and the split are ours. Each request prepares its own basis state, so a result handed to
the wrong member, or cut at the wrong PUB, shows.
"""

from __future__ import annotations

from typing import Any

import pytest
from qiskit import QuantumCircuit

from qlayer import keys as keys_
from qlayer.dispatch import MemoryLedger, batches, cancel_once, follow, submit_once
from qlayer.providers.base import AsyncProvider, ProviderJobStatus
from qlayer.request import ExecuteRequest, encode_request
from qlayer.store.local import FolderStore

BACKEND = "ibm_x"


class FakeService(AsyncProvider):
    """A FAKE QPU service: jobs found by their key tag, computed by Aer when asked."""

    name = "fake"

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []

    def backends(self):
        return []

    def target(self, backend):
        raise NotImplementedError

    def find_job(self, backend, idempotency_key):
        self.calls.append(("find_job", idempotency_key))
        return next((j for j, job in self.jobs.items() if job["key"] == idempotency_key), None)

    def submit(self, backend, request, *, idempotency_key):
        self.calls.append(("submit", idempotency_key))
        job_id = f"pj-{len(self.jobs) + 1}"
        self.jobs[job_id] = {"key": idempotency_key, "state": "QUEUED", "request": request}
        return job_id

    def status(self, provider_job_id):
        self.calls.append(("status", provider_job_id))
        return ProviderJobStatus(self.jobs[provider_job_id]["state"], usage_seconds=4.0)

    def result(self, provider_job_id):
        from qiskit_aer.primitives import SamplerV2

        self.calls.append(("result", provider_job_id))
        request = self.jobs[provider_job_id]["request"]
        return SamplerV2().run(request.pubs, shots=request.shots).result()

    def cancel(self, provider_job_id):
        self.calls.append(("cancel", provider_job_id))
        self.jobs[provider_job_id]["state"] = "CANCELLED"

    def count(self, kind: str) -> int:
        return sum(1 for call in self.calls if call[0] == kind)


def basis(k: int) -> QuantumCircuit:
    qc = QuantumCircuit(3)
    for qubit in range(3):
        if k >> qubit & 1:
            qc.x(qubit)
    qc.measure_all()
    return qc


@pytest.fixture
def setup(tmp_path):
    return MemoryLedger(), FolderStore(tmp_path / "artifacts"), FakeService()


def hold(ledger, store, n: int, *, pubs: int = 1, prefix: str = "job", **kw) -> list[str]:
    keys = []
    for k in range(n):
        request = ExecuteRequest(
            "sampler",
            [basis(k)] * pubs,
            BACKEND,
            "count",
            shots=kw.get("shots", 100),
            seed=kw.get("seed"),
        )
        request.options = {"mode": "job"}
        job = f"{prefix}{k}"
        key, request_key = f"{job}/1", f"jobs/{job}/stages/1-execute/request.json"
        store.put_json(request_key, encode_request(request, None, where="test"))
        ledger.hold(key, BACKEND, request_key)
        keys.append(key)
    return keys


def test_compatible_waiting_requests_share_one_provider_job_and_get_their_own_results(setup):
    ledger, store, service = setup
    keys = hold(ledger, store, 5)
    [batch] = batches.form(ledger, store, ledger.entries_in(["WAITING"]))
    assert [batches.batch_of(ledger.get(k)) for k in keys] == [batch] * 5
    shares = batches.Shares(service, ledger, store, status_ttl_s=60)
    assert ledger.take_slot(batch, 1)
    job_id, given = batches.submit_batch(ledger, shares, store, batch)
    assert given == keys and service.count("submit") == 1
    assert len(service.jobs[job_id]["request"].pubs) == 5
    for key in keys:  # while it runs: one status call answers every member
        status, decision = follow(ledger, shares, store, key)
        assert status.state == "QUEUED" and decision is None
    assert service.count("status") == 1
    service.jobs[job_id]["state"] = "DONE"
    shares.status_ttl_s = 0.0
    for key in keys:
        status, decision = follow(ledger, shares, store, key)
        assert status.state == "DONE" and status.usage_seconds == pytest.approx(4.0 / 5)
        assert decision is not None and decision.kind == "next"
    assert service.count("result") == 1  # fetched once, split five ways
    assert ledger.get(batch).state == "DONE" and not ledger.get(batch).slot  # slot back
    for k in range(5):
        result = store.get_value(keys_.execute_result(f"job{k}", 1))
        assert result.metadata["coalesced"] == 5
        [pub] = result
        assert pub.data.meas.get_counts() == {format(k, "03b"): 100}


def test_seeded_and_unlike_requests_do_not_merge(setup):
    ledger, store, _ = setup
    hold(ledger, store, 3, seed=7)
    assert batches.form(ledger, store, ledger.entries_in(["WAITING"])) == []
    assert {e.state for e in ledger.entries_in(["WAITING"])} == {"WAITING"}


def test_a_provider_job_of_one_circuit_merges_nothing(setup):
    ledger, store, _ = setup
    hold(ledger, store, 3)
    # Braket's limits say one PUB per task (RateLimits.max_pubs = 1)
    assert batches.form(ledger, store, ledger.entries_in(["WAITING"]), max_pubs=1) == []
    assert [e.state for e in ledger.entries_in(["WAITING"])] == ["WAITING"] * 3
    assert batches.form(ledger, store, ledger.entries_in(["WAITING"]), max_pubs=2) != []


def test_a_restart_reattaches_to_the_one_provider_job(setup):
    ledger, store, service = setup
    keys = hold(ledger, store, 3)
    [batch] = batches.form(ledger, store, ledger.entries_in(["WAITING"]))
    shares = batches.Shares(service, ledger, store)
    # The dispatcher dies after the provider accepted the batch's job, before any member
    # got its share: the batch entry has the id, the members only their mark.
    job_id = submit_once(ledger, shares, batch, BACKEND, decode(store, batch))
    assert all(ledger.get(k).provider_job_id is None for k in keys)
    again, given = batches.submit_batch(ledger, shares, store, batch)
    assert again == job_id and given == keys and service.count("submit") == 1
    assert batches.submit_batch(ledger, shares, store, batch) == (job_id, [])  # nothing new


def test_a_claim_that_died_mid_submission_finds_the_job_by_the_batch_key(setup):
    ledger, store, service = setup
    hold(ledger, store, 2)
    [batch] = batches.form(ledger, store, ledger.entries_in(["WAITING"]))
    shares = batches.Shares(service, ledger, store)
    service.submit(BACKEND, decode(store, batch), idempotency_key=batch)  # accepted, unrecorded
    ledger.claim(batch, BACKEND, "", owner="dead", lease_s=0)  # its claim, lease passed
    job_id, _ = batches.submit_batch(ledger, shares, store, batch)
    assert job_id == "pj-1" and service.count("submit") == 1
    assert ("find_job", batch) in service.calls


def test_cancelling_one_member_keeps_the_job_for_the_others(setup):
    ledger, store, service = setup
    keys = hold(ledger, store, 3)
    [batch] = batches.form(ledger, store, ledger.entries_in(["WAITING"]))
    shares = batches.Shares(service, ledger, store, status_ttl_s=0)
    job_id, _ = batches.submit_batch(ledger, shares, store, batch)
    cancel_once(ledger, shares, keys[1])
    assert ledger.get(keys[1]).state == "CANCELLED"
    assert service.count("cancel") == 0 and service.jobs[job_id]["state"] == "QUEUED"
    service.jobs[job_id]["state"] = "DONE"
    for key in (keys[0], keys[2]):
        assert follow(ledger, shares, store, key)[1].kind == "next"
    # the last live members cancelled: only then does the provider job go
    keys = hold(ledger, store, 2, prefix="late")
    [batch] = batches.form(ledger, store, ledger.entries_in(["WAITING"]))
    job_id, _ = batches.submit_batch(ledger, shares, store, batch)
    cancel_once(ledger, shares, keys[0])
    assert service.jobs[job_id]["state"] == "QUEUED"
    cancel_once(ledger, shares, keys[1])
    assert service.jobs[job_id]["state"] == "CANCELLED" and ledger.get(batch).state == "CANCELLED"


def test_members_cancelled_before_their_turn_send_nothing(setup):
    ledger, store, service = setup
    keys = hold(ledger, store, 2)
    [batch] = batches.form(ledger, store, ledger.entries_in(["WAITING"]))
    shares = batches.Shares(service, ledger, store)
    for key in keys:
        cancel_once(ledger, shares, key)
    assert service.count("find_job") == 0  # a marked member is never a job of its own
    assert batches.submit_batch(ledger, shares, store, batch) is None
    assert service.count("submit") == 0 and ledger.get(batch).state == "CANCELLED"


def decode(store, batch):
    from qlayer.request import decode_request

    return decode_request(store.get_json(ledger_request_key(batch)))


def ledger_request_key(batch: str) -> str:
    return batches.manifest_key(batch).replace("manifest.json", "request.json")


class DiesBeforeMarking(MemoryLedger):
    """The forming process dies after the batch's entry, before it marks its members."""

    def set_state(self, key, state, message=None):
        if message and message.startswith(batches.MARK):
            raise SystemExit("dispatcher killed while forming a batch")
        return super().set_state(key, state, message)


def test_members_never_marked_go_alone_and_their_batch_is_never_sent(tmp_path):
    now = [1000.0]
    ledger = DiesBeforeMarking(clock=lambda: now[0])
    store, service = FolderStore(tmp_path / "a"), FakeService()
    keys = hold(ledger, store, 2)
    with pytest.raises(SystemExit):
        batches.form(ledger, store, ledger.entries_in(["WAITING"]), owner="dead")
    [batch] = [e.key for e in ledger.entries_in(["WAITING"]) if batches.is_batch(e.key)]
    shares = batches.Shares(service, ledger, store)
    now[0] += 301  # the dead claims' leases pass: each goes alone, its own provider job
    for key in keys:
        request = ExecuteRequest("sampler", [basis(0)], BACKEND, "count", shots=10)
        submit_once(ledger, shares, key, BACKEND, request)
    assert batches.submit_batch(ledger, shares, store, batch) is None
    assert [k for _, k in service.calls if _ == "submit"] == keys
    assert ledger.get(batch).state == "CANCELLED"
