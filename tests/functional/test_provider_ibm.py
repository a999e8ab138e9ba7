"""IbmProvider against a faithful fake of qiskit-ibm-runtime, and the real primitives offline.

``FakeRuntimeService`` / ``FakeRuntimeJob`` / ``FakeSamplerV2`` / ``FakeEstimatorV2`` /
``FakeSession`` mimic the qiskit-ibm-runtime 0.51 classes the provider uses (same method
names and arguments) and record every call. No test contacts IBM: the service is always
injected, and ``QiskitRuntimeService`` itself is replaced where the lazy path is tested.
"""

from __future__ import annotations

import itertools

import pytest

from qlayer.errors import BackendError
from qlayer.providers.base import ProviderError
from qlayer.providers.ibm import IbmProvider, classify, map_state
from qlayer.request import ExecuteRequest

_ids = itertools.count(1)


class FakeRuntimeJob:
    """Fake of ``RuntimeJobV2``."""

    def __init__(self, log, backend, tags, session_id=None, status="QUEUED"):
        self._id = f"ibmjob-{next(_ids)}"
        self.log = log
        self.backend_name = backend
        self.tags = list(tags)
        self.session_id = session_id
        self.state = status
        self.position = 7
        self.error = None
        self.payload = None

    def job_id(self):
        return self._id

    def status(self):
        self.log.append(("job.status", self._id))
        return self.state

    def metrics(self):
        self.log.append(("job.metrics", self._id))
        return {"position_in_queue": self.position, "usage": {}}

    def usage(self):
        return 4.2

    def error_message(self):
        return self.error

    def result(self):
        self.log.append(("job.result", self._id))
        return self.payload

    def cancel(self):
        self.log.append(("job.cancel", self._id))
        self.state = "CANCELLED"


class FakeRuntimeService:
    """Fake of ``QiskitRuntimeService`` (only the methods qlayer calls)."""

    def __init__(self):
        self.log: list[tuple] = []
        self.all_jobs: list[FakeRuntimeJob] = []

    def backend(self, name, instance=None):
        self.log.append(("service.backend", name))
        return FakeBackend(name)

    def jobs(self, limit=10, skip=0, backend_name=None, job_tags=None, descending=True, **kw):
        self.log.append(("service.jobs", tuple(job_tags or ()), backend_name, limit, descending))
        found = [
            job
            for job in self.all_jobs
            if set(job_tags or ()) <= set(job.tags)
            and (backend_name is None or job.backend_name == backend_name)
        ]
        found = found[::-1] if descending else found
        return found[:limit] if limit else found

    def job(self, job_id):
        self.log.append(("service.job", job_id))
        for job in self.all_jobs:
            if job.job_id() == job_id:
                return job
        raise KeyError(job_id)


class FakeBackend:
    def __init__(self, name):
        self.name = name
        self.target = f"target-of-{name}"


class FakeSession:
    """Fake of ``Session`` / ``Batch``."""

    created: list[FakeSession] = []

    def __init__(self, backend=None, max_time=None, *, session_id=None):
        self.backend = backend
        self.max_time = max_time
        self.session_id = session_id or f"session-{next(_ids)}"
        self.closed = False
        FakeSession.created.append(self)

    @classmethod
    def from_id(cls, session_id, service):
        return cls(backend=None, session_id=session_id)

    def close(self):
        self.closed = True


def fake_primitive(kind, service):
    class FakePrimitive:
        """Fake of ``SamplerV2`` / ``EstimatorV2``: ``run`` creates a runtime job."""

        def __init__(self, mode=None, options=None):
            self.mode = mode
            self.options = options
            service.log.append((f"{kind}.__init__", mode, options))

        def run(self, pubs):
            service.log.append((f"{kind}.run", list(pubs)))
            backend = (
                self.mode.name
                if isinstance(self.mode, FakeBackend)
                else self.mode.backend.name
                if isinstance(self.mode, FakeSession) and self.mode.backend
                else "ibm_x"
            )
            session_id = self.mode.session_id if isinstance(self.mode, FakeSession) else None
            job = FakeRuntimeJob(
                service.log, backend, self.options["environment"]["job_tags"], session_id
            )
            service.all_jobs.append(job)
            return job

    return FakePrimitive


@pytest.fixture
def service():
    return FakeRuntimeService()


def make(service, **kw):
    classes = {
        "sampler": fake_primitive("sampler", service),
        "estimator": fake_primitive("estimator", service),
        "session": FakeSession,
        "batch": FakeSession,
    }
    return IbmProvider(service=service, classes=classes, **kw)


def sampler(shots=100, **options):
    return ExecuteRequest(
        "sampler", ["pub-a", "pub-b"], "ibm_brisbane", "next", shots=shots, options=options
    )


