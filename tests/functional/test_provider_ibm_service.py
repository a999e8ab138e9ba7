"""IbmProvider over the real qiskit-ibm-runtime client, against a fake IBM service.

The fake (tests/fakes/ibm_runtime) stands where IBM's platform stands: IAM, the
instance lookup and the Qiskit Runtime REST API, on 127.0.0.1. Nothing of ours or of
the client is replaced: ``IbmProvider`` builds a real ``QiskitRuntimeService`` from
the credentials its token provider returns, and every test runs under a guard that
fails it if anything connects to, or looks up, an address other than 127.0.0.1.
Results are computed by the fake with qiskit-aer, with FakeBrisbane's noise unless a
test asks for an ideal device.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.primitives import PrimitiveResult
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import Target
from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

from qlayer.providers.base import ProviderError
from qlayer.providers.ibm import IbmProvider
from qlayer.request import ExecuteRequest
from tests.fakes.ibm_runtime import FakeIbmRuntime, serve_in_process, serve_in_thread
from tests.fakes.loopback import loopback_only

BACKEND = "ibm_brisbane"
REPO = Path(__file__).resolve().parents[2]

# A second process: its own IbmProvider submits under a key and prints the job id.
_CHILD = """
import json, sys
from qiskit import QuantumCircuit
from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager
from qlayer.providers.ibm import IbmProvider
from qlayer.request import ExecuteRequest
from tests.fakes.loopback import loopback_only

creds, key = json.loads(sys.argv[1]), sys.argv[2]
with loopback_only() as refused:
    provider = IbmProvider(token_provider=lambda: creds)
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure_all()
    pm = generate_preset_pass_manager(optimization_level=1, target=provider.target("ibm_brisbane"))
    request = ExecuteRequest("sampler", [pm.run(bell)], "ibm_brisbane", "then", shots=100)
    print(json.dumps({"job": provider.submit("ibm_brisbane", request, idempotency_key=key),
                      "refused": refused}))
"""


@pytest.fixture
def refused() -> Iterator[list[str]]:
    """The loopback guard; the test fails if anything tried to leave 127.0.0.1."""
    with loopback_only() as attempts:
        yield attempts
    assert attempts == [], f"connections off loopback were attempted: {attempts}"


@pytest.fixture
def fake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: list[str]
) -> Iterator[FakeIbmRuntime]:
    """The fake service in a thread, and the client's environment pointed at it."""
    with serve_in_thread(tmp_path / "ibm") as service:
        for name, value in service.client_env().items():
            monkeypatch.setenv(name, value)
        yield service


def provider_for(fake: FakeIbmRuntime, **kwargs: object) -> IbmProvider:
    """A fresh IbmProvider (its own QiskitRuntimeService) on the fake's account."""
    return IbmProvider(token_provider=fake.credentials, **kwargs)  # type: ignore[arg-type]


def bell_request(provider: IbmProvider, shots: int = 2000) -> ExecuteRequest:
    """A Bell-state sampler request, transpiled for the device's real Target."""
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure_all()
    pm = generate_preset_pass_manager(
        optimization_level=1, target=provider.target(BACKEND), seed_transpiler=7
    )
    return ExecuteRequest("sampler", [pm.run(bell)], BACKEND, "then", shots=shots)


def run_to_end(provider: IbmProvider, job_id: str, reads: int = 10) -> list[str]:
    """The states seen over successive status reads, up to the first final one."""
    seen = []
    for _ in range(reads):
        seen.append(provider.status(job_id).state)
        if seen[-1] in ("DONE", "ERROR", "CANCELLED"):
            break
    return seen


