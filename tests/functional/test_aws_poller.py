"""The AWS poller on its own, against moto in this process, with the FAKE QPU service
(tests/e2e/programs/fake_qpu.py) as the provider: what one invocation follows.

The whole path (schedule, dispatcher, state machine) runs in tests/functional/test_aws_qpu.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qlayer.aws.client import prepare_job
from qlayer.aws.poller import BACKLOG_LEASE, poller
from qlayer.request import ExecuteRequest, encode_request

pytestmark = pytest.mark.moto

FAKE_QPU_CODE = Path(__file__).resolve().parents[1] / "e2e" / "programs"
TINY = Path(__file__).parent / "programs" / "aws_tiny.py"


@pytest.fixture
def fake(aws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from qlayer.providers import registry

    monkeypatch.setenv("QLAYER_PROVIDERS", "fakeqpu=fake_qpu:FakeQpu")
    monkeypatch.setenv("QLAYER_FAKE_QPU_DIR", str(tmp_path / "fake-qpu"))
    monkeypatch.syspath_prepend(str(FAKE_QPU_CODE))
    from fake_qpu import FakeQpu

    # plugins are loaded once per QLAYER_PROVIDERS value: an earlier module's FakeQpu
    # (another state folder) must not answer here, nor this one after
    registry._plugins_for.cache_clear()
    yield FakeQpu(tmp_path / "fake-qpu")
    registry._plugins_for.cache_clear()


def submitted(svc: Any, fake: Any, backend: str) -> tuple[str, str]:
    """A request submitted to ``backend`` (as a dispatcher leaves it); (key, provider job)."""
    from qiskit import QuantumCircuit

    job_id = prepare_job(svc, TINY, {"shots": 8})
    circuit = QuantumCircuit(1)
    circuit.measure_all()
    request = ExecuteRequest("sampler", [circuit], backend, "tally", shots=8)
    request_key = f"jobs/{job_id}/stages/0001-execute/request.json"
    svc.store.put_json(request_key, encode_request(request, {"shots": 8}, where="a test"))
    key = f"{job_id}/1"
    svc.ledger.claim(key, backend, request_key)
    provider_job_id = fake.submit(backend, request, idempotency_key=key)
    svc.ledger.record_submission(key, provider_job_id)
    return key, provider_job_id


def statuses(fake: Any, provider_job_id: str) -> int:
    return len([c for c in fake.calls("status") if c["job_id"] == provider_job_id])


def test_a_poller_leaves_in_flight_requests_to_the_one_following_a_backlog(
    aws: Any, fake: Any
) -> None:
    """While another invocation holds the backlog lease (it follows the in-flight requests
    every second), a scheduled run does not poll them too; once the lease is free, it does."""
    key, provider_job_id = submitted(aws, fake, "fakeqpu_never")
    assert aws.ledger.take_lease(BACKLOG_LEASE, "another poller", 300)
    counts = poller({}, aws)
    assert counts["backlog_followed_elsewhere"] == 1
    assert statuses(fake, provider_job_id) == 0
    aws.ledger.drop_lease(BACKLOG_LEASE, "another poller")
    counts = poller({}, aws)
    assert "backlog_followed_elsewhere" not in counts
    assert statuses(fake, provider_job_id) == 1
    assert aws.ledger.get(key).state == "QUEUED"  # its first poll, recorded


def test_one_drain_of_a_backend_at_a_time(
    aws: Any, fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another invocation holds the backend's drain lease, a drain waits, then leaves
    the waiting request to it (two drains admitting one request at once left it submitted
    with no in-flight slot counted: a fourth IBM job in the cloud box's CI run); once the
    lease is free, the drain submits it."""
    from qiskit import QuantumCircuit

    from qlayer.aws import qpu

    monkeypatch.setattr(qpu, "DRAIN_LEASE_WAIT_S", 0.3)
    job_id = prepare_job(aws, TINY, {"shots": 8})
    circuit = QuantumCircuit(1)
    circuit.measure_all()
    request = ExecuteRequest("sampler", [circuit], "fakeqpu_ok", "tally", shots=8)
    request_key = f"jobs/{job_id}/stages/0001-execute/request.json"
    aws.store.put_json(request_key, encode_request(request, {"shots": 8}, where="a test"))
    key = f"{job_id}/1"
    aws.ledger.hold(key, "fakeqpu_ok", request_key)
    lease = qpu.DRAIN_LEASE + "fakeqpu_ok"
    assert aws.ledger.take_lease(lease, "another dispatcher", 300)
    assert qpu.drain(aws, "fakeqpu_ok") == 0
    assert aws.ledger.get(key).state == "WAITING" and not fake.calls("submit")
    aws.ledger.drop_lease(lease, "another dispatcher")
    assert qpu.drain(aws, "fakeqpu_ok") == 1
    entry = aws.ledger.get(key)
    assert entry.provider_job_id and entry.slot and len(fake.calls("submit")) == 1
    assert aws.ledger.lease_holder(lease) is None  # given back when the drain ended