def test_submit_tags_job_and_honours_options(service):
    provider = make(service, max_execution_time=600)
    job_id = provider.submit(
        "ibm_brisbane", sampler(shots=2000, method="automatic"), idempotency_key="j1/4"
    )
    assert service.log[0] == ("service.jobs", ("j1/4",), "ibm_brisbane", 5, True)
    assert service.log[1] == ("service.backend", "ibm_brisbane")
    kind, mode, options = service.log[2]
    assert kind == "sampler.__init__" and isinstance(mode, FakeBackend)
    assert options == {
        "environment": {"job_tags": ["j1/4"]},
        "max_execution_time": 600,
        "default_shots": 2000,
    }
    assert service.log[3] == ("sampler.run", ["pub-a", "pub-b"])
    assert job_id == service.all_jobs[0].job_id()
    # A per-request limit and IBM options pass through.
    est = ExecuteRequest(
        "estimator",
        ["p"],
        "ibm_brisbane",
        "n",
        precision=0.01,
        options={"max_execution_time": 30, "ibm": {"resilience_level": 2}},
    )
    provider.submit("ibm_brisbane", est, idempotency_key="j1/6")
    _, _, options = service.log[-2]
    assert options["max_execution_time"] == 30 and options["default_precision"] == 0.01
    assert options["resilience_level"] == 2 and options["environment"]["job_tags"] == ["j1/6"]


def test_submit_is_idempotent_by_tag_even_in_a_fresh_process(service):
    first = make(service).submit("ibm_brisbane", sampler(), idempotency_key="j1/4")
    again = make(service).submit("ibm_brisbane", sampler(), idempotency_key="j1/4")  # a new Lambda
    assert first == again
    assert [entry[0] for entry in service.log].count("sampler.run") == 1
    assert make(service).find_job("ibm_brisbane", "j1/5") is None


def test_session_mode_reuses_one_session_per_job(service):
    FakeSession.created.clear()
    provider = make(service)
    a = provider.submit(
        "ibm_brisbane", sampler(mode="session", session_max_time=900), idempotency_key="jobA/2"
    )
    b = provider.submit("ibm_brisbane", sampler(mode="session"), idempotency_key="jobA/4")
    assert len(FakeSession.created) == 1 and FakeSession.created[0].max_time == 900
    jobs = {job.job_id(): job for job in service.all_jobs}
    assert jobs[a].session_id == jobs[b].session_id
    assert "qlayer-session:jobA" in jobs[a].tags and "jobA/2" in jobs[a].tags
    # Another process finds the open session by tag and re-attaches with Session.from_id.
    c = make(service).submit("ibm_brisbane", sampler(mode="session"), idempotency_key="jobA/6")
    assert jobs[a].session_id == {job.job_id(): job for job in service.all_jobs}[c].session_id
    assert ("service.jobs", ("qlayer-session:jobA",), "ibm_brisbane", 1, True) in service.log
    provider.close_sessions("jobA")
    assert FakeSession.created[0].closed
    # Batch mode uses the batch class; a bad mode is a non-retryable error.
    make(service).submit("ibm_brisbane", sampler(mode="batch"), idempotency_key="jobB/2")
    with pytest.raises(ProviderError) as info:
        make(service).submit("ibm_brisbane", sampler(mode="dedicated"), idempotency_key="jobC/2")
    assert not info.value.retryable


def test_status_mapping_queue_position_usage_and_errors(service):
    provider = make(service)
    job = service.all_jobs
    job_id = provider.submit("ibm_brisbane", sampler(), idempotency_key="k/1")
    status = provider.status(job_id)
    assert status.state == "QUEUED" and status.queue_position == 7
    for raw, expected in [
        ("INITIALIZING", "QUEUED"),
        ("RUNNING", "RUNNING"),
        ("CANCELLED", "CANCELLED"),
    ]:
        job[0].state = raw
        assert provider.status(job_id).state == expected
    job[0].state = "DONE"
    assert provider.status(job_id).usage_seconds == 4.2
    job[0].state, job[0].error = "ERROR", "Error code 1517; circuit too deep"
    assert provider.status(job_id).message == "Error code 1517; circuit too deep"
    assert map_state("COMPLETED") == "DONE" and map_state("FAILED") == "ERROR"
    with pytest.raises(ProviderError):
        map_state("EXPLODED")


def test_status_result_and_cancel_from_id_alone(service):
    job_id = make(service).submit("ibm_brisbane", sampler(), idempotency_key="k/1")
    service.all_jobs[0].payload = "primitive-result"
    fresh = make(service)
    assert fresh.result(job_id) == "primitive-result"
    assert ("service.job", job_id) in service.log
    fresh.cancel(job_id)
    assert ("job.cancel", job_id) in service.log
    calls = len(service.log)
    fresh.cancel(job_id)  # already cancelled: no second cancel call
    assert [e for e in service.log[calls:] if e[0] == "job.cancel"] == []


def test_error_classification():
    from qiskit_ibm_runtime.api.exceptions import RequestsApiError
    from qiskit_ibm_runtime.exceptions import IBMInputValueError, IBMRuntimeError

    assert classify(RequestsApiError("Too many requests", status_code=429), "submit").retryable
    assert classify(RequestsApiError("Service Unavailable", status_code=503), "submit").retryable
    bad = classify(
        RequestsApiError("'Invalid input: shots must be > 0'", status_code=400), "submit"
    )
    assert not bad.retryable and "shots must be > 0" in str(bad)
    assert not classify(RequestsApiError("Unauthorized", status_code=401), "x").retryable
    wrapped = IBMRuntimeError("Failed to get job: '502 Server Error: Bad Gateway for url'")
    assert classify(wrapped, "status").retryable
    assert classify(ConnectionError("reset by peer"), "x").retryable
    assert not classify(IBMInputValueError("bad option"), "x").retryable