def test_the_guard_refuses_and_records_other_addresses(refused: list[str]) -> None:
    with pytest.raises(OSError):
        socket.create_connection(("192.0.2.1", 443), timeout=0.5)
    with pytest.raises(OSError):
        socket.getaddrinfo("quantum.cloud.ibm.com", 443)
    assert refused == ["resolve '192.0.2.1'", "resolve 'quantum.cloud.ibm.com'"]
    with socket.socket() as sock, pytest.raises(OSError):
        sock.connect(("192.0.2.1", 443))
    assert refused[-1] == "connect ('192.0.2.1', 443)"
    refused.clear()  # the guard worked; let the fixture pass


def test_sampler_bell_goes_queued_running_done(fake: FakeIbmRuntime) -> None:
    provider = provider_for(fake)
    assert isinstance(provider.target(BACKEND), Target)
    assert provider.target(BACKEND).num_qubits == 127
    job_id = provider.submit(BACKEND, bell_request(provider), idempotency_key="job-1/exec-1")

    first = provider.status(job_id)
    assert (first.state, first.queue_position) == ("QUEUED", 1)
    assert provider.status(job_id).state == "RUNNING"
    done = provider.status(job_id)
    assert (done.state, done.usage_seconds) == ("DONE", 2.0)

    result = provider.result(job_id)
    assert isinstance(result, PrimitiveResult) and len(result) == 1
    bits = result[0].data.meas
    assert (bits.num_shots, bits.num_bits) == (2000, 2)
    counts = bits.get_counts()
    assert counts.get("00", 0) + counts.get("11", 0) > 0.9 * 2000  # noisy, but a Bell state
    assert 0.4 < counts.get("00", 0) / 2000 < 0.6

    # Every runtime call carried the IAM bearer token the fake issued.
    exchanges = fake.calls("POST", "/iam/identity/token")
    assert exchanges and {c.status for c in exchanges} == {200}
    assert {c.auth for c in fake.calls(path="/backends*")} == {"bearer"}
    assert fake.job_creations() == 1


def test_estimator_results_have_the_broadcast_shape(fake: FakeIbmRuntime) -> None:
    fake.ideal()
    provider = provider_for(fake)
    theta = Parameter("θ")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    pm = generate_preset_pass_manager(
        optimization_level=1, target=provider.target(BACKEND), seed_transpiler=7
    )
    isa = pm.run(circuit)
    observables = [
        [SparsePauliOp("ZZ").apply_layout(isa.layout)],
        [SparsePauliOp("XX").apply_layout(isa.layout)],
    ]  # shape (2, 1)
    thetas = np.array([[0.0], [np.pi / 2], [np.pi / 3]])  # shape (3, 1): three bindings
    request = ExecuteRequest(
        "estimator", [(isa, observables, thetas)], BACKEND, "then", precision=0.01
    )
    job_id = provider.submit(BACKEND, request, idempotency_key="job-2/exec-1")
    assert run_to_end(provider, job_id)[-1] == "DONE"

    data = provider.result(job_id)[0].data
    assert data.evs.shape == data.stds.shape == (2, 3)
    expected = np.array([[1.0, 1.0, 1.0], np.sin(thetas[:, 0])])  # <ZZ> = 1, <XX> = sin θ
    assert np.allclose(data.evs, expected, atol=0.06)
    # The client-side estimator reports the standard error of its samples: at most the
    # precision asked for (its shots were chosen for it; 0 where the value is exact).
    assert ((data.stds >= 0) & (data.stds <= 0.0125)).all()


def test_find_job_by_tag_from_a_fresh_provider(fake: FakeIbmRuntime) -> None:
    submitter = provider_for(fake)
    job_id = submitter.submit(BACKEND, bell_request(submitter), idempotency_key="job-3/exec-1")
    other = provider_for(fake)
    assert other.find_job(BACKEND, "job-3/exec-1") == job_id
    assert other.find_job(BACKEND, "job-3/exec-2") is None
    assert other.find_job("ibm_torino", "job-3/exec-1") is None
    query = fake.calls("GET", "/jobs")[-1].query
    assert "tags=job-3%2Fexec-1" in query and "backend=ibm_torino" in query


