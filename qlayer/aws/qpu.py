"""QPU requests on AWS, over the tasks table (:class:`~qlayer.aws.ledger.DynamoLedger`).

The dispatcher and the poller share these; both call the dispatcher core
(:mod:`qlayer.dispatch`) as the local daemon does:

* a request from "Wait for QPU" is held in the ledger (WAITING, with its task token) —
  durably, so the SQS message is done with at once: a request held back by its backend's
  limits costs no receives and is never dead-lettered;
* :func:`drain` submits a backend's waiting requests, oldest first, while its limits allow
  (:func:`~qlayer.dispatch.admit`: in-flight slots counted in the table across every
  dispatcher, then the submission rate), each exactly once (``submit_once``);
* the poller follows submitted jobs (``follow``), keeps every waiting request's task token
  alive (heartbeats), drains again as slots come back, and :func:`deliver` hands each
  outcome to the state machine exactly once (``end``).
"""

from __future__ import annotations

import heapq
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from qlayer import keys
from qlayer.aws.events import SESSION_HELD
from qlayer.aws.services import Services, batch_compute
from qlayer.aws.steps import carry_on
from qlayer.core import transitions
from qlayer.core.ports import Event
from qlayer.dispatch import (
    SubmissionEnded,
    SubmissionInProgress,
    admit,
    batches,
    cancel_once,
    end,
    submit_once,
)
from qlayer.dispatch.ledger import LedgerEntry
from qlayer.interpreter import Decision
from qlayer.providers.base import AsyncProvider, ProviderError
from qlayer.status import JobStatus
from qlayer.step_logs import note
from qlayer.steps import held_group

if TYPE_CHECKING:
    from qlayer.aws.ledger import DynamoLedger

log = logging.getLogger("qlayer.aws")

#: How long one drain may keep submitting (a Lambda must end within its timeout; what is
#: left waits for the next dispatch or poll).
DRAIN_BUDGET_S = 60.0
#: One drain of a backend at a time, across every dispatcher and poller invocation (a
#: lease in the tasks table): two drains admitting the same waiting request at once could
#: leave it submitted with no in-flight slot counted, one giving back the slot the other
#: submitted under. Held for the budget plus one submit call's retries; a drain that
#: finds it held waits this long for it, then leaves its requests to the holder's next
#: drain or the poller's.
DRAIN_LEASE = "drain/"
DRAIN_LEASE_S = DRAIN_BUDGET_S + 90.0
DRAIN_LEASE_WAIT_S = 10.0


def ledger_of(svc: Services) -> DynamoLedger:
    if svc.ledger is None:
        raise RuntimeError("this function has no QLAYER_TASKS_TABLE: it cannot reach QPU tasks")
    return svc.ledger


def deliver(svc: Services, key: str, decision: Decision) -> bool:
    """Hand a request's decision to its job and its state machine, once; end the entry."""
    ledger = ledger_of(svc)
    job_id, _, seq_text = key.rpartition("/")
    seq = int(seq_text)
    ports = svc.ports()

    def to_machine(outcome: Decision) -> None:
        carried = transitions.advance(ports, job_id, seq, "execute", outcome)
        entry = ledger.get(key)
        token = entry.token if entry else None
        if token:
            out = batch_compute(svc, carry_on(carried, seq)).to_json()
            svc.send_token("send_task_success", taskToken=token, output=json.dumps(out))

    return end(ledger, key, decision, to_machine)


def drain(svc: Services, backend: str, *, budget_s: float = DRAIN_BUDGET_S) -> int:
    """Submit ``backend``'s waiting requests, oldest first, while its limits allow.

    Also takes over claims left by a dispatcher that died before recording a provider job
    (their lease has passed): ``submit_once`` asks the provider first. One drain of a
    backend runs at a time (:data:`DRAIN_LEASE`).

    Returns:
        How many requests went to the provider (0 when another drain held the lease).
    """
    ledger = ledger_of(svc)
    owner = uuid.uuid4().hex
    name = DRAIN_LEASE + backend
    deadline = time.monotonic() + DRAIN_LEASE_WAIT_S
    while not ledger.take_lease(name, owner, DRAIN_LEASE_S):
        if time.monotonic() > deadline:
            return 0  # the holder, or the next poll, drains what is waiting
        time.sleep(0.2)
    try:
        return _drain(svc, backend, budget_s)
    finally:
        ledger.drop_lease(name, owner)


