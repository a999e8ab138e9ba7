"""The ledger port: one durable record per execute request sent to a provider.

The record is keyed by the request's idempotency key ``<job-id>/<seq>`` and moves through
these states::

    WAITING ──claim──▶ CLAIMED ──record_submission──▶ SUBMITTED ──▶ QUEUED / RUNNING
       │                  │                                            │
       └──────────────────┴──────────── finish / set_state ───────────▶ DONE | ERROR | CANCELLED

* WAITING: recorded, held back by its backend's limits (nothing sent to the provider);
* CLAIMED: a dispatcher holds a lease and may be calling the provider;
* SUBMITTED: the provider accepted it (the entry has the provider's job id), then the
  provider's own states as polled.

SQLite (:class:`qlayer.local.ledger.SqliteLedger`), DynamoDB
(:class:`qlayer.aws.ledger.DynamoLedger`) and memory (:class:`MemoryLedger`) implement
it; ``tests/contract/test_ledger_contract.py`` holds all three to the contracts below.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

#: Every state, in lifecycle order.
LEDGER_STATES = (
    "WAITING",
    "CLAIMED",
    "SUBMITTED",
    "QUEUED",
    "RUNNING",
    "DONE",
    "ERROR",
    "CANCELLED",
)
FINAL_STATES = frozenset({"DONE", "ERROR", "CANCELLED"})
#: Not ended: what a poller, a recovery or a cancel looks at.
OPEN_STATES = ("WAITING", "CLAIMED", "SUBMITTED", "QUEUED", "RUNNING")
#: Submitted to the provider and not ended: what a poller polls.
POLLED_STATES = ("SUBMITTED", "QUEUED", "RUNNING")


class Slot(IntEnum):
    """What :meth:`Ledger.take_slot` did; false only for :attr:`NONE`.

    Only the caller that got :attr:`TAKEN` may give the slot back because its submission
    did not go: :attr:`HELD` means another dispatcher (or a dead one, whose work a
    takeover resumes) took it, and may be submitting under it now.
    """

    NONE = 0  #: no slot: every one is taken, or the entry ended or is missing
    TAKEN = 1  #: taken by this call
    HELD = 2  #: the entry held one already; it keeps it


#: How long a claim protects an entry from a concurrent duplicate before another
#: dispatcher may take it over (must exceed one submit call with its retries).
DEFAULT_LEASE_S = 300.0


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
        owner: Who holds (or last held) the claim.
        lease_until: Epoch seconds until which the owner's claim is exclusive.
        claims: How many times the entry was claimed (more than 1: a takeover, so the
            provider may have accepted an earlier attempt: ask ``find_job`` first).
        token: Who waits for the outcome (a Step Functions task token on AWS), or None.
        heartbeat_s: How long the waiter goes without news before it gives up (the token's
            heartbeat timeout), or None.
        heartbeat_at: Epoch seconds of the last news sent to the waiter (0: none yet).
        outcome: The decision recorded once the request ended (JSON), or None.
        slot: The entry holds one of its backend's in-flight slots.
        created_at: Epoch seconds (the order entries wait in).
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
    token: str | None = None
    heartbeat_s: float | None = None
    heartbeat_at: float = 0.0
    outcome: dict[str, Any] | None = None
    slot: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def job_id(self) -> str:
        return self.key.rpartition("/")[0]

    @property
    def seq(self) -> int | None:
        tail = self.key.rpartition("/")[2]
        return int(tail) if tail.isdigit() else None

    def heartbeat_due(self, now: float) -> bool:
        """Whether the waiter should hear that the request is alive: a third of its
        heartbeat timeout has passed since the last news (always, if it has no timeout)."""
        if self.token is None:
            return False
        if not self.heartbeat_s:
            return True
        return now - max(self.heartbeat_at, self.created_at) >= self.heartbeat_s / 3


class Ledger(ABC):
    """Durable record of submissions. Each method is atomic (a conditional write in
    DynamoDB, one transaction in SQLite, a lock in memory)."""

    @abstractmethod
    def hold(
        self,
        key: str,
        backend: str,
        request_key: str,
        *,
        token: str | None = None,
        heartbeat_s: float | None = None,
    ) -> LedgerEntry:
        """Record a request that waits for its backend (WAITING), if there is no entry.

        An existing entry, in any state, is returned unchanged except for ``token`` (and
        its ``heartbeat_s``): a newer token (a state re-entered by a retry brings one)
        replaces the old one.
        """

    @abstractmethod
    def record_heartbeat(self, key: str) -> None:
        """Record that the waiter was just told the request is alive (``heartbeat_at``)."""

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
        """Take the right to call the provider for ``key``; return the entry.

        Creates a CLAIMED entry if there is none; claims a WAITING entry (``claims`` 1);
        takes over a CLAIMED entry without a provider job id whose lease has passed
        (``claims`` + 1). Anything else — a live claim by someone else, an entry with a
        provider job id, an ended entry — is returned as it is. The caller owns the
        claim when ``entry.owner == owner and entry.state == "CLAIMED"``.
        """

    @abstractmethod
    def release(self, key: str, owner: str) -> bool:
        """End ``owner``'s lease now (its provider call failed before an id was recorded),
        so the next claim takes over at once. False if ``owner`` held no such claim."""

    @abstractmethod
    def record_submission(self, key: str, provider_job_id: str) -> LedgerEntry:
        """Set the provider job id if none is set yet (first writer wins).

        A CLAIMED entry becomes SUBMITTED; an entry cancelled while its submission was in
        flight stays CANCELLED but gets the id, so its caller can cancel the provider job.

        Raises:
            KeyError: There is no entry.
        """

    @abstractmethod
    def set_state(self, key: str, state: str, message: str | None = None) -> LedgerEntry:
        """Record the provider job's state (and the provider's words). A final state gives
        back the entry's slot.

        Raises:
            KeyError: There is no entry.
            ValueError: ``state`` is not one of :data:`LEDGER_STATES`.
        """

    @abstractmethod
    def record_outcome(self, key: str, outcome: Mapping[str, Any]) -> bool:
        """Record the decision of an entry that has none and has not ended: True for the
        caller that wrote it (of two pollers that saw the end, one delivers)."""

    @abstractmethod
    def finish(
        self,
        key: str,
        state: str,
        *,
        outcome: Mapping[str, Any] | None = None,
        message: str | None = None,
    ) -> bool:
        """End an entry that has not ended (``state``: DONE, ERROR or CANCELLED) and give
        back its slot, in one write. True when this call ended it; False (nothing
        changed) if it had ended or does not exist."""

    @abstractmethod
    def take_slot(self, key: str, max_in_flight: int) -> Slot:
        """Take one of the entry's backend's ``max_in_flight`` slots. Never more than
        ``max_in_flight`` entries of one backend hold a slot at once. An entry that holds
        one keeps it (:attr:`Slot.HELD`); an ended or missing entry gets none
        (:attr:`Slot.NONE`); otherwise :attr:`Slot.TAKEN` or, all taken, ``NONE``."""

    @abstractmethod
    def give_back_slot(self, key: str) -> bool:
        """Give back the entry's slot without ending it (its submission did not go)."""

    @abstractmethod
    def in_flight(self, backend: str) -> int:
        """How many entries of ``backend`` hold a slot."""

    @abstractmethod
    def get(self, key: str) -> LedgerEntry | None:
        """The entry, or None."""

    @abstractmethod
    def entries_in(self, states: Iterable[str], *, backend: str | None = None) -> list[LedgerEntry]:
        """Entries in one of ``states`` (of one backend, if given), oldest first."""


