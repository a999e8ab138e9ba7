"""IBM Quantum through qiskit-ibm-runtime's client-side Sampler/Estimator, in job, batch or
session mode.

Primitives (:mod:`qlayer.providers.ibm_primitives`): a request prepared on stage compute
(``request.prepared``: the executor's ``QuantumProgram``) is sent with ``Executor``; any
other goes through ``executor_sampler.Sampler`` / ``executor_estimator.Estimator``, which
prepare it here.

Credentials: the user's saved account (``QiskitRuntimeService.save_account``) or a
token handed in by a ``token_provider`` (on AWS it reads a Secrets Manager secret
and returns ``{"token": ..., "instance": ..., "channel": ...}``). The service is
created lazily on first use: constructing an ``IbmProvider`` (or importing this
module) never touches the network.

Idempotency: every job carries the qlayer idempotency key as a job tag
(``options.environment.job_tags``). Before submitting, ``service.jobs(job_tags=[key])``
is consulted; a job found there is returned instead of a new one.

Execution modes (``request.options["mode"]``, set by the stage step from
``Execute(mode=)``, the workflow's ``qpu_mode`` or the request's shape — see
``qlayer.steps.qpu_mode`` — else the provider default):
- ``job``: one runtime job per execute request.
- ``batch`` / ``session``: the requests of one group share a runtime Batch/Session. The
  group is ``request.options["session_group"]`` (the qlayer job; a fan-out's parent step
  for its items' batch) or the key up to its last ``/``. Jobs are also tagged
  ``qlayer-session:<group>`` so a fresh process (another Lambda) finds the open session
  and re-attaches with ``Session.from_id``, and :meth:`IbmProvider.close_group` closes
  them from anywhere when the qlayer job ends.
- Open Plan: the service refuses sessions there (HTTP 403, "not authorized to run a session
  when using the open plan"); a ``session`` request then runs in a batch of its group, and
  the job is told once (:meth:`IbmProvider.take_notes`).

``max_execution_time`` (seconds of QPU time) comes from ``request.options`` or the
provider default, and is passed to the primitive's options.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qlayer.errors import BackendError
from qlayer.providers.base import (
    AsyncProvider,
    BackendInfo,
    ProviderError,
    ProviderJobState,
    ProviderJobStatus,
)
from qlayer.providers.ibm_primitives import primitive_class, run_prepared

if TYPE_CHECKING:
    from qiskit.primitives import PrimitiveResult
    from qiskit.transpiler import Target

    from qlayer.request import ExecuteRequest

MODES = ("job", "batch", "session")
SESSION_TAG = "qlayer-session:"

#: Qubits of IBM devices qlayer lists without asking the service (any other
#: ``ibm_*`` name is accepted too; its size is learnt from the service on use).
IBM_DEVICES: dict[str, int] = {
    "ibm_brisbane": 127,
    "ibm_sherbrooke": 127,
    "ibm_kyiv": 127,
    "ibm_strasbourg": 127,
    "ibm_brussels": 127,
    "ibm_quebec": 127,
    "ibm_rensselaer": 127,
    "ibm_torino": 133,
    "ibm_fez": 156,
    "ibm_marrakesh": 156,
    "ibm_kingston": 156,
    "ibm_aachen": 156,
    "ibm_pittsburgh": 156,
    "ibm_boston": 156,
}

#: Runtime job states -> qlayer provider states.
_STATE_MAP: dict[str, ProviderJobState] = {
    "INITIALIZING": "QUEUED",
    "VALIDATING": "QUEUED",
    "QUEUED": "QUEUED",
    "RUNNING": "RUNNING",
    "DONE": "DONE",
    "COMPLETED": "DONE",
    "ERROR": "ERROR",
    "FAILED": "ERROR",
    "CANCELLED": "CANCELLED",
    "CANCELLED - RAN TOO LONG": "ERROR",
}

_RETRYABLE_WORDS = (
    "rate limit",
    "too many requests",
    "timed out",
    "timeout",
    "temporarily",
    "connection",
    "service unavailable",
    "bad gateway",
    "try again",
)


def map_state(raw: Any) -> ProviderJobState:
    """A runtime status (string, or ``JobStatus`` enum in local mode) as a qlayer state."""
    name = getattr(raw, "name", raw)
    text = str(name).upper()
    if text in _STATE_MAP:
        return _STATE_MAP[text]
    raise ProviderError(f"unknown IBM job status {raw!r}", retryable=False)


def _status_code(exc: BaseException) -> int | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for attr in ("status_code", "status"):
            value = getattr(current, attr, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
        response = getattr(current, "response", None)
        value = getattr(response, "status_code", None)
        if isinstance(value, int):
            return value
        current = current.__cause__ or current.__context__
    match = re.search(r"\b([45]\d\d)\b (?:Client|Server) Error|status code:? ?([45]\d\d)", str(exc))
    if match:
        return int(match.group(1) or match.group(2))
    return None


def classify(exc: BaseException, doing: str) -> ProviderError:
    """An exception from qiskit-ibm-runtime as a ``ProviderError``.

    Retryable: HTTP 429 and 5xx, connection faults and timeouts. Not retryable:
    other 4xx (auth, bad input, validation), value errors, and anything else.
    """
    if isinstance(exc, ProviderError):
        return exc
    message = f"IBM Quantum: {doing} failed: {type(exc).__name__}: {exc}"
    code = _status_code(exc)
    if code is not None:
        return ProviderError(message, retryable=code == 429 or code >= 500)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return ProviderError(message, retryable=True)
    try:
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return ProviderError(message, retryable=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return ProviderError(message, retryable=False)
    lowered = str(exc).lower()
    return ProviderError(message, retryable=any(word in lowered for word in _RETRYABLE_WORDS))


class IbmProvider(AsyncProvider):
    """IBM Quantum devices (``ibm_*``) through qiskit-ibm-runtime.

    Args:
        service: A ``QiskitRuntimeService`` (or an object with the same methods: tests
            inject one). None: created lazily on first use.
        token_provider: Returns ``{"token": ..., "instance": ..., "channel": ...}`` for
            the service, injected by whoever builds the provider (on AWS: the stack's
            secret); None: the saved account (``~/.qiskit/qiskit-ibm.json``) or
            ``QISKIT_IBM_TOKEN``. An optional ``"url"`` (a custom endpoint) is passed on as
            ``QiskitRuntimeService(url=...)``: the client takes it as the IBM Cloud base URL
            and derives the regional API host from the instance CRN, unless the URL
            contains ``experimental`` (then it is the API base URL itself).
        mode: Default execution mode: ``job``, ``batch`` or ``session``.
        max_execution_time: Default per-job limit in seconds of QPU time (None: the
            service's own limit).
        lookup_limit: How many tagged jobs to fetch when looking a key up.
        classes: Overrides of the sampler and estimator primitive classes, ``Session``, ``Batch``
            (keys ``sampler``, ``estimator``, ``session``, ``batch``), for tests.
    """

    name = "ibm"

    def __init__(
        self,
        *,
        service: Any = None,
        token_provider: Callable[[], dict[str, Any]] | None = None,
        mode: str = "job",
        max_execution_time: int | None = None,
        lookup_limit: int = 5,
        classes: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._service = service
        self._token_provider = token_provider
        self.mode = mode
        self.max_execution_time = max_execution_time
        self.lookup_limit = lookup_limit
        self._classes = dict(classes or {})
        self._overridden = frozenset(self._classes)
        self._jobs: dict[str, Any] = {}  # jobs this process submitted or fetched
        self._modes: dict[tuple[str, str, str], Any] = {}  # (kind, backend, group) -> Session/Batch
        self._modes_lock = threading.Lock()
        self._backends: dict[str, Any] = {}
        #: The service refused a session because of the instance's plan (IBM's Open Plan):
        #: session requests run in a batch from then on.
        self.sessions_refused = False
        self._notes: dict[str, list[str]] = {}  # idempotency key -> what the job should hear

    # ------------------------------------------------------------------ service

    @property
    def service(self) -> Any:
        """The runtime service, created on first use (this is the first network call)."""
        if self._service is None:
            try:
                from qiskit_ibm_runtime import QiskitRuntimeService

                if self._token_provider is not None:
                    creds = dict(self._token_provider())
                    if not creds.get("token"):
                        raise ProviderError(
                            "IBM Quantum: the token provider returned no 'token'", retryable=False
                        )
                    self._service = QiskitRuntimeService(
                        channel=creds.get("channel") or "ibm_quantum_platform",
                        token=creds["token"],
                        instance=creds.get("instance"),
                        url=creds.get("url"),
                    )
                else:
                    self._service = QiskitRuntimeService()
            except Exception as exc:
                raise classify(exc, "connecting (QiskitRuntimeService)") from exc
        return self._service

    def _cls(self, kind: str) -> Any:
        if kind not in self._classes:
            import qiskit_ibm_runtime as runtime

            self._classes[kind] = {
                "sampler": primitive_class("sampler"),
                "estimator": primitive_class("estimator"),
                "session": runtime.Session,
                "batch": runtime.Batch,
            }[kind]
        return self._classes[kind]

    def _backend(self, name: str) -> Any:
        if name not in self._backends:
            try:
                self._backends[name] = self.service.backend(name)
            except ProviderError:
                raise
            except Exception as exc:
                raise classify(exc, f"getting backend {name}") from exc
        return self._backends[name]

    # ------------------------------------------------------------------ port

    def backends(self) -> list[BackendInfo]:
        return [self.info(name) for name in IBM_DEVICES]

    @staticmethod
    def info(name: str) -> BackendInfo:
        from qlayer.dispatch import DEFAULT_RATE_LIMITS

        if not name.startswith("ibm_"):
            raise BackendError(f"ibm serves ibm_* backends, not {name!r}")
        return BackendInfo(
            name,
            "ibm",
            "qpu",
            IBM_DEVICES.get(name),
            noisy=True,
            max_concurrency=DEFAULT_RATE_LIMITS["ibm"].max_in_flight,
            description=f"IBM Quantum device {name[4:].capitalize()} (qiskit-ibm-runtime)",
        )

    def target(self, backend: str) -> Target:
        return self._backend(backend).target

    def find_job(self, backend: str, idempotency_key: str) -> str | None:
        """The newest job tagged with ``idempotency_key``, or None."""
        try:
            jobs = self.service.jobs(
                job_tags=[idempotency_key],
                backend_name=backend,
                limit=self.lookup_limit,
                descending=True,
            )
        except ProviderError:
            raise
        except Exception as exc:
            raise classify(exc, f"looking up jobs tagged {idempotency_key}") from exc
        for job in jobs:
            tags = getattr(job, "tags", None)
            if tags is None or idempotency_key in tags:
                self._jobs[job.job_id()] = job
                return str(job.job_id())
        return None

    def submit(self, backend: str, request: ExecuteRequest, *, idempotency_key: str) -> str:
        found = self.find_job(backend, idempotency_key)
        if found is not None:
            return found
        opts = dict(request.options or {})
        mode_name = opts.get("mode") or self.mode
        if mode_name not in MODES:
            raise ProviderError(
                f"IBM Quantum: mode must be one of {MODES}, got {mode_name!r}", retryable=False
            )
        tags = [idempotency_key]
        group = None
        if mode_name != "job":
            group = str(opts.get("session_group") or idempotency_key.rsplit("/", 1)[0])
            tags.append(SESSION_TAG + group)
        device = self._backend(backend)
        try:
            mode = (
                device
                if group is None
                else self._open_mode(mode_name, backend, device, group, opts, idempotency_key)
            )
            options = self._options(request, device, tags, opts)
            kind = "sampler" if request.primitive == "sampler" else "estimator"
            if request.prepared is not None and kind not in self._overridden:
                # Prepared on stage compute: only decoded and sent from here.
                job = run_prepared(mode, request.prepared, options)
            else:
                job = self._cls(kind)(mode=mode, options=options).run(request.pubs)
        except ProviderError:
            raise
        except Exception as exc:
            raise classify(exc, f"submitting to {backend}") from exc
        job_id = str(job.job_id())
        self._jobs[job_id] = job
        return job_id

    def _options(
        self, request: ExecuteRequest, device: Any, tags: list[str], opts: dict[str, Any]
    ) -> dict[str, Any]:
        options: dict[str, Any] = dict(opts.get("ibm") or {})
        environment = dict(options.get("environment") or {})
        environment["job_tags"] = sorted(set(environment.get("job_tags") or []) | set(tags))
        options["environment"] = environment
        max_time = opts.get("max_execution_time", self.max_execution_time)
        if max_time is not None:
            options["max_execution_time"] = int(max_time)
        if request.primitive == "sampler":
            if request.shots is not None:
                options["default_shots"] = int(request.shots)
        elif request.precision is not None:
            options["default_precision"] = float(request.precision)
        if request.seed is not None and type(device).__name__.startswith("Fake"):
            options.setdefault("simulator", {})["seed_simulator"] = request.seed
        return options

    def _open_mode(
        self, kind: str, backend: str, device: Any, group: str, opts: dict[str, Any], key: str
    ) -> Any:
        """The Session/Batch of ``group``: this process's, one found by tag, or a new one.

        A session the service refuses because of the instance's plan (IBM's Open Plan has
        no session mode) becomes a batch: the group's requests still share one, and the
        job hears it once (:meth:`take_notes`).
        """
        with self._modes_lock:  # siblings submitted on two threads share one
            return self._open_mode_locked(kind, backend, device, group, opts, key)

    def _open_mode_locked(
        self, kind: str, backend: str, device: Any, group: str, opts: dict[str, Any], key: str
    ) -> Any:
        cache_key = (kind, backend, group)
        if cache_key in self._modes:
            return self._modes[cache_key]
        session_id = opts.get("session_id")
        if session_id is None:
            earlier = self.service.jobs(
                job_tags=[SESSION_TAG + group], backend_name=backend, limit=1, descending=True
            )
            if earlier:
                session_id = getattr(earlier[0], "session_id", None)
        if session_id:
            mode = self._attach(kind, str(session_id))
        elif kind == "session" and self.sessions_refused:
            mode = self._create("batch", device, opts)
        else:
            try:
                mode = self._create(kind, device, opts)
            except Exception as exc:
                if kind != "session" or not refuses_sessions(exc):
                    raise
                self.sessions_refused = True
                mode = self._create("batch", device, opts)
                self._notes.setdefault(key, []).append(
                    f"{backend}: the IBM Quantum plan of this instance refuses sessions "
                    f"({exc}); the requests of {group} run in one batch instead "
                    "(Open Plan allows job and batch mode)"
                )
        self._modes[cache_key] = mode
        return mode

    def _create(self, kind: str, device: Any, opts: dict[str, Any]) -> Any:
        cls = self._cls(kind)
        max_time = opts.get("session_max_time")
        return cls(backend=device, max_time=max_time) if max_time else cls(backend=device)

    def _attach(self, kind: str, session_id: str) -> Any:
        """``Session.from_id`` / ``Batch.from_id``, whichever the service says the id is (a
        group's session may have become a batch: :meth:`_open_mode`)."""
        try:
            return self._cls(kind).from_id(session_id, service=self.service)
        except Exception as exc:
            other = "batch" if kind == "session" else "session"
            if "execution mode" not in str(exc):
                raise
            return self._cls(other).from_id(session_id, service=self.service)

    def take_notes(self, idempotency_key: str) -> list[str]:
        """What the job of ``idempotency_key``'s submission should be told (said once)."""
        return self._notes.pop(idempotency_key, [])

    def close_sessions(self, group: str | None = None) -> None:
        """Close this process's sessions/batches (all, or one group's): queued jobs still run."""
        for cache_key, mode in list(self._modes.items()):
            if group is None or cache_key[2] == group:
                try:
                    mode.close()
                except Exception as exc:
                    raise classify(exc, "closing session") from exc
                del self._modes[cache_key]

    def close_group(self, group: str) -> dict[str, float | None]:
        """Close every Session/Batch of ``group`` (the qlayer job whose requests held it).

        Works from any process: besides this process's own, the group's sessions are found
        by the ``qlayer-session:<group>`` tag of their jobs. Closing stops new jobs; the
        queued ones still run. Returns each closed session's id and its usage (seconds).
        """
        modes = {}
        with self._modes_lock:
            for cache_key, mode in list(self._modes.items()):
                if cache_key[2] == group:
                    modes[str(mode.session_id)] = mode
                    del self._modes[cache_key]
        try:
            tagged = self.service.jobs(
                job_tags=[SESSION_TAG + group], limit=self.lookup_limit, descending=True
            )
            for job in tagged:
                session_id = getattr(job, "session_id", None)
                if session_id and session_id not in modes:
                    modes[session_id] = self._attach("session", str(session_id))
            closed: dict[str, float | None] = {}
            for session_id, mode in modes.items():
                mode.close()
                usage = mode.usage() if hasattr(mode, "usage") else None
                closed[session_id] = float(usage) if usage is not None else None
        except ProviderError:
            raise
        except Exception as exc:
            raise classify(exc, f"closing the sessions of {group}") from exc
        return closed

    def _job(self, provider_job_id: str) -> Any:
        job = self._jobs.get(provider_job_id)
        if job is None:
            try:
                job = self.service.job(provider_job_id)
            except Exception as exc:
                raise classify(exc, f"fetching job {provider_job_id}") from exc
            self._jobs[provider_job_id] = job
        return job

    def status(self, provider_job_id: str) -> ProviderJobStatus:
        job = self._job(provider_job_id)
        try:
            raw = job.status()
        except Exception as exc:
            raise classify(exc, f"status of job {provider_job_id}") from exc
        state = map_state(raw)
        message = None
        position = None
        usage = None
        if state == "ERROR":
            try:
                message = job.error_message() if hasattr(job, "error_message") else None
            except Exception:
                message = None
            message = message or f"IBM job {provider_job_id} failed"
        elif state == "QUEUED":
            position = self._queue_position(job)
        elif state == "DONE" and hasattr(job, "usage"):
            try:
                value = job.usage()
                usage = float(value) if value else None
            except Exception:
                usage = None
        return ProviderJobStatus(
            state, queue_position=position, message=message, usage_seconds=usage
        )

    @staticmethod
    def _queue_position(job: Any) -> int | None:
        try:
            if callable(getattr(job, "queue_position", None)):
                value = job.queue_position()
            elif hasattr(job, "metrics"):
                metrics = job.metrics() or {}
                value = metrics.get("position_in_queue", metrics.get("queue_position"))
            else:
                return None
            return int(value) if value is not None else None
        except Exception:
            return None  # best effort: a status must not fail for want of a position

    def result(self, provider_job_id: str) -> PrimitiveResult:
        job = self._job(provider_job_id)
        try:
            return job.result()
        except Exception as exc:
            raise classify(exc, f"result of job {provider_job_id}") from exc

    def cancel(self, provider_job_id: str) -> None:
        job = self._job(provider_job_id)
        try:
            if map_state(job.status()) in ("DONE", "ERROR", "CANCELLED"):
                return
            job.cancel()
        except ProviderError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "RuntimeInvalidStateError":
                return  # it ended between our look and the cancel
            raise classify(exc, f"cancelling job {provider_job_id}") from exc


def refuses_sessions(exc: BaseException) -> bool:
    """Whether the service refused to open a session because of the instance's plan.

    IBM Quantum Platform answers an Open Plan instance's session request (``POST
    /sessions`` in ``dedicated`` mode) with HTTP 403, "You are not authorized to run a
    session when using the open plan."
    """
    text = str(exc).lower()
    return "open plan" in text and "session" in text and _status_code(exc) in (None, 401, 403)


def ibm_configured(*, injected: bool = False) -> bool:
    """Whether an IBM account could be used without asking the network.

    True when credentials were injected (``injected``: on AWS, the stack's secret),
    ``QISKIT_IBM_TOKEN`` is set, or a saved account file exists.
    """
    import os
    from pathlib import Path

    if injected or os.environ.get("QISKIT_IBM_TOKEN"):
        return True
    return (Path.home() / ".qiskit" / "qiskit-ibm.json").is_file()