def _drain(svc: Services, backend: str, budget_s: float) -> int:
    from qlayer.providers.registry import async_provider

    ledger = ledger_of(svc)
    limiter = svc.rate_limiter()
    provider = shares_of(svc, async_provider(backend))
    # Compatible waiting requests become batches: one provider job each (batches.form).
    if batches.ready(ledger, limiter, backend):
        waiting = ledger.entries_in(["WAITING"], backend=backend)
        batches.form(ledger, svc.store, waiting, max_pubs=limiter.limits_for(backend).max_pubs)
    now = ledger.clock()
    taken_over = [
        entry
        for entry in ledger.entries_in(["CLAIMED"], backend=backend)
        if entry.provider_job_id is None and entry.lease_until <= now
    ]
    # The waiting ones are read a page at a time: the drain stops at the first request the
    # limits hold back, so a long backlog costs one page per drain, not every entry.
    candidates = heapq.merge(
        sorted(taken_over, key=_age),
        ledger.oldest_in("WAITING", backend=backend),
        key=_age,
    )
    started, submitted = time.monotonic(), 0
    unshared: set[str] = set()  # batches submitted before their members got their shares
    for entry in candidates:
        if time.monotonic() - started > budget_s:
            break
        if batches.is_batch(entry.key):
            if admit(ledger, limiter, entry.key, backend) > 0:
                break
            submitted += _submit_batch(svc, provider, entry)
            continue
        batch = batches.batch_of(entry)
        if batch is not None:  # its batch submits it
            unshared.add(batch)
            continue
        job = svc.jobs.find(entry.job_id)
        if job is None or job.status.is_final:
            ledger.finish(entry.key, "CANCELLED", message="the job ended before its turn")
            continue
        if admit(ledger, limiter, entry.key, backend) > 0:
            break  # every slot taken, or the rate says wait: the next poll comes back
        if _submit(svc, provider, entry):
            submitted += 1
    for batch in sorted(unshared):
        found = ledger.get(batch)
        if found is not None and found.provider_job_id is not None:
            _submit_batch(svc, provider, found)  # the job exists: only the shares are given
    return submitted


def shares_of(svc: Services, provider: AsyncProvider) -> batches.Shares:
    """The provider, with coalesced requests' shares of one provider job understood."""
    return batches.Shares(provider, ledger_of(svc), svc.store, retry=svc.retry)


def _submit_batch(svc: Services, provider: batches.Shares, entry: LedgerEntry) -> int:
    """Submit a batch's one provider job (exactly once) and tell its members' jobs."""
    ledger = ledger_of(svc)
    try:
        got = batches.submit_batch(
            ledger, provider, svc.store, entry.key, owner=uuid.uuid4().hex, retry=svc.retry
        )
    except (SubmissionEnded, SubmissionInProgress):
        return 0
    except ProviderError as exc:
        if exc.retryable:
            ledger.give_back_slot(entry.key)
            return 0
        ledger.finish(entry.key, "ERROR", message=str(exc))
        for key in batches.member_keys(svc.store, entry.key):
            job_id, _, seq_text = key.rpartition("/")
            seq = int(seq_text)
            text = f"submit to {entry.backend} failed: {exc}"
            note(svc.store, job_id, seq, "execute", f"{text} (key {key}, coalesced)")
            decision = Decision.failed(seq, "execute", "ProviderError", text)
            svc.store.put_json(
                keys.step_dir(job_id, seq, "execute") + "output.json", decision.to_json()
            )
            deliver(svc, key, decision)
        return 0
    except Exception:
        ledger.give_back_slot(entry.key)
        log.exception("submitting batch %s failed; it is tried again later", entry.key)
        return 0
    if got is None:
        return 0
    provider_job_id, given = got
    notes = provider.take_notes(entry.key)
    shared = {"batch": entry.key, "requests": len(batches.member_keys(svc.store, entry.key))}
    for key in given:
        job_id, _, seq_text = key.rpartition("/")
        seq = int(seq_text)
        _mark_submitted(svc, key, entry.backend, provider_job_id, {"coalesced": shared})
        note(
            svc.store,
            job_id,
            seq,
            "execute",
            f"submitted to {entry.backend}: provider job {provider_job_id} (key {key}), "
            f"shared by {shared['requests']} requests ({entry.key})",
        )
        for text in notes:
            note(svc.store, job_id, seq, "execute", text)
    return len(given)


def _age(entry: LedgerEntry) -> tuple[float, str]:
    return (entry.created_at, entry.key)


