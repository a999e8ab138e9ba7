"""Coalescing for providers with a queue: compatible waiting requests share one provider job.

The merge rules are :mod:`qlayer.dispatch.coalesce`'s (the simulated devices' too): same
backend, primitive, shots, precision and options, no seed, small requests, capped in PUBs
and members. What this module adds is doing it over a :class:`~qlayer.dispatch.Ledger`,
exactly once, for the local pump and the AWS dispatcher and poller alike.

How a batch lives in the ledger
-------------------------------
* Each member keeps its own entry (``<job-id>/<seq>``): its waiter, its outcome, its
  cancel. :func:`form` claims the members (atomically: a request is in one batch at most),
  writes the merged request and the batch's manifest to the artifact store
  (:data:`ARTIFACTS`), marks each
  member's entry with its batch (``message``: ``coalesced into <batch>``), and holds one
  entry for the batch itself (``coalesced/<digest>``), WAITING like any request.
* The batch entry is admitted (one in-flight slot for the one provider job) and submitted
  with :func:`submit_batch`: ``submit_once`` under the batch's key, so a restart, a
  redelivery or a second dispatcher re-attaches to the one provider job by its id (or, for
  a claim that died mid-call, ``find_job`` by the batch's key) and never submits twice.
  Then every member records a *share* of it as its provider job: ``<batch>#<start>:<stop>/
  <total>``, its PUB range in the merged job.
* :class:`Shares` wraps the provider so that ``poll_once``, ``follow`` and ``cancel_once``
  work on members unchanged: a share's status is the provider job's (one provider call
  for all members within :attr:`Shares.status_ttl_s`), its usage the member's part (by
  PUBs), its result the member's own PUB results (fetched once), its cancel a cancel of the
  provider job only once every other member has ended too — cancelling one member never
  loses the others. The batch entry ends when its provider job does.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qlayer.dispatch import coalesce
from qlayer.dispatch.calls import FindsJobs, Retry, _call, cancel_once, submit_once
from qlayer.dispatch.ledger import FINAL_STATES, Ledger, LedgerEntry
from qlayer.dispatch.rates import RateLimiter
from qlayer.providers.base import AsyncProvider, BackendInfo, ProviderJobStatus

if TYPE_CHECKING:
    from qiskit.primitives import PrimitiveResult
    from qiskit.transpiler import Target

    from qlayer.request import ExecuteRequest
    from qlayer.store.base import ArtifactStore

PREFIX = "coalesced/"
MARK = "coalesced into "


def is_batch(key: str) -> bool:
    """Whether a ledger key names a batch (not one request)."""
    return key.startswith(PREFIX)


def batch_of(entry: LedgerEntry) -> str | None:
    """The batch a member entry belongs to (before or after its submission), or None."""
    if entry.provider_job_id and is_batch(entry.provider_job_id):
        return entry.provider_job_id.partition("#")[0]
    if entry.provider_job_id is None and entry.message and entry.message.startswith(MARK):
        return entry.message[len(MARK) :]
    return None


#: Where a batch's merged request and manifest are kept: under ``jobs/`` (the prefix the
#: dispatcher and poller may write on AWS), in a folder no job id can name.
ARTIFACTS = "jobs/_coalesced/"


def _artifact(batch: str, name: str) -> str:
    return f"{ARTIFACTS}{batch[len(PREFIX) :]}/{name}"


def manifest_key(batch: str) -> str:
    return _artifact(batch, "manifest.json")


@dataclass(frozen=True)
class Share:
    """A member's part of a batch's provider job: PUBs ``start:stop`` of ``total``."""

    batch: str
    start: int
    stop: int
    total: int

    @property
    def ref(self) -> str:
        return f"{self.batch}#{self.start}:{self.stop}/{self.total}"

    @classmethod
    def parse(cls, ref: str) -> Share:
        batch, _, span = ref.partition("#")
        pubs, _, total = span.partition("/")
        start, _, stop = pubs.partition(":")
        return cls(batch, int(start), int(stop), int(total))


def ready(ledger: Ledger, limiter: RateLimiter, backend: str) -> bool:
    """Whether ``backend`` could take a provider job now (a free slot, a token due).

    Batches are formed then, not before: as on a simulated device, what is queued when the
    device can take its next job goes together, and a request that finds the device free
    goes at once, alone.
    """
    limits = limiter.limits_for(backend)
    return ledger.in_flight(backend) < limits.max_in_flight and limiter.token_wait(backend) == 0


def form(
    ledger: Ledger,
    store: ArtifactStore,
    entries: Iterable[LedgerEntry],
    *,
    owner: str | None = None,
    max_pubs: int = coalesce.MAX_PUBS,
) -> list[str]:
    """Group waiting requests into batches; return the new batches' keys (held WAITING).

    ``max_pubs``: what one provider job of the backend may carry (its
    :class:`~qlayer.dispatch.RateLimits` ``max_pubs``; 1 for Braket: nothing merges).

    Only entries that have never been claimed take part (a takeover may belong to a batch
    already). A request is claimed before it joins, so of two dispatchers forming at once
    each gets its own members; a group left with one member is released, unchanged but for
    its claim (the next ``submit_once`` asks ``find_job`` first).
    """
    if not coalesce.enabled():
        return []
    owner = owner or uuid.uuid4().hex
    groups: dict[tuple[Any, ...], list[tuple[LedgerEntry, dict[str, Any]]]] = {}
    for entry in entries:
        if entry.state != "WAITING" or entry.claims or is_batch(entry.key) or entry.seq is None:
            continue
        raw = store.get_json(entry.request_key)
        key = coalesce.compat_key(raw)
        if key is not None:
            groups.setdefault(key, []).append((entry, raw))
    formed = []
    for members in groups.values():
        for chunk in _chunks(members, min(max_pubs, coalesce.MAX_PUBS)):
            batch = _form_one(ledger, store, chunk, owner)
            if batch is not None:
                formed.append(batch)
    return formed


def _chunks(
    members: list[tuple[LedgerEntry, dict[str, Any]]], max_pubs: int
) -> Iterable[list[tuple[LedgerEntry, dict[str, Any]]]]:
    chunk: list[tuple[LedgerEntry, dict[str, Any]]] = []
    pubs = 0
    for member in members:
        size = len(member[1]["pubs"])
        if chunk and (pubs + size > max_pubs or len(chunk) >= coalesce.MAX_MEMBERS):
            if len(chunk) > 1:
                yield chunk
            chunk, pubs = [], 0
        chunk.append(member)
        pubs += size
    if len(chunk) > 1:
        yield chunk


def _form_one(
    ledger: Ledger,
    store: ArtifactStore,
    chunk: list[tuple[LedgerEntry, dict[str, Any]]],
    owner: str,
) -> str | None:
    from qlayer.request import decode_request, encode_request

    mine = []
    for entry, raw in chunk:
        claimed = ledger.claim(entry.key, entry.backend, entry.request_key, owner=owner)
        if claimed.owner == owner and claimed.state == "CLAIMED" and claimed.claims == 1:
            mine.append((claimed, raw))
    if len(mine) < 2:
        for entry, _ in mine:
            ledger.release(entry.key, owner)
        return None
    keys = [entry.key for entry, _ in mine]
    batch = PREFIX + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]
    sizes = [len(raw["pubs"]) for _, raw in mine]
    merged = coalesce.merge([decode_request(raw) for _, raw in mine])
    request_key = _artifact(batch, "request.json")
    store.put_json(request_key, encode_request(merged, None, where=batch))
    ranges = coalesce.ranges_of(sizes)
    store.put_json(
        manifest_key(batch),
        {"members": [[key, a, b] for key, (a, b) in zip(keys, ranges, strict=True)]},
    )
    # The batch's entry first, then the marks: a marked member always finds its batch. A
    # member the process died before marking goes alone once its lease has passed, and
    # is no member (submit_batch gives shares to marked members only).
    ledger.hold(batch, mine[0][0].backend, request_key)
    for key in keys:  # the mark survives a crash: a takeover finds its batch
        ledger.set_state(key, "CLAIMED", MARK + batch)
    return batch


def members(store: ArtifactStore, batch: str) -> list[Share]:
    """The batch's members' shares, in PUB order (from its manifest)."""
    rows = store.get_json(manifest_key(batch))["members"]
    total = rows[-1][2] if rows else 0
    return [Share(batch, int(a), int(b), int(total)) for _, a, b in rows]


def member_keys(store: ArtifactStore, batch: str) -> list[str]:
    return [str(row[0]) for row in store.get_json(manifest_key(batch))["members"]]


def submit_batch(
    ledger: Ledger,
    provider: AsyncProvider,
    store: ArtifactStore,
    batch: str,
    *,
    owner: str | None = None,
    retry: Retry = _call,
) -> tuple[str, list[str]] | None:
    """Submit the batch's provider job exactly once; give each member its share.

    The caller has admitted the batch entry (it holds the slot). A batch whose members
    have all ended (cancelled before their turn) is ended CANCELLED, nothing sent.

    Returns:
        The provider job id and the keys of the members that got their share in this call
        (not those given one before); None when nothing was sent.

    Raises:
        SubmissionInProgress, SubmissionEnded, ProviderError: as ``submit_once``.
    """
    from qlayer.request import decode_request

    entry = ledger.get(batch)
    if entry is None:
        return None
    keys = member_keys(store, batch)
    if entry.provider_job_id is None:
        live = [
            e
            for e in map(ledger.get, keys)
            if e is not None and e.state not in FINAL_STATES and batch_of(e) == batch
        ]
        if not live:
            ledger.finish(batch, "CANCELLED", message="no member waits for it any more")
            return None
    request = decode_request(store.get_json(entry.request_key))
    provider_job_id = submit_once(
        ledger,
        provider,
        batch,
        entry.backend,
        request,
        request_key=entry.request_key,
        owner=owner,
        retry=retry,
    )
    given = []
    for key, share in zip(keys, members(store, batch), strict=True):
        before = ledger.get(key)
        if before is None or before.provider_job_id is not None or batch_of(before) != batch:
            continue  # given before (a repeat), or never marked (it went alone)
        recorded = ledger.record_submission(key, share.ref)
        if recorded.provider_job_id == share.ref and recorded.state not in FINAL_STATES:
            given.append(key)
    return provider_job_id, given


class Shares(AsyncProvider):
    """A provider whose job ids may be members' shares of a batch (see the module).

    Any other id goes to ``inner`` unchanged, so wrapping every provider is harmless.

    Args:
        inner: The provider.
        ledger: Where the batch entries are.
        store: Where the batches' manifests are.
        status_ttl_s: How long one status of a batch's provider job answers for all its
            members (one provider call per round of polls, not one per member).
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        inner: AsyncProvider,
        ledger: Ledger,
        store: ArtifactStore,
        *,
        status_ttl_s: float = 1.0,
        retry: Retry = _call,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.ledger = ledger
        self.store = store
        self.status_ttl_s = status_ttl_s
        self.retry = retry
        self._clock = clock
        self._lock = threading.Lock()
        # The latest batches' status and result, for their members (bounded: a long-running
        # daemon keeps one of these per backend).
        self._statuses: OrderedDict[str, tuple[float, ProviderJobStatus]] = OrderedDict()
        self._results: OrderedDict[str, PrimitiveResult] = OrderedDict()

    # -- delegated ----------------------------------------------------------------------
    def backends(self) -> list[BackendInfo]:
        return self.inner.backends()

    def target(self, backend: str) -> Target:
        return self.inner.target(backend)

    def submit(self, backend: str, request: ExecuteRequest, *, idempotency_key: str) -> str:
        return self.inner.submit(backend, request, idempotency_key=idempotency_key)

    def find_job(self, backend: str, idempotency_key: str) -> str | None:
        entry = self.ledger.get(idempotency_key)
        if entry is not None and batch_of(entry):
            return None  # a member is never a provider job of its own
        if isinstance(self.inner, FindsJobs):
            return self.inner.find_job(backend, idempotency_key)
        return None

    def take_notes(self, idempotency_key: str) -> list[str]:
        return self.inner.take_notes(idempotency_key)

    def close_group(self, group: str) -> dict[str, float | None]:
        return self.inner.close_group(group)

    # -- shares -------------------------------------------------------------------------
    def provider_job_of(self, provider_job_id: str) -> str:
        """The provider's own job id behind a share (any other id as it is)."""
        if not is_batch(provider_job_id):
            return provider_job_id
        entry = self.ledger.get(Share.parse(provider_job_id).batch)
        if entry is None or entry.provider_job_id is None:
            raise LookupError(f"batch of {provider_job_id} has no provider job")
        return entry.provider_job_id

    def status(self, provider_job_id: str) -> ProviderJobStatus:
        if not is_batch(provider_job_id):
            return self.inner.status(provider_job_id)
        share = Share.parse(provider_job_id)
        real = self.provider_job_of(provider_job_id)
        with self._lock:  # members polled at once (on threads) make one provider call
            now = self._clock()
            cached = self._statuses.get(real)
            fresh = cached is None or now - cached[0] > self.status_ttl_s
            if fresh:
                status = self.inner.status(real)
                _keep(self._statuses, real, (now, status))
            else:
                assert cached is not None
                status = cached[1]
        if fresh and status.state in FINAL_STATES:  # the batch's slot comes back
            self.ledger.finish(share.batch, status.state, message=status.message)
        usage = status.usage_seconds
        if usage is not None and share.total:
            usage = usage * (share.stop - share.start) / share.total
        return ProviderJobStatus(
            status.state,
            queue_position=status.queue_position,
            message=status.message,
            usage_seconds=usage,
        )

    def result(self, provider_job_id: str) -> PrimitiveResult:
        if not is_batch(provider_job_id):
            return self.inner.result(provider_job_id)
        share = Share.parse(provider_job_id)
        real = self.provider_job_of(provider_job_id)
        with self._lock:  # fetched once for every member
            merged = self._results.get(real)
            if merged is None:
                merged = self.inner.result(real)
                _keep(self._results, real, merged)
        shares = members(self.store, share.batch)
        parts = coalesce.split(merged, [s.stop - s.start for s in shares])
        return parts[[s.start for s in shares].index(share.start)]

    def cancel(self, provider_job_id: str) -> None:
        """A member's cancel: the provider job is cancelled once no other member needs it."""
        if not is_batch(provider_job_id):
            self.inner.cancel(provider_job_id)
            return
        batch = Share.parse(provider_job_id).batch
        others = [self.ledger.get(key) for key in member_keys(self.store, batch)]
        if all(e is None or e.state in FINAL_STATES for e in others):
            cancel_once(self.ledger, self.inner, batch, retry=self.retry)


#: How many batches' statuses and results a :class:`Shares` keeps.
KEPT = 64


def _keep(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > KEPT:
        cache.popitem(last=False)