class MemoryLedger(Ledger):
    """The ledger in memory, with the same atomicity as the durable ones (one lock).

    For a dispatcher that needs no durability (a benchmark, a one-process tool).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[str, LedgerEntry] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def hold(
        self,
        key: str,
        backend: str,
        request_key: str,
        *,
        token: str | None = None,
        heartbeat_s: float | None = None,
    ) -> LedgerEntry:
        with self._lock:
            now = self._clock()
            entry = self._entries.get(key)
            if entry is None:
                entry = LedgerEntry(
                    key,
                    backend,
                    request_key,
                    state="WAITING",
                    claims=0,
                    token=token,
                    heartbeat_s=heartbeat_s,
                    created_at=now,
                    updated_at=now,
                )
            elif token is not None and token != entry.token:
                entry = replace(entry, token=token, heartbeat_s=heartbeat_s, updated_at=now)
            self._entries[key] = entry
            return entry

    def record_heartbeat(self, key: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries[key] = replace(entry, heartbeat_at=self._clock())

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
            elif entry.state == "WAITING":
                entry = replace(
                    entry,
                    state="CLAIMED",
                    owner=owner,
                    lease_until=now + lease_s,
                    claims=1,
                    updated_at=now,
                )
            elif (
                entry.state == "CLAIMED"
                and entry.provider_job_id is None
                and entry.lease_until <= now
            ):
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

    def release(self, key: str, owner: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if (
                entry is None
                or entry.owner != owner
                or entry.state != "CLAIMED"
                or entry.provider_job_id is not None
            ):
                return False
            self._entries[key] = replace(entry, lease_until=0.0, updated_at=self._clock())
            return True

    def record_submission(self, key: str, provider_job_id: str) -> LedgerEntry:
        with self._lock:
            entry = self._require(key)
            if entry.provider_job_id is None:
                state = "SUBMITTED" if entry.state == "CLAIMED" else entry.state
                entry = replace(
                    entry, provider_job_id=provider_job_id, state=state, updated_at=self._clock()
                )
                self._entries[key] = entry
            return entry

    def set_state(self, key: str, state: str, message: str | None = None) -> LedgerEntry:
        check_state(state)
        with self._lock:
            entry = self._require(key)
            entry = replace(
                entry,
                state=state,
                message=message,
                slot=entry.slot and state not in FINAL_STATES,
                updated_at=self._clock(),
            )
            self._entries[key] = entry
            return entry

    def record_outcome(self, key: str, outcome: Mapping[str, Any]) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.outcome is not None or entry.state in FINAL_STATES:
                return False
            self._entries[key] = replace(entry, outcome=dict(outcome), updated_at=self._clock())
            return True

    def finish(
        self,
        key: str,
        state: str,
        *,
        outcome: Mapping[str, Any] | None = None,
        message: str | None = None,
    ) -> bool:
        check_final(state)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.state in FINAL_STATES:
                return False
            self._entries[key] = replace(
                entry,
                state=state,
                outcome=dict(outcome) if outcome is not None else entry.outcome,
                message=message if message is not None else entry.message,
                slot=False,
                updated_at=self._clock(),
            )
            return True

    def take_slot(self, key: str, max_in_flight: int) -> Slot:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.state in FINAL_STATES:
                return Slot.NONE
            if entry.slot:
                return Slot.HELD
            used = sum(1 for e in self._entries.values() if e.slot and e.backend == entry.backend)
            if used >= max_in_flight:
                return Slot.NONE
            self._entries[key] = replace(entry, slot=True)
            return Slot.TAKEN

    def give_back_slot(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.slot:
                return False
            self._entries[key] = replace(entry, slot=False)
            return True

    def in_flight(self, backend: str) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.slot and e.backend == backend)

    def get(self, key: str) -> LedgerEntry | None:
        with self._lock:
            return self._entries.get(key)

    def entries_in(self, states: Iterable[str], *, backend: str | None = None) -> list[LedgerEntry]:
        wanted = set(states)
        with self._lock:
            found = [
                e
                for e in self._entries.values()
                if e.state in wanted and (backend is None or e.backend == backend)
            ]
        return sorted(found, key=lambda e: (e.created_at, e.key))

    def _require(self, key: str) -> LedgerEntry:
        if key not in self._entries:
            raise KeyError(f"no ledger entry for {key!r}")
        return self._entries[key]


def check_state(state: str) -> None:
    """Raise ValueError unless ``state`` is one of :data:`LEDGER_STATES`."""
    if state not in LEDGER_STATES:
        raise ValueError(f"unknown ledger state {state!r}; expected one of {LEDGER_STATES}")


def check_final(state: str) -> None:
    """Raise ValueError unless ``state`` ends an entry."""
    if state not in FINAL_STATES:
        raise ValueError(f"finish takes DONE, ERROR or CANCELLED, not {state!r}")