def _submit(svc: Services, provider: AsyncProvider, entry: LedgerEntry) -> bool:
    from qlayer.request import decode_request

    ledger = ledger_of(svc)
    key, backend, seq = entry.key, entry.backend, entry.seq or 0
    try:
        raw = svc.store.get_json(entry.request_key)
        request = decode_request(raw)
        held = held_group(raw, entry.job_id)
        if held is not None and held[1] != entry.job_id:
            # Before the submit, not after: the items' runtime jobs can end, and the job
            # that fanned out with them, before this invocation says it holds the batch;
            # its Finalise then finds nothing to close (a likely cause of a clean-clone CI
            # failure: the batch never closed).
            _hold_for(svc, held[1], held[0], backend)
        provider_job_id = submit_once(
            ledger,
            provider,
            key,
            backend,
            request,
            request_key=entry.request_key,
            owner=uuid.uuid4().hex,
            retry=svc.retry,
        )
        notes = provider.take_notes(key)
    except (SubmissionEnded, SubmissionInProgress):
        return False  # cancelled meanwhile, or another dispatcher is on it
    except ProviderError as exc:
        if exc.retryable:  # throttled past our retries: the slot goes back, a later drain retries
            ledger.give_back_slot(key)
            note(svc.store, entry.job_id, seq, "execute", f"{backend} still refuses: {exc}")
            return False
        text = f"submit to {backend} failed: {exc}"
        note(svc.store, entry.job_id, seq, "execute", f"{text} (key {key})")
        decision = Decision.failed(seq, "execute", "ProviderError", text)
        svc.store.put_json(
            keys.step_dir(entry.job_id, seq, "execute") + "output.json", decision.to_json()
        )
        deliver(svc, key, decision)
        return False
    except Exception:
        # Our own fault, not the provider's answer: a later drain tries again, asking the
        # provider first (it may have accepted the job).
        ledger.give_back_slot(key)
        log.exception("submitting %s failed; it is tried again later", key)
        return False
    own = held is not None and held[1] == entry.job_id
    # Finalise asks the dispatcher to close the job's session (close_sessions).
    _mark_submitted(svc, key, backend, provider_job_id, {SESSION_HELD: True} if own else {})
    for text in notes:  # what the provider ran instead of what was asked, said once
        note(svc.store, entry.job_id, seq, "execute", text)
        svc.jobs.add_event(entry.job_id, Event(seq, "execute", "execution mode", {"message": text}))
    note(
        svc.store,
        entry.job_id,
        seq,
        "execute",
        f"submitted to {backend}: provider job {provider_job_id} (key {key})",
    )
    return True


def _mark_submitted(
    svc: Services, key: str, backend: str, provider_job_id: str, detail: dict[str, Any]
) -> None:
    """Request ``key``'s job waits for the QPU: its row and its ``submitted`` event."""
    job_id, _, seq_text = key.rpartition("/")
    seq = int(seq_text)
    svc.jobs.update(
        job_id,
        status=JobStatus.WAITING_FOR_QPU,
        stage="execute",
        seq=seq,
        provider_job_id=provider_job_id,
        event=Event(
            seq,
            "execute",
            "submitted",
            {
                "backend": backend,
                "provider_job_id": provider_job_id,
                "idempotency_key": key,
                **detail,
            },
        ),
    )


def _hold_for(svc: Services, owner: str, group: str, backend: str) -> None:
    """Record on ``owner``'s timeline (once) that its fan-out's items hold the batch
    ``group``: when ``owner`` ends, Finalise (or the cancel) has the dispatcher close it."""
    held = any(
        event.get("event") == "batch held" and (event.get("detail") or {}).get("group") == group
        for event in svc.jobs.timeline(owner)
    )
    if not held:
        detail = {SESSION_HELD: True, "backend": backend, "group": group}
        svc.jobs.add_event(owner, Event(None, "execute", "batch held", detail))


def close_sessions(svc: Services, job_id: str, backend: str, group: str | None = None) -> None:
    """Close the sessions/batches ``job_id`` held on ``backend``'s service (its own, or
    ``group``: its fan-out's batch); their billed seconds go to the job's timeline
    (``sessions closed``: its usage)."""
    from qlayer.providers.registry import provider

    found = provider(backend)
    if not isinstance(found, AsyncProvider):
        return
    closed = svc.retry(lambda: found.close_group(group or job_id))
    seconds = [v for v in closed.values() if v is not None]
    detail: dict[str, Any] = {"sessions": sorted(closed)}
    if seconds:
        detail["session_seconds"] = sum(seconds)
    svc.jobs.add_event(job_id, Event(None, None, "sessions closed", detail))


def cancel_task(svc: Services, job_id: str, seq: int | None) -> None:
    """Make the cancel of ``job_id``'s request (step ``seq``, or its current step) reach the
    provider, whatever state the request is in (:func:`~qlayer.dispatch.cancel_once`)."""
    from qlayer.aws.ledger import task_key
    from qlayer.providers.registry import provider

    ledger = ledger_of(svc)
    if seq is None:
        record = svc.jobs.find(job_id)
        seq = record.seq if record else 0
    key = task_key(job_id, seq)
    entry = ledger.get(key)
    if entry is None:
        return
    found = provider(entry.backend)
    if not isinstance(found, AsyncProvider):
        ledger.finish(key, "CANCELLED", message="cancelled with the job")
        return
    provider_job_id = cancel_once(ledger, shares_of(svc, found), key, retry=svc.retry)
    held = held_group(svc.store.get_json(entry.request_key), job_id)
    if held is not None and held[1] == job_id:
        close_sessions(svc, job_id, entry.backend)  # its session ends with it
    if provider_job_id is not None:
        text = f"cancelled provider job {provider_job_id} on {entry.backend} (key {key})"
        if batches.is_batch(provider_job_id):
            text = (
                f"cancelled its share of a coalesced provider job on {entry.backend} (key {key});"
                " the provider job itself is cancelled once no other request needs it"
            )
        note(svc.store, job_id, seq, "execute", text)
