"""Coalescing: small execute requests for one backend share one provider job.

One set of rules for every place that merges (the simulated-device queue of the local
daemon, providers with a queue on both substrates — :mod:`qlayer.dispatch.batches` — and
the windowed :class:`Coalescer` of the dispatcher benchmark):

* requests merge only when the merged job means exactly what each asked for — same
  backend, primitive, shots, precision and options — and none is seeded (a seeded
  request's results must not depend on what else was queued);
* requests with more than :data:`SMALL_PUBS` PUBs are jobs enough on their own;
* a merged job holds at most :data:`MAX_PUBS` PUBs and :data:`MAX_MEMBERS` requests;
* the merged result is cut back by PUB ranges (:func:`split`), each member getting
  exactly its own PUB results.

Coalescing is on unless ``QLAYER_COALESCE=0``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qiskit.primitives import PrimitiveResult

    from qlayer.request import ExecuteRequest

SMALL_PUBS = 20
MAX_PUBS = 300
MAX_MEMBERS = 50


def enabled() -> bool:
    """Coalescing is on unless ``QLAYER_COALESCE=0``."""
    return os.environ.get("QLAYER_COALESCE", "1") not in ("0", "false", "no")


def compat_key(request: ExecuteRequest | Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What must agree for two requests to merge; None if this one never merges.

    Takes an :class:`~qlayer.request.ExecuteRequest` or its stored JSON.
    """
    get = request.get if isinstance(request, Mapping) else lambda name: getattr(request, name)
    if get("seed") is not None or len(get("pubs") or []) > SMALL_PUBS:
        return None
    options = tuple(sorted((k, repr(v)) for k, v in (get("options") or {}).items()))
    return (get("backend"), get("primitive"), get("shots"), get("precision"), options)


def ranges_of(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """``[2, 3]`` -> ``[(0, 2), (2, 5)]``: each member's PUBs in the merged job."""
    out, start = [], 0
    for size in sizes:
        out.append((start, start + size))
        start += size
    return out


def split(result: PrimitiveResult, sizes: Sequence[int], *, batch: str | None = None) -> list[Any]:
    """Cut a merged ``PrimitiveResult`` into one per member, by the members' PUB counts.

    Each part's metadata says how it was run: ``coalesced`` is the number of members,
    or, with ``batch``, ``{"batch", "start", "stop"}``.

    Raises:
        ValueError: The merged result does not hold exactly ``sum(sizes)`` PUB results.
    """
    from qiskit.primitives import PrimitiveResult

    pubs = list(result)
    if sum(sizes) != len(pubs):
        raise ValueError(
            f"merged result has {len(pubs)} PUB results, members asked for {sum(sizes)}"
        )
    parts = []
    for start, stop in ranges_of(sizes):
        note: Any = len(sizes) if batch is None else {"batch": batch, "start": start, "stop": stop}
        parts.append(
            PrimitiveResult(pubs[start:stop], {**(result.metadata or {}), "coalesced": note})
        )
    return parts


def merge(requests: Sequence[ExecuteRequest]) -> ExecuteRequest:
    """One request carrying every member's PUBs in order (the first member's settings)."""
    first = requests[0]
    if len(requests) == 1:
        return first
    pubs = [pub for request in requests for pub in request.pubs]
    # A program prepared for one member's PUBs does not hold the others': prepared again.
    return replace(first, pubs=pubs, seed=None, prepared=None)


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
        sizes = [stop - start for _, start, stop in self.ranges]
        parts = split(result, sizes, batch=self.key)
        return {key: part for (key, _, _), part in zip(self.ranges, parts, strict=True)}


@dataclass
class _Group:
    opened_at: float
    members: list[tuple[str, ExecuteRequest]] = field(default_factory=list)
    pubs: int = 0


class Coalescer:
    """Merge small requests for one backend that arrive within a window.

    For provider queues, where a short wait buys fewer provider jobs. A group is released
    when its window has passed since its first request, or when it reaches ``max_pubs``
    or ``max_requests``. The merge rules are this module's (:func:`compat_key`).
    """

    def __init__(
        self,
        window_s: float = 2.0,
        *,
        max_pubs: int = MAX_PUBS,
        max_requests: int = MAX_MEMBERS,
        small_pubs: int = SMALL_PUBS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_pubs = max_pubs
        self.max_requests = max_requests
        self.small_pubs = small_pubs
        self._clock = clock
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self._ready: list[CoalescedBatch] = []

    def add(self, key: str, request: ExecuteRequest) -> None:
        """Queue one request under its idempotency key."""
        now = self._clock()
        group_key = compat_key(request)
        if group_key is None or len(request.pubs) > self.small_pubs:
            self._ready.append(self._batch([(key, request)]))
            return
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
            # deadline must find the group ready.
            if now >= group.opened_at + self.window_s:
                self._ready.append(self._batch(group.members))
                del self._groups[group_key]
        out, self._ready = self._ready, []
        return out

    def flush(self) -> list[CoalescedBatch]:
        """Every queued request as batches, window or not (shutdown)."""
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
        first_key, first = members[0]
        if len(members) == 1:
            return CoalescedBatch(
                first_key, first.backend, first, [(first_key, 0, len(first.pubs))]
            )
        sizes = [len(request.pubs) for _, request in members]
        ranges = [(key, a, b) for (key, _), (a, b) in zip(members, ranges_of(sizes), strict=True)]
        digest = hashlib.sha256("\n".join(key for key, _ in members).encode()).hexdigest()[:24]
        merged = replace(merge([request for _, request in members]), then="")
        return CoalescedBatch(f"coalesced/{digest}", first.backend, merged, ranges)