def test_one_provider_job_per_key_across_providers(fake: FakeIbmRuntime) -> None:
    first, second = provider_for(fake), provider_for(fake)
    job_id = first.submit(BACKEND, bell_request(first), idempotency_key="job-4/exec-1")
    again = second.submit(BACKEND, bell_request(second), idempotency_key="job-4/exec-1")
    assert again == job_id
    assert fake.job_creations() == 1
    other = second.submit(BACKEND, bell_request(second), idempotency_key="job-4/exec-2")
    assert other != job_id and fake.job_creations() == 2


def test_one_provider_job_per_key_across_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: list[str]
) -> None:
    # The fake itself runs as a process here, so three processes share its state.
    with serve_in_process(tmp_path / "ibm") as service:
        env = {**os.environ, **service.client_env()}
        for name, value in service.client_env().items():
            monkeypatch.setenv(name, value)
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(service.credentials()), "job-5/exec-1"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, child.stderr[-2000:]
        reply = json.loads(child.stdout.strip().splitlines()[-1])
        assert reply["refused"] == []
        here = provider_for(service)
        job_id = here.submit(BACKEND, bell_request(here), idempotency_key="job-5/exec-1")
        assert job_id == reply["job"]
        assert service.job_creations() == 1
        assert service.store.job(reply["job"])["tags"] == ["job-5/exec-1"]


@pytest.mark.parametrize(("status", "retryable"), [(429, True), (400, False)])
def test_rejected_submission_is_classified(
    fake: FakeIbmRuntime, status: int, retryable: bool
) -> None:
    provider = provider_for(fake)
    request = bell_request(provider)
    fake.reject_next(status=status, message="refused by the fake", backend=BACKEND)
    with pytest.raises(ProviderError) as caught:
        provider.submit(BACKEND, request, idempotency_key="job-6/exec-1")
    assert caught.value.retryable is retryable
    assert f"{status} Client Error" in str(caught.value)
    assert fake.job_creations() == 0
    # The rule was for one creation only: the retry goes through.
    assert provider.submit(BACKEND, request, idempotency_key="job-6/exec-1")
    assert fake.job_creations() == 1


def test_wrong_api_key_is_not_retryable(fake: FakeIbmRuntime) -> None:
    provider = IbmProvider(token_provider=lambda: {**fake.credentials(), "token": "wrong"})
    with pytest.raises(ProviderError) as caught:
        provider.target(BACKEND)
    assert caught.value.retryable is False
    assert [c.status for c in fake.calls("POST", "/iam/identity/token")] == [400]


def test_failed_job_message_reaches_status(fake: FakeIbmRuntime) -> None:
    fake.fail_next("qubit 3 left calibration", backend=BACKEND)
    provider = provider_for(fake)
    job_id = provider.submit(BACKEND, bell_request(provider), idempotency_key="job-7/exec-1")
    assert run_to_end(provider, job_id) == ["QUEUED", "RUNNING", "ERROR"]
    status = provider_for(fake).status(job_id)  # a fresh process's view, too
    assert status.state == "ERROR"
    assert "qubit 3 left calibration" in (status.message or "")
    with pytest.raises(ProviderError, match="qubit 3 left calibration"):
        provider.result(job_id)


def test_held_job_waits_until_released(fake: FakeIbmRuntime) -> None:
    fake.ideal()
    fake.hold_next("Running")
    provider = provider_for(fake)
    job_id = provider.submit(BACKEND, bell_request(provider, 100), idempotency_key="job-8/e-1")
    assert run_to_end(provider, job_id, reads=5) == ["QUEUED"] + ["RUNNING"] * 4
    fake.release(job_id)
    assert run_to_end(provider, job_id)[-1] == "DONE"
    counts = provider.result(job_id)[0].data.meas.get_counts()
    assert set(counts) <= {"00", "11"}  # ideal device: nothing else


