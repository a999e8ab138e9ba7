"""Exactly-once provider calls over a :class:`~qlayer.dispatch.ledger.Ledger`.

The local daemon and the AWS dispatcher and poller make the same calls; they differ only
in the ledger they pass (SQLite or DynamoDB) and in how they wait.

Exactly once, end to end
------------------------
A provider job is created at most once per idempotency key (``<job-id>/<seq>``),
whatever happens around the call:

1. :func:`admit` takes one of the backend's in-flight slots in the ledger, then a token
   of its submission rate; a request that gets neither stays WAITING in the ledger.
2. :func:`submit_once` claims the entry (an atomic conditional write) and holds a lease
   on it; a second caller while the lease is live gets :class:`SubmissionInProgress`.
3. An entry that already has a provider job id is done: its id is returned.
4. An entry claimed before but without an id (the caller died after the provider
   accepted the job and before the id was recorded) is taken over once its lease has
   passed; the provider is asked first for a job carrying the key (``find_job``: IBM job
   tags, Braket task tags), and only if there is none is the job submitted.
5. ``record_submission`` is conditional (first id wins), and an entry cancelled while its
   submission was in flight gets the id anyway, so the job is cancelled, not orphaned.

:func:`poll_once` and :func:`follow` watch a submitted job and turn its end into the
step's decision; :func:`cancel_once` makes a cancel reach the provider, whatever state
the entry is in.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from qlayer.dispatch.ledger import DEFAULT_LEASE_S, FINAL_STATES, Ledger, LedgerEntry, Slot
from qlayer.dispatch.rates import RateLimiter
from qlayer.providers.base import AsyncProvider, ProviderError, ProviderJobStatus

if TYPE_CHECKING:
    from qlayer.interpreter import Decision
    from qlayer.request import ExecuteRequest
    from qlayer.store.base import ArtifactStore

T = TypeVar("T")
Retry = Callable[[Callable[[], Any]], Any]


class SubmissionInProgress(ProviderError):
    """Another dispatcher holds a live claim on this key; try again later (retryable)."""

    def __init__(self, key: str, owner: str | None) -> None:
        super().__init__(
            f"submission of {key} is in progress elsewhere (claim held by {owner})", retryable=True
        )
        self.key = key


class SubmissionEnded(ProviderError):
    """The request ended (it was cancelled) before or while it was submitted.

    Attributes:
        provider_job_id: The provider job created by a submission that was in flight when
            the cancel came (it has been cancelled at the provider), or None.
    """

    def __init__(self, key: str, state: str, provider_job_id: str | None = None) -> None:
        super().__init__(f"{key} is {state}: not submitted", retryable=False)
        self.key = key
        self.provider_job_id = provider_job_id


class NotSubmitted(LookupError):
    """The ledger has no provider job for this key."""


@runtime_checkable
class FindsJobs(Protocol):
    """Providers that can find a job by its idempotency key (tags, client token)."""

    def find_job(self, backend: str, idempotency_key: str) -> str | None: ...


def _call(fn: Callable[[], T]) -> T:
    return fn()


def admit(ledger: Ledger, limiter: RateLimiter, key: str, backend: str) -> float:
    """Let the request ``key`` go to the provider now, if the backend's limits allow.

    Takes one of the backend's in-flight slots in the ledger (counted across every
    dispatcher sharing it), then a token of its submission rate.

    Returns:
        0.0 when admitted (the entry holds a slot); ``inf`` when every slot is taken;
        otherwise the seconds until the rate allows one (the slot is given back).
    """
    limits = limiter.limits_for(backend)
    slot = ledger.take_slot(key, limits.max_in_flight)
    if not slot:
        return float("inf")
    wait_s = limiter.take_token(backend)
    if wait_s > 0 and slot is Slot.TAKEN:
        # Only a slot this call took goes back: one the entry held already may be another
        # dispatcher's, submitting under it now (giving it back let a fourth job in).
        ledger.give_back_slot(key)
    return wait_s


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
    retry: Retry = _call,
) -> str:
    """Submit ``request`` under ``key`` exactly once; return the provider job id.

    Args:
        retry: Wraps each provider call (e.g. :func:`~qlayer.dispatch.retries.with_retries`).

    Raises:
        SubmissionInProgress: Someone else holds a live claim on ``key`` (retryable).
        SubmissionEnded: The entry was cancelled before or during the submission.
        ProviderError: The provider refused or failed (``retryable`` says which); the
            claim is released, so the next attempt asks ``find_job`` first.
    """
    owner = owner or uuid.uuid4().hex
    entry = ledger.claim(key, backend, request_key, owner=owner, lease_s=lease_s)
    if entry.state == "CANCELLED" or (entry.state in FINAL_STATES and not entry.provider_job_id):
        raise SubmissionEnded(key, entry.state, entry.provider_job_id)
    if entry.provider_job_id is not None:
        return entry.provider_job_id
    if entry.owner != owner or entry.state != "CLAIMED":
        raise SubmissionInProgress(key, entry.owner)
    try:
        found = None
        if entry.claims > 1 and isinstance(provider, FindsJobs):
            # A previous claim died between the provider's acceptance and our record.
            found = retry(lambda: provider.find_job(backend, key))
        provider_job_id = found or retry(
            lambda: provider.submit(backend, request, idempotency_key=key)
        )
    except BaseException:
        ledger.release(key, owner)
        raise
    recorded = ledger.record_submission(key, str(provider_job_id))
    job_id = recorded.provider_job_id or str(provider_job_id)
    if recorded.state == "CANCELLED":  # cancelled while the submission was in flight
        retry(lambda: provider.cancel(job_id))
        raise SubmissionEnded(key, "CANCELLED", job_id)
    return job_id


def poll_once(
    ledger: Ledger, provider: AsyncProvider, key: str, *, entry: LedgerEntry | None = None
) -> ProviderJobStatus:
    """Ask the provider for the job's state once; record it in the ledger while the job
    runs (its end is recorded by whoever delivers the outcome: :func:`end`).

    An entry that has ended is answered from the ledger without calling the provider.

    Args:
        entry: The entry as the caller has just read it (saves reading it again).

    Raises:
        NotSubmitted: The key has no provider job yet.
    """
    entry = entry or ledger.get(key)
    if entry is None or entry.provider_job_id is None:
        raise NotSubmitted(
            f"{key} has no provider job (state {entry.state if entry else 'absent'})"
        )
    if entry.state in FINAL_STATES:
        return ProviderJobStatus(entry.state, message=entry.message)  # type: ignore[arg-type]
    status = provider.status(entry.provider_job_id)
    if status.state not in FINAL_STATES and (
        status.state != entry.state or status.message != entry.message
    ):
        ledger.set_state(key, status.state, status.message)
    return status


def follow(
    ledger: Ledger,
    provider: AsyncProvider,
    store: ArtifactStore,
    key: str,
    *,
    retry: Retry = _call,
) -> tuple[ProviderJobStatus, Decision | None]:
    """Poll ``key``'s provider job once; when it has ended, its step's decision.

    DONE: the result is fetched (once: a result stored before a crash is not fetched
    again) and handed to the ``then`` stage (:func:`qlayer.steps.complete_execute`).
    ERROR or CANCELLED (by someone else, e.g. the provider's console): an error decision
    with the provider's words, also written as the step's ``output.json``. An outcome
    recorded before a crash (:func:`end` did not finish) is returned again.

    The entry is not ended here: the caller delivers the decision with :func:`end`.

    Returns:
        The status, and the decision (None while the job is queued or running).
    """
    from qlayer import keys
    from qlayer.errors import ArtifactError
    from qlayer.interpreter import Decision
    from qlayer.steps import complete_execute

    entry = ledger.get(key)
    if entry is not None and entry.outcome is not None:
        decision = Decision.from_json(entry.outcome)
        state = "ERROR" if decision.kind == "error" else "DONE"
        return ProviderJobStatus(state), decision  # type: ignore[arg-type]
    read = entry
    status: ProviderJobStatus = retry(lambda: poll_once(ledger, provider, key, entry=read))
    if status.state not in FINAL_STATES:
        return status, None
    # poll_once needed the provider job id: the entry read above has it, and what is used
    # below (job, step, provider job, backend, request) never changes once submitted
    assert entry is not None and entry.provider_job_id is not None and entry.seq is not None
    job_id, seq, provider_job_id = entry.job_id, entry.seq, entry.provider_job_id
    recorded = keys.step_dir(job_id, seq, "execute") + "output.json"
    if store.exists(recorded):  # collected before a crash: not fetched again
        try:
            return status, Decision.from_json(store.get_json(recorded))
        except (ArtifactError, ValueError, TypeError):
            pass
    if status.state == "DONE":
        result = retry(lambda: provider.result(provider_job_id))
        return status, complete_execute(
            store, job_id, seq, store.get_json(entry.request_key), result
        )
    if status.state == "ERROR":
        decision = Decision.failed(
            seq,
            "execute",
            "ProviderError",
            f"provider job {provider_job_id} on {entry.backend} failed: "
            f"{status.message or 'the provider gave no reason'}",
        )
    else:
        decision = Decision.failed(
            seq,
            "execute",
            "ProviderCancelled",
            f"provider job {provider_job_id} on {entry.backend} was cancelled outside qlayer"
            + (f": {status.message}" if status.message else ""),
        )
    store.put_json(recorded, decision.to_json())
    return status, decision


def end(ledger: Ledger, key: str, decision: Decision, deliver: Callable[[Decision], None]) -> bool:
    """Deliver a request's decision exactly once, and end its ledger entry.

    The outcome is recorded first (a conditional write: of two pollers that saw the end,
    one delivers), then ``deliver`` runs (advance the job, wake who waits), then the entry
    ends and gives back its slot. A crash after the record and before the end leaves the
    outcome in an open entry: the next :func:`follow` returns it and it is delivered again,
    which ``deliver`` must take calmly (a step applied once, a stale task token ignored).

    Returns:
        True if this call delivered it.
    """
    entry = ledger.get(key)
    if entry is None or entry.state in FINAL_STATES:
        return False
    if entry.outcome is None and not ledger.record_outcome(key, decision.to_json()):
        return False
    deliver(decision)
    ledger.finish(
        key,
        "ERROR" if decision.kind == "error" else "DONE",
        outcome=decision.to_json(),
        message=decision.message,
    )
    return True


def cancel_once(
    ledger: Ledger, provider: AsyncProvider, key: str, *, retry: Retry = _call
) -> str | None:
    """Make sure the request ``key`` is cancelled at the provider, whatever its state.

    WAITING: ended, nothing was sent. CLAIMED without an id: the provider may have
    accepted it before its dispatcher died, so ``find_job`` is asked; a live submission
    that records its id later cancels the job itself (see :func:`submit_once`). With an
    id: the provider job is cancelled (cancelling an ended job is not an error). The
    entry ends CANCELLED unless it had ended DONE or ERROR.

    Returns:
        The provider job id that was cancelled, or None.
    """
    entry = ledger.get(key)
    if entry is None or entry.state in ("DONE", "ERROR"):
        return None
    provider_job_id = entry.provider_job_id
    if provider_job_id is None and entry.state != "WAITING" and isinstance(provider, FindsJobs):
        backend = entry.backend
        provider_job_id = retry(lambda: provider.find_job(backend, key))
        if provider_job_id is not None:
            provider_job_id = ledger.record_submission(key, provider_job_id).provider_job_id
    ledger.finish(key, "CANCELLED", message="cancelled by qlayer")
    if provider_job_id is not None:
        found = provider_job_id
        retry(lambda: provider.cancel(found))
    return provider_job_id