def test_failures_inside_submit_are_classified(service):
    from qiskit_ibm_runtime.api.exceptions import RequestsApiError

    def boom(*args, **kwargs):
        raise RequestsApiError("Rate limit exceeded", status_code=429)

    service.jobs = boom
    with pytest.raises(ProviderError) as info:
        make(service).submit("ibm_brisbane", sampler(), idempotency_key="k/1")
    assert info.value.retryable


def test_service_is_created_lazily_from_the_token_provider(monkeypatch):
    import qiskit_ibm_runtime

    created = []

    class RecordingService:
        def __init__(self, **kwargs):
            created.append(kwargs)

    monkeypatch.setattr(qiskit_ibm_runtime, "QiskitRuntimeService", RecordingService)
    reads = []

    def token_provider():
        reads.append(1)
        return {"token": "t0k", "instance": "crn:v1:abc"}

    provider = IbmProvider(token_provider=token_provider)
    assert created == [] and reads == [], "nothing happens at construction"
    assert isinstance(provider.service, RecordingService)
    assert created == [
        {"channel": "ibm_quantum_platform", "token": "t0k", "instance": "crn:v1:abc", "url": None}
    ]
    provider.service  # noqa: B018 - cached
    assert len(created) == 1 and len(reads) == 1
    with pytest.raises(ProviderError):
        IbmProvider(token_provider=lambda: {}).service  # noqa: B018


def test_registry_routes_ibm_names_without_network(monkeypatch, tmp_path):
    from qlayer.providers import registry

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("QISKIT_IBM_TOKEN", raising=False)
    monkeypatch.delenv("QLAYER_PROVIDERS_SECRET_ARN", raising=False)
    with pytest.raises(BackendError, match="no IBM Quantum account"):
        registry.resolve("ibm_brisbane")
    listed = {b.name: b.to_json() for b in registry.known_backends()}
    assert (
        listed["ibm_brisbane"]["configured"] is False
        and listed["ibm_brisbane"]["reachable"] is None
    )
    monkeypatch.setenv("QISKIT_IBM_TOKEN", "x")
    info = registry.resolve("ibm_brisbane")
    assert (info.provider, info.kind, info.num_qubits) == ("ibm", "qpu", 127)
    assert registry.resolve("ibm_newdevice").num_qubits is None
    assert registry.resolve("aer").provider == "aer"
    assert isinstance(registry.provider("ibm_torino"), IbmProvider)
    with pytest.raises(BackendError, match="dispatcher"):
        registry.sync_provider("ibm_torino").run("ibm_torino", sampler())


class LocalService:
    """Stands in for the account: hands out the offline fake device (runtime local mode)."""

    def __init__(self):
        from qiskit_ibm_runtime.fake_provider import FakeManilaV2

        self.device = FakeManilaV2()

    def backend(self, name):
        return self.device

    def jobs(self, **kwargs):
        return []


@pytest.mark.filterwarnings("ignore")
def test_real_runtime_primitives_in_local_mode():
    """qiskit-ibm-runtime's own SamplerV2/EstimatorV2 on FakeManilaV2, offline."""
    from qiskit import QuantumCircuit
    from qiskit.primitives import PrimitiveResult
    from qiskit.quantum_info import SparsePauliOp
    from qiskit.transpiler import generate_preset_pass_manager

    service = LocalService()
    provider = IbmProvider(service=service)
    pm = generate_preset_pass_manager(
        optimization_level=1, target=service.device.target, seed_transpiler=1
    )
    ghz = QuantumCircuit(3)
    ghz.h(0)
    ghz.cx(0, 1)
    ghz.cx(1, 2)
    measured = pm.run(ghz.measure_all(inplace=False))
    job_id = provider.submit(
        "ibm_manila",
        ExecuteRequest("sampler", [measured], "ibm_manila", "n", shots=400, seed=3),
        idempotency_key="local/1",
    )
    assert provider.status(job_id).state in ("QUEUED", "RUNNING", "DONE")
    result = provider.result(job_id)
    assert isinstance(result, PrimitiveResult)
    counts = result[0].data.meas.get_counts()
    assert sum(counts.values()) == 400
    assert counts.get("000", 0) + counts.get("111", 0) > 300
    assert provider.status(job_id).state == "DONE"
    isa = pm.run(ghz)
    observable = SparsePauliOp(["ZZI", "IZZ"]).apply_layout(isa.layout)
    for mode in ("job", "session", "batch"):
        est = ExecuteRequest(
            "estimator",
            [(isa, observable)],
            "ibm_manila",
            "n",
            precision=0.05,
            options={"mode": mode},
        )
        evs = provider.result(provider.submit("ibm_manila", est, idempotency_key=f"local/{mode}"))[
            0
        ].data.evs
        assert 1.4 < float(evs) <= 2.1, mode