def test_cancel_reaches_the_service(fake: FakeIbmRuntime) -> None:
    fake.hold_next("Queued")
    provider = provider_for(fake)
    job_id = provider.submit(BACKEND, bell_request(provider), idempotency_key="job-9/exec-1")
    assert provider.status(job_id).state == "QUEUED"
    provider.cancel(job_id)
    assert [c.status for c in fake.calls("POST", f"/jobs/{job_id}/cancel")] == [204]
    assert fake.store.job(job_id)["status"] == "Cancelled"
    assert provider_for(fake).status(job_id).state == "CANCELLED"
    provider_for(fake).cancel(job_id)  # already ended: no second cancel call
    assert len(fake.calls("POST", f"/jobs/{job_id}/cancel")) == 1


def test_batch_mode_shares_one_batch_across_providers(fake: FakeIbmRuntime) -> None:
    first = provider_for(fake, mode="batch")
    request = bell_request(first, 100)
    one = first.submit(BACKEND, request, idempotency_key="job-10/exec-1")
    two = first.submit(BACKEND, request, idempotency_key="job-10/exec-2")
    second = provider_for(fake, mode="batch")  # another process: finds the batch by tag
    three = second.submit(BACKEND, request, idempotency_key="job-10/exec-3")
    sessions = {fake.store.job(job)["session_id"] for job in (one, two, three)}
    assert len(sessions) == 1 and None not in sessions
    assert len(fake.calls("POST", "/sessions")) == 1
    assert fake.store.session(sessions.pop())["mode"] == "batch"
    first.close_sessions()
    assert len(fake.calls("PATCH", "/sessions/*")) == 1


def test_control_endpoint_and_the_clients_own_retry_of_5xx(fake: FakeIbmRuntime) -> None:
    # Knobs over HTTP, as another process would turn them.
    answer = requests.post(
        fake.url + "/_fake/rules", json={"kind": "reject", "status": 503, "count": 1}, timeout=5
    )
    assert answer.status_code == 200
    provider = provider_for(fake)
    job_id = provider.submit(BACKEND, bell_request(provider), idempotency_key="job-11/exec-1")
    # qiskit-ibm-runtime itself retries POST /jobs on 5xx: the caller never saw the 503.
    assert [c.status for c in fake.calls("POST", "/jobs")] == [503, 200]
    assert fake.job_creations() == 1
    calls = requests.get(fake.url + "/_fake/calls", params={"path": "/_fake/*"}, timeout=5).json()
    assert [(call["method"], call["status"]) for call in calls] == [("POST", 200)]  # not itself
    assert fake.store.job(job_id)["status"] == "Queued"


# ---------------------------------------------------------------- client-side primitives


def test_jobs_run_on_the_executor_without_the_deprecated_primitives(
    fake: FakeIbmRuntime,
) -> None:
    """qiskit-ibm-runtime 0.50 deprecated SamplerV2/EstimatorV2: jobs go to the runtime's
    ``executor`` program (the client-side Sampler), and no deprecation is raised."""
    import warnings

    provider = provider_for(fake)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        job_id = provider.submit(BACKEND, bell_request(provider), idempotency_key="job-e/1")
    job = fake.store.job(job_id)
    assert job is not None and job["program_id"] == "executor"
    assert run_to_end(provider, job_id)[-1] == "DONE"
    counts = provider.result(job_id)[0].data.meas.get_counts()
    assert sum(counts.values()) == 2000
    assert counts.get("00", 0) + counts.get("11", 0) > 1600  # a Bell state, with noise


