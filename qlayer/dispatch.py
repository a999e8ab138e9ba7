"""The dispatcher core: submit each execute request to its provider exactly once.

Substrate-independent: the local daemon and the AWS dispatcher Lambda both drive
these functions; they differ only in the :class:`Ledger` they pass (SQLite or
DynamoDB; :class:`MemoryLedger` here for tests) and in how they wait.

Exactly once, end to end
------------------------
A provider job is created at most once per idempotency key (``<job-id>/<seq>``),
whatever happens around the call:

1. ``claim`` creates the ledger entry if absent (atomic create-if-absent) and
   gives the caller a *lease* on it. A second caller while the lease is live
   (a duplicate SQS delivery running concurrently) gets :class:`SubmissionInProgress`
   (retryable: the message comes back later and finds the recorded id).
2. An entry that already has a provider job id is done: its id is returned.
3. An entry claimed before but without an id (the dispatcher died after the
   provider accepted the job and before ``record_submission``) is taken over
   once its lease expired; the provider is asked first to find a job carrying
   the key (``find_job``: IBM job tags, Braket task tags), and only if there is
   none is the job submitted.
4. ``record_submission`` is conditional (first id wins), so two racing writers
   cannot overwrite each other's id.

The providers' own ``submit`` also looks for the key before submitting (a second
line of defence for callers that do not use a ledger).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from qlayer.providers.base import AsyncProvider, ProviderError, ProviderJobStatus

if TYPE_CHECKING:
    from qiskit.primitives import PrimitiveResult

    from qlayer.request import ExecuteRequest

T = TypeVar("T")

#: Ledger states: CLAIMED (no provider job yet), SUBMITTED (provider accepted it),
#: then the provider's own states as polled.
LEDGER_STATES = ("CLAIMED", "SUBMITTED", "QUEUED", "RUNNING", "DONE", "ERROR", "CANCELLED")
FINAL_STATES = frozenset({"DONE", "ERROR", "CANCELLED"})
ACTIVE_STATES = ("CLAIMED", "SUBMITTED", "QUEUED", "RUNNING")

#: How long a claim protects an entry from a concurrent duplicate before another
#: dispatcher may take it over (must exceed one submit call incl. retries).
DEFAULT_LEASE_S = 300.0


# --------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class LedgerEntry:
    """One execute request's submission record.

    Attributes:
        key: The idempotency key (``<job-id>/<seq>``).
        backend: Backend name.
        request_key: Artifact key of the execute request.
        state: One of :data:`LEDGER_STATES`.
        provider_job_id: The provider's job id once submitted.
        message: The provider's words on an error (or a note).
        owner: Who holds the claim (a dispatcher invocation id).
        lease_until: Epoch seconds until which the owner's claim is exclusive.
        claims: How many times the entry was claimed (1 = first delivery).
        created_at: Epoch seconds.
        updated_at: Epoch seconds.
    """

    key: str
    backend: str
    request_key: str
    state: str = "CLAIMED"
    provider_job_id: str | None = None
    message: str | None = None
    owner: str | None = None
    lease_until: float = 0.0
    claims: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0


class Ledger(ABC):
    """Durable record of submissions. SQLite and DynamoDB implement the same port.

    ``claim`` and ``record_submission`` must be atomic (a conditional write in
    DynamoDB: ``attribute_not_exists(pk)`` / ``attribute_not_exists(provider_job_id)``;
    ``INSERT ... ON CONFLICT DO NOTHING`` / ``UPDATE ... WHERE provider_job_id IS NULL``
    in SQLite).
    """

    @abstractmethod
    def claim(
        self,
        key: str,
        backend: str,
        request_key: str,
        *,
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> LedgerEntry:
        """Create the entry if absent, or take over an expired claim; return the entry.

        The caller owns the claim when ``entry.owner == owner``. An existing entry
        with a provider job id, or a live claim by someone else, is returned as is.
        """

    @abstractmethod
    def record_submission(self, key: str, provider_job_id: str) -> LedgerEntry:
        """Set the provider job id if none is set yet (first writer wins); return the entry."""

    @abstractmethod
    def get(self, key: str) -> LedgerEntry | None:
        """The entry, or None."""

    @abstractmethod
    def set_state(self, key: str, state: str, message: str | None = None) -> LedgerEntry:
        """Record the provider job's state (and the provider's message)."""

    @abstractmethod
    def entries_in(self, states: Iterable[str]) -> list[LedgerEntry]:
        """Every entry in one of ``states`` (the poller's work list)."""


class MemoryLedger(Ledger):
    """In-memory ledger with the same atomicity as the durable ones (a lock)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[str, LedgerEntry] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def claim(
        self,
        key: str,
        backend: str,
        request_key: str,
        *,
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> LedgerEntry:
        owner = owner or uuid.uuid4().hex
        with self._lock:
            now = self._clock()
            entry = self._entries.get(key)
            if entry is None:
                entry = LedgerEntry(
                    key,
                    backend,
                    request_key,
                    owner=owner,
                    lease_until=now + lease_s,
                    created_at=now,
                    updated_at=now,
                )
            elif entry.provider_job_id is None and entry.lease_until <= now:
                entry = replace(
                    entry,
                    owner=owner,
                    lease_until=now + lease_s,
                    claims=entry.claims + 1,
                    updated_at=now,
                )
            else:
                return entry
            self._entries[key] = entry
            return entry

    def record_submission(self, key: str, provider_job_id: str) -> LedgerEntry:
        with self._lock:
            entry = self._require(key)
            if entry.provider_job_id is None:
                entry = replace(
                    entry,
                    provider_job_id=provider_job_id,
                    state="SUBMITTED",
                    updated_at=self._clock(),
                )
                self._entries[key] = entry
            return entry

    def get(self, key: str) -> LedgerEntry | None:
        with self._lock:
            return self._entries.get(key)

    def set_state(self, key: str, state: str, message: str | None = None) -> LedgerEntry:
        if state not in LEDGER_STATES:
            raise ValueError(f"unknown ledger state {state!r}; expected one of {LEDGER_STATES}")
        with self._lock:
            entry = replace(
                self._require(key), state=state, message=message, updated_at=self._clock()
            )
            self._entries[key] = entry
            return entry

    def entries_in(self, states: Iterable[str]) -> list[LedgerEntry]:
        wanted = set(states)
        with self._lock:
            return [entry for entry in self._entries.values() if entry.state in wanted]

    def _require(self, key: str) -> LedgerEntry:
        if key not in self._entries:
            raise KeyError(f"no ledger entry for {key!r}")
        return self._entries[key]


# --------------------------------------------------------------------------- submit / poll


class SubmissionInProgress(ProviderError):
    """Another dispatcher holds a live claim on this key; try again later (retryable)."""

    def __init__(self, key: str, owner: str | None) -> None:
        super().__init__(
            f"submission of {key} is in progress elsewhere (claim held by {owner})", retryable=True
        )
        self.key = key


class NotSubmitted(LookupError):
    """The ledger has no provider job for this key."""


@runtime_checkable
class FindsJobs(Protocol):
    """Providers that can find a job by its idempotency key (tags, client token)."""

    def find_job(self, backend: str, idempotency_key: str) -> str | None: ...


def submit_once(
    ledger: Ledger,
    provider: AsyncProvider,
    key: str,
    backend: str,
    request: ExecuteRequest,
    *,
    request_key: str = "",
    owner: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> str:
    """Submit ``request`` under ``key`` exactly once; return the provider job id.

    Raises:
        SubmissionInProgress: Someone else holds a live claim on ``key`` (retryable).
        ProviderError: The provider refused or failed (``retryable`` says which).
    """
    owner = owner or uuid.uuid4().hex
    entry = ledger.claim(key, backend, request_key, owner=owner, lease_s=lease_s)
    if entry.provider_job_id is not None:
        return entry.provider_job_id
    if entry.owner != owner:
        raise SubmissionInProgress(key, entry.owner)
    if entry.claims > 1 and isinstance(provider, FindsJobs):
        # A previous claim died between the provider's acceptance and our record.
        found = provider.find_job(backend, key)
        if found is not None:
            return ledger.record_submission(key, found).provider_job_id or found
    provider_job_id = provider.submit(backend, request, idempotency_key=key)
    recorded = ledger.record_submission(key, provider_job_id)
    return recorded.provider_job_id or provider_job_id


def poll_once(ledger: Ledger, provider: AsyncProvider, key: str) -> ProviderJobStatus:
    """Ask the provider for the job's state once and record it in the ledger.

    A final state already recorded is returned without calling the provider.

    Raises:
        NotSubmitted: The key has no provider job yet.
    """
    entry = ledger.get(key)
    if entry is None or entry.provider_job_id is None:
        raise NotSubmitted(
            f"{key} has no provider job (state {entry.state if entry else 'absent'})"
        )
    if entry.state in FINAL_STATES:
        return ProviderJobStatus(entry.state, message=entry.message)  # type: ignore[arg-type]
    status = provider.status(entry.provider_job_id)
    if status.state != entry.state or status.message != entry.message:
        ledger.set_state(key, status.state, status.message)
    return status


# --------------------------------------------------------------------------- retries


def backoff_delays(
    attempts: int,
    base_delay: float,
    max_delay: float = 60.0,
    *,
    jitter: Callable[[], float] | None = None,
) -> list[float]:
    """Delays before retries: ``min(max_delay, base * 2**i)`` times a jitter factor."""
    draw = jitter or (lambda: 1.0)
    return [min(max_delay, base_delay * 2**i) * draw() for i in range(max(0, attempts - 1))]


def with_retries(
    fn: Callable[[], T],
    attempts: int = 5,
    base_delay: float = 1.0,
    *,
    max_delay: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] | None = None,
) -> T:
    """Call ``fn``; retry retryable :class:`ProviderError` with exponential backoff.

    Non-retryable errors and every other exception propagate at once; after
    ``attempts`` tries the last retryable error propagates. ``jitter`` (default:
    uniform in [0.5, 1]) spreads retries of many dispatchers hitting one quota.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    draw = jitter if jitter is not None else (lambda: random.uniform(0.5, 1.0))
    delays = backoff_delays(attempts, base_delay, max_delay, jitter=draw)
    for attempt in range(attempts):
        try:
            return fn()
        except ProviderError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
            sleep(delays[attempt])
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """How hard qlayer may push one backend.

    Attributes:
        max_in_flight: Provider jobs queued or running at once.
        submits_per_s: Sustained submissions per second (token bucket rate).
        burst: Submissions allowed at once above the rate (bucket size).
        max_pubs: PUBs one provider job may carry (the coalescer's cap).
        source: Where the numbers come from.
    """

    max_in_flight: int
    submits_per_s: float
    burst: int
    max_pubs: int = 300
    source: str = ""


#: Defaults from the providers' published quotas. Override per backend or per
#: provider with ``RateLimiter(overrides)`` (e.g. from qlayer config or env).
DEFAULT_LIMITS: dict[str, Limits] = {
    # IBM Quantum: the Open Plan allows at most 3 jobs pending (queued or running)
    # across all QPUs; a 4th is refused with error 3458 (docs.quantum.ibm.com/guides/instances).
    # Job creation (POST /v1/jobs) is limited to 5 per minute per IAM token (Qiskit
    # Runtime REST API description). Paid plans may raise max_in_flight.
    "ibm": Limits(
        max_in_flight=3,
        submits_per_s=5 / 60,
        burst=3,
        max_pubs=300,
        source="IBM Open Plan: 3 pending jobs; 5 job creations/min per token",
    ),
    # Amazon Braket service quotas (docs.aws.amazon.com/braket/latest/developerguide/
    # braket-quotas.html): CreateQuantumTask 20/s (burst 40, not adjustable);
    # concurrent tasks SV1 35, DM1 35, TN1 10. QPUs queue server-side: we keep a
    # modest number in flight to bound spend.
    "braket": Limits(
        max_in_flight=10,
        submits_per_s=20.0,
        burst=40,
        max_pubs=1,
        source="Braket quotas: CreateQuantumTask 20/s burst 40",
    ),
    "braket_sv1": Limits(35, 20.0, 40, 1, "Braket quotas: 35 concurrent SV1 tasks"),
    "braket_dm1": Limits(35, 20.0, 40, 1, "Braket quotas: 35 concurrent DM1 tasks"),
    "braket_tn1": Limits(10, 20.0, 40, 1, "Braket quotas: 10 concurrent TN1 tasks"),
    "braket_local": Limits(2, 1000.0, 1000, 1, "local simulator: this machine's cores"),
    # Our own simulators: bounded by local cores / Lambda concurrency, not a quota.
    "aer": Limits(
        max_in_flight=2, submits_per_s=1000.0, burst=1000, max_pubs=10_000, source="local compute"
    ),
}


def provider_of(backend: str) -> str:
    """``ibm_brisbane`` -> ``ibm``; ``braket_sv1`` -> ``braket``; anything else -> ``aer``."""
    head = backend.split("_", 1)[0]
    if head in ("ibm", "braket"):
        return head
    if backend.startswith("arn:aws:braket"):
        return "braket"
    return "aer"


class RateLimiter:
    """Per-backend token bucket for submissions plus an in-flight cap.

    Pure logic with an injected clock. ``try_acquire`` answers how long to wait
    (0 = go now and one token is taken). In-flight counts come either from this
    object's own ``acquire``/``release`` bookkeeping (one process) or from the
    caller (the AWS dispatcher counts active ledger entries).
    """

    def __init__(
        self,
        overrides: dict[str, Limits] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {**DEFAULT_LIMITS, **(overrides or {})}
        self._clock = clock
        self._tokens: dict[str, float] = {}
        self._stamp: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def limits_for(self, backend: str) -> Limits:
        """Exact backend name first, then the longest configured prefix (``ibm`` for
        ``ibm_torino``, a plugin's prefix for its backends), then its provider's defaults."""
        exact = self._limits.get(backend)
        if exact is not None:
            return exact
        prefixes = [name for name in self._limits if backend.startswith(name + "_")]
        if prefixes:
            return self._limits[max(prefixes, key=len)]
        return self._limits[provider_of(backend)]

    def in_flight(self, backend: str) -> int:
        return self._in_flight.get(backend, 0)

    def try_acquire(self, backend: str, *, in_flight: int | None = None) -> float:
        """0.0 when a submission may go now (a token is taken and in-flight counted);
        otherwise the seconds to wait (``inf`` when the in-flight cap is reached)."""
        limits = self.limits_for(backend)
        with self._lock:
            current = self._in_flight.get(backend, 0) if in_flight is None else in_flight
            if current >= limits.max_in_flight:
                return float("inf")
            now = self._clock()
            tokens = self._tokens.get(backend, float(limits.burst))
            tokens = min(
                float(limits.burst),
                tokens + (now - self._stamp.get(backend, now)) * limits.submits_per_s,
            )
            self._stamp[backend] = now
            if tokens < 1.0:
                self._tokens[backend] = tokens
                return (1.0 - tokens) / limits.submits_per_s
            self._tokens[backend] = tokens - 1.0
            self._in_flight[backend] = self._in_flight.get(backend, 0) + 1
            return 0.0

    def release(self, backend: str) -> None:
        """A provider job of ``backend`` ended (or its submission failed)."""
        with self._lock:
            self._in_flight[backend] = max(0, self._in_flight.get(backend, 0) - 1)

    def acquire(
        self,
        backend: str,
        *,
        timeout: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = 1.0,
    ) -> bool:
        """Block until a submission may go; False when ``timeout`` passes first."""
        waited = 0.0
        while True:
            wait = self.try_acquire(backend)
            if wait == 0.0:
                return True
            step = poll_s if wait == float("inf") else min(wait, poll_s * 10)
            if timeout is not None and waited + step > timeout:
                return False
            sleep(step)
            waited += step


# --------------------------------------------------------------------------- coalescing


@dataclass
class CoalescedBatch:
    """Requests merged into one provider job.

    Attributes:
        key: The batch's own idempotency key (derived from its members' keys).
        backend: Backend name.
        request: The merged request (PUBs concatenated in member order).
        ranges: ``(member key, start, stop)``: the member's PUBs in the merged job.
    """

    key: str
    backend: str
    request: ExecuteRequest
    ranges: list[tuple[str, int, int]]

    def split(self, result: PrimitiveResult) -> dict[str, PrimitiveResult]:
        """The merged job's result cut back into one ``PrimitiveResult`` per member."""
        from qiskit.primitives import PrimitiveResult

        pub_results = list(result)
        total = self.ranges[-1][2] if self.ranges else 0
        if len(pub_results) != total:
            raise ValueError(
                f"coalesced job {self.key} returned {len(pub_results)} PUB results, not {total}"
            )
        out: dict[str, PrimitiveResult] = {}
        for key, start, stop in self.ranges:
            metadata = dict(result.metadata or {})
            metadata["coalesced"] = {"batch": self.key, "start": start, "stop": stop}
            out[key] = PrimitiveResult(pub_results[start:stop], metadata=metadata)
        return out


@dataclass
class _Group:
    opened_at: float
    members: list[tuple[str, ExecuteRequest]] = field(default_factory=list)
    pubs: int = 0


class Coalescer:
    """Merge small execute requests for one backend arriving within a window.

    Requests merge only when everything but their PUBs agrees (backend, primitive,
    shots, precision, seed, options), so the merged job means exactly what each
    request asked for. A group is released when its window has passed since its
    first request, or when it reaches ``max_pubs`` / ``max_requests``. Requests
    with more than ``small_pubs`` PUBs are never merged (they are jobs enough).
    """

    def __init__(
        self,
        window_s: float = 2.0,
        *,
        max_pubs: int = 300,
        max_requests: int = 50,
        small_pubs: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_pubs = max_pubs
        self.max_requests = max_requests
        self.small_pubs = small_pubs
        self._clock = clock
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self._ready: list[CoalescedBatch] = []

    @staticmethod
    def compat_key(request: ExecuteRequest) -> tuple[Any, ...]:
        options = tuple(sorted((k, repr(v)) for k, v in (request.options or {}).items()))
        return (
            request.backend,
            request.primitive,
            request.shots,
            request.precision,
            request.seed,
            options,
        )

    def add(self, key: str, request: ExecuteRequest) -> None:
        """Queue one request under its idempotency key."""
        now = self._clock()
        if len(request.pubs) > self.small_pubs:
            self._ready.append(self._batch([(key, request)]))
            return
        group_key = self.compat_key(request)
        group = self._groups.get(group_key)
        if group is not None and group.pubs + len(request.pubs) > self.max_pubs:
            self._ready.append(self._batch(group.members))
            group = None
        if group is None:
            group = self._groups[group_key] = _Group(opened_at=now)
        group.members.append((key, request))
        group.pubs += len(request.pubs)
        if group.pubs >= self.max_pubs or len(group.members) >= self.max_requests:
            self._ready.append(self._batch(group.members))
            del self._groups[group_key]

    def ready(self) -> list[CoalescedBatch]:
        """Batches to submit now (full ones, and groups whose window has passed)."""
        now = self._clock()
        for group_key, group in list(self._groups.items()):
            # The same arithmetic as next_deadline(): a caller that sleeps until that
            # deadline must find the group ready (now - opened_at may round below window).
            if now >= group.opened_at + self.window_s:
                self._ready.append(self._batch(group.members))
                del self._groups[group_key]
        out, self._ready = self._ready, []
        return out

    def flush(self) -> list[CoalescedBatch]:
        """Every queued request as batches, window or not (shutdown, tests)."""
        for group in self._groups.values():
            self._ready.append(self._batch(group.members))
        self._groups.clear()
        out, self._ready = self._ready, []
        return out

    def next_deadline(self) -> float | None:
        """Clock time when the oldest open group's window passes (None: nothing open)."""
        if not self._groups:
            return None
        return min(group.opened_at for group in self._groups.values()) + self.window_s

    @staticmethod
    def _batch(members: list[tuple[str, ExecuteRequest]]) -> CoalescedBatch:
        first = members[0][1]
        if len(members) == 1:
            return CoalescedBatch(
                members[0][0], first.backend, first, [(members[0][0], 0, len(first.pubs))]
            )
        pubs: list[Any] = []
        ranges: list[tuple[str, int, int]] = []
        for key, request in members:
            ranges.append((key, len(pubs), len(pubs) + len(request.pubs)))
            pubs.extend(request.pubs)
        digest = hashlib.sha256("\n".join(key for key, _ in members).encode()).hexdigest()[:24]
        merged = replace(first, pubs=pubs, then="")
        return CoalescedBatch(f"coalesced/{digest}", first.backend, merged, ranges)