def test_a_prepared_request_is_sent_without_touching_its_pubs(fake: FakeIbmRuntime) -> None:
    """Preparation runs on stage compute (``prepare_request``); the dispatcher only sends
    the prepared program: a prepared request with its PUBs gone still runs."""
    from qlayer.providers.registry import prepare_request

    fake.ideal()
    provider = provider_for(fake)
    request = bell_request(provider, shots=300)
    prepared = prepare_request(request)
    assert prepared is not None and prepared["schema"] == "v2.0"
    json.dumps(prepared)  # stored in the request artifact as JSON
    bare = ExecuteRequest("sampler", [], BACKEND, "then", shots=300, prepared=prepared)
    job_id = provider.submit(BACKEND, bare, idempotency_key="job-p/1")
    assert run_to_end(provider, job_id)[-1] == "DONE"
    counts = provider.result(job_id)[0].data.meas.get_counts()
    assert sum(counts.values()) == 300 and set(counts) <= {"00", "11"}


# ---------------------------------------------------------------- execution modes


def test_a_loop_holds_one_session_across_a_restart(fake: FakeIbmRuntime) -> None:
    """Session mode: the requests of one qlayer job join one runtime session, and a fresh
    provider (a restarted daemon, another Lambda) re-attaches to it by the group's tag."""
    fake.ideal()
    first = provider_for(fake)
    request = bell_request(first, shots=100)
    request.options = {"mode": "session", "session_group": "job-L"}
    a = first.submit(BACKEND, request, idempotency_key="job-L/1")
    assert run_to_end(first, a)[-1] == "DONE"
    again = provider_for(fake)
    b = again.submit(BACKEND, request, idempotency_key="job-L/3")
    job_a, job_b = fake.store.job(a), fake.store.job(b)
    assert job_a is not None and job_b is not None
    assert job_a["session_id"] and job_a["session_id"] == job_b["session_id"]
    session = fake.store.session(job_a["session_id"])
    assert session is not None and session["mode"] == "dedicated"


def test_the_sessions_of_a_job_are_closed_from_any_process(fake: FakeIbmRuntime) -> None:
    fake.ideal()
    opener = provider_for(fake)
    request = bell_request(opener, shots=100)
    request.options = {"mode": "session", "session_group": "job-C"}
    job_id = opener.submit(BACKEND, request, idempotency_key="job-C/1")
    assert run_to_end(opener, job_id)[-1] == "DONE"
    session_id = fake.store.job(job_id)["session_id"]  # type: ignore[index]
    assert fake.store.session(session_id)["accepting_jobs"]  # type: ignore[index]
    # A fresh process finds the session by its tag, closes it, and reads its usage (the
    # fake bills a session the 2 s of each of its jobs).
    assert provider_for(fake).close_group("job-C") == {session_id: 2.0}
    assert not fake.store.session(session_id)["accepting_jobs"]  # type: ignore[index]


def test_the_local_pump_closes_a_jobs_session_when_the_job_ends(
    fake: FakeIbmRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local substrate's remote pump: a job's session/batch is closed once the job has
    ended (here: cancelled), not left open until the service's time-out."""
    import time

    from qlayer import usage
    from qlayer.core.ports import Event, NewJob
    from qlayer.interpreter import Decision
    from qlayer.local import state
    from qlayer.local.jobstore import SqliteJobStore
    from qlayer.local.remote import RemoteDispatcher
    from qlayer.providers import registry
    from qlayer.request import encode_request
    from qlayer.status import JobStatus
    from qlayer.store.local import FolderStore

    fake.ideal()
    monkeypatch.setenv("QLAYER_QPU_POLL_S", "0.05")
    registry.configure(registry.ProviderSettings(ibm_credentials=fake.credentials))
    try:
        db = tmp_path / "state.db"
        conn = state.connect(db)
        jobs, store = SqliteJobStore(conn), FolderStore(tmp_path / "artifacts")
        jobs.create(NewJob("job-R", program_id="p", workflow="w", arguments={}, backend=BACKEND))
        request = bell_request(provider_for(fake), shots=100)
        request.options = {"mode": "session", "session_group": "job-R"}
        store.put_json("jobs/job-R/req.json", encode_request(request, None, where="test"))
        remote = RemoteDispatcher(conn, db, jobs, store, lambda *a: None, clock=time.time)
        decision = Decision(
            "execute", seq=1, then="t", request_key="jobs/job-R/req.json", backend=BACKEND
        )
        remote.track("job-R", 1, decision, time.time())

        def pump_until(done: Callable[[], bool]) -> None:
            for _ in range(400):
                remote.pump()
                remote.collect()
                if done():
                    return
                time.sleep(0.05)
            raise AssertionError("the pump did not get there")

        def polled_done() -> bool:
            return any(
                (e.get("detail") or {}).get("state") == "DONE" for e in jobs.timeline("job-R")
            )

        pump_until(polled_done)
        session_id = fake.store.jobs(tags=["job-R/1"])[0][0]["session_id"]
        assert fake.store.session(session_id)["accepting_jobs"]  # type: ignore[index]
        jobs.update("job-R", status=JobStatus.CANCELLED, event=Event(None, None, "cancelled"))
        pump_until(lambda: not fake.store.session(session_id)["accepting_jobs"])  # type: ignore[index]
        pump_until(lambda: any(e["event"] == "sessions closed" for e in jobs.timeline("job-R")))
        remote.shutdown()
        # The session's billed seconds reach the job's usage.
        assert usage.from_timeline(jobs.timeline("job-R"), {})["session_seconds"] == 2.0
    finally:
        registry.configure(registry.ProviderSettings())


def test_a_session_on_the_open_plan_runs_in_one_batch_and_says_so_once(
    fake: FakeIbmRuntime,
) -> None:
    """The Open Plan has no session mode: the service refuses ``POST /sessions`` in
    ``dedicated`` mode with 403. The group's requests then share one batch (the plan allows
    it), the job is told once, and a fresh process re-attaches to that batch and closes it."""
    fake.open_plan()
    provider = provider_for(fake)
    request = bell_request(provider, shots=100)
    request.options = {"mode": "session", "session_group": "job-O"}
    first = provider.submit(BACKEND, request, idempotency_key="job-O/1")
    [note] = provider.take_notes("job-O/1")
    assert "open plan" in note and "batch" in note, note
    assert provider.take_notes("job-O/1") == []  # said once
    second = provider.submit(BACKEND, request, idempotency_key="job-O/2")
    assert provider.take_notes("job-O/2") == []
    sessions = {fake.store.job(job)["session_id"] for job in (first, second)}  # type: ignore[index]
    assert len(sessions) == 1 and None not in sessions
    session_id = sessions.pop()
    assert fake.store.session(session_id)["mode"] == "batch"  # type: ignore[index]
    refused = [c for c in fake.calls("POST", "/sessions") if c.status == 403]
    assert len(refused) == 1  # the provider remembers the plan: asked once
    # A fresh process: the tag leads to the batch (Session.from_id would refuse a batch id).
    fresh = provider_for(fake)
    third = fresh.submit(BACKEND, request, idempotency_key="job-O/3")
    assert fake.store.job(third)["session_id"] == session_id  # type: ignore[index]
    assert fresh.take_notes("job-O/3") == []
    assert set(provider_for(fake).close_group("job-O")) == {session_id}
    assert not fake.store.session(session_id)["accepting_jobs"]  # type: ignore[index]


def _pump(fake: FakeIbmRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The local substrate's remote pump over a fresh state database, on the fake's account."""
    import time

    from qlayer.local import state
    from qlayer.local.jobstore import SqliteJobStore
    from qlayer.local.remote import RemoteDispatcher
    from qlayer.providers import registry
    from qlayer.store.local import FolderStore

    monkeypatch.setenv("QLAYER_QPU_POLL_S", "0.05")
    registry.configure(registry.ProviderSettings(ibm_credentials=fake.credentials))
    db = tmp_path / "state.db"
    conn = state.connect(db)
    jobs, store = SqliteJobStore(conn), FolderStore(tmp_path / "artifacts")
    return RemoteDispatcher(conn, db, jobs, store, lambda *a: None, clock=time.time)


def _track(remote: Any, job_id: str, request: ExecuteRequest, *, parent: str | None = None) -> None:
    import time

    from qlayer.core.ports import NewJob
    from qlayer.interpreter import Decision
    from qlayer.request import encode_request

    remote.jobs.create(
        NewJob(job_id, "p", "w", {}, BACKEND, parent_id=parent, item_index=0 if parent else None)
    )
    key = f"jobs/{job_id}/req.json"
    remote.store.put_json(key, encode_request(request, None, where="test"))
    decision = Decision("execute", seq=1, then="t", request_key=key, backend=BACKEND)
    remote.track(job_id, 1, decision, time.time())


def _pump_until(remote: Any, done: Callable[[], bool]) -> None:
    import time

    for _ in range(400):
        remote.pump()
        remote.collect()
        if done():
            return
        time.sleep(0.05)
    raise AssertionError("the pump did not get there")


def _polled_done(remote: Any, job_id: str) -> Callable[[], bool]:
    def done() -> bool:
        return any(
            (e.get("detail") or {}).get("state") == "DONE" for e in remote.jobs.timeline(job_id)
        )

    return done


def test_the_local_pump_closes_a_fan_outs_batch_when_the_job_that_fanned_out_ends(
    fake: FakeIbmRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fan-out items share one batch (group ``<parent>_<seq>``): it stays open while the
    parent's fan-out runs, and is closed once the parent has ended (here: cancelled)."""
    from qlayer.core.ports import Event, NewJob
    from qlayer.providers import registry
    from qlayer.status import JobStatus

    fake.ideal()
    remote = _pump(fake, tmp_path, monkeypatch)
    try:
        remote.jobs.create(NewJob("job-F", "p", "w", {}, BACKEND))
        request = bell_request(provider_for(fake), shots=100)
        request.options = {"mode": "batch", "session_group": "job-F_2"}
        for index in range(2):
            _track(remote, f"job-F_2_{index}", request, parent="job-F")
        for index in range(2):
            _pump_until(remote, _polled_done(remote, f"job-F_2_{index}"))
        [batch_id] = {
            job["session_id"] for job in fake.store.jobs(tags=["qlayer-session:job-F_2"])[0]
        }
        for index in range(2):  # the items end; the parent's fan-out is not over
            remote.jobs.update(f"job-F_2_{index}", status=JobStatus.DONE)
        _pump_until(remote, lambda: True)
        assert fake.store.session(batch_id)["accepting_jobs"]  # type: ignore[index]
        remote.jobs.update(
            "job-F", status=JobStatus.CANCELLED, event=Event(None, None, "cancelled")
        )
        _pump_until(remote, lambda: not fake.store.session(batch_id)["accepting_jobs"])  # type: ignore[index]
        _pump_until(
            remote,
            lambda: any(e["event"] == "sessions closed" for e in remote.jobs.timeline("job-F")),
        )
    finally:
        remote.shutdown()
        registry.configure(registry.ProviderSettings())


def test_the_local_pump_tells_the_job_once_that_its_session_became_a_batch(
    fake: FakeIbmRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qlayer.providers import registry

    fake.ideal()
    fake.open_plan()
    remote = _pump(fake, tmp_path, monkeypatch)
    try:
        request = bell_request(provider_for(fake), shots=100)
        request.options = {"mode": "session", "session_group": "job-P"}
        _track(remote, "job-P", request)
        _pump_until(remote, _polled_done(remote, "job-P"))
        [said] = [e for e in remote.jobs.timeline("job-P") if e["event"] == "execution mode"]
        assert "open plan" in said["detail"]["message"]
        log = "".join(
            remote.store.get_bytes(k).decode()
            for k in remote.store.list("jobs/job-P/")
            if "log" in k
        )
        assert "refuses sessions" in log
    finally:
        remote.shutdown()
        registry.configure(registry.ProviderSettings())
