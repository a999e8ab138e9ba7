"""The poller: on a schedule (and on Braket task events), follow every open QPU request.

For each open entry of the tasks table: an outcome recorded by a poller that died before
delivering it is delivered now; a submitted job is polled (``follow``) and, once ended,
delivered exactly once (``end``); a request still waiting for its turn, or being
submitted, has its task token kept alive (SendTaskHeartbeat, every third of the state's
heartbeat timeout), so "Wait for QPU" never times out on a long queue. Then every backend
with waiting requests is drained: what the limits now allow goes to the provider
(:mod:`qlayer.aws.qpu`).

Harmless to repeat and to race: an outcome is delivered once (a conditional write, first
poller wins), a result already stored is not fetched again, and states after the first
final one (a stale RUNNING after DONE) are never seen.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from qlayer import keys
from qlayer.aws.qpu import cancel_task, deliver, drain, ledger_of, shares_of
from qlayer.aws.services import Services
from qlayer.dispatch import OPEN_STATES, batches, follow
from qlayer.interpreter import Decision
from qlayer.step_logs import note

log = logging.getLogger("qlayer.aws")

#: How long one poll may work (the function's timeout is 300 s; what is left is next time).
POLL_BUDGET_S = 240.0


#: While requests wait for a slot, one invocation keeps the provider busy this long
#: (following the in-flight ones and submitting the next as each ends) instead of one
#: wave of submissions per scheduled run; it stops as soon as nothing waits.
BACKLOG_S = 50.0
#: The pause between two rounds of that loop.
BACKLOG_PAUSE_S = 1.0
#: The lease (an item of the tasks table) held by the one invocation following a backlog.
BACKLOG_LEASE = "poller-backlog"
IN_FLIGHT_STATES = ("SUBMITTED", "QUEUED", "RUNNING")


def poller(event: Mapping[str, Any], svc: Services) -> dict[str, Any]:
    """One pass over the open QPU requests, then rounds over the in-flight ones while a
    backlog waits (:data:`BACKLOG_S`); what it did, counted.

    Only one invocation at a time follows a backlog (the lease :data:`BACKLOG_LEASE`):
    scheduled runs and Braket events that come meanwhile leave it to the one that holds it
    (it follows the in-flight requests every :data:`BACKLOG_PAUSE_S`, and the next run
    after it makes the whole pass again), rather than racing it for the same results (each
    fetched and stored by every racer, delivered by one) and listing every waiting request
    on each event.
    """
    ledger = ledger_of(svc)
    counts = {"done": 0, "failed": 0, "waiting": 0, "submitted": 0, "errors": 0, "left": 0}
    started = time.monotonic()
    if ledger.lease_holder(BACKLOG_LEASE) is not None:
        counts["backlog_followed_elsewhere"] = 1
        return counts
    shares: dict[str, Any] = {}  # backend -> its provider with shares (one per run: caches)
    backends = _follow(svc, ledger, ledger.entries_in(OPEN_STATES), counts, started, shares)
    _drain(svc, backends, counts)
    limit_s = min(BACKLOG_S, POLL_BUDGET_S)
    if _oldest_waiting(ledger) is None:
        return counts
    owner = uuid.uuid4().hex
    if not ledger.take_lease(BACKLOG_LEASE, owner, limit_s + BACKLOG_PAUSE_S + 30):
        return counts  # another invocation took it meanwhile
    try:
        while time.monotonic() - started < limit_s:
            oldest = _oldest_waiting(ledger)
            if oldest is None:
                break
            time.sleep(BACKLOG_PAUSE_S)
            in_flight = ledger.entries_in(list(IN_FLIGHT_STATES))
            _follow(svc, ledger, in_flight, counts, started, shares, rounds=True)
            _drain(svc, backends | {oldest.backend}, counts)
    finally:
        ledger.drop_lease(BACKLOG_LEASE, owner)
    return counts


def _oldest_waiting(ledger: Any) -> Any:
    """The oldest waiting entry, or None (one small read, not the whole backlog)."""
    return next(iter(ledger.oldest_in("WAITING", page=1)), None)


def _follow(
    svc: Services,
    ledger: Any,
    entries: list[Any],
    counts: dict[str, int],
    started: float,
    shares: dict[str, Any],
    *,
    rounds: bool = False,
) -> set[str]:
    """Follow ``entries``: deliver recorded outcomes and ended jobs, keep waiting ones
    alive. Returns the backends with open requests.

    Args:
        rounds: A backlog round after the first pass (its still-open entries were
            counted there already).
    """
    from qlayer.providers.base import AsyncProvider, ProviderError
    from qlayer.providers.registry import provider

    backends = {entry.backend for entry in entries if batches.is_batch(entry.key)}
    # A batch entry is no request: its members are followed, each through its share.
    entries = [entry for entry in entries if not batches.is_batch(entry.key)]
    ids = sorted({entry.job_id for entry in entries})
    jobs = dict(zip(ids, svc.jobs.get_many(ids), strict=True))  # batched reads
    for entry in entries:
        if time.monotonic() - started > POLL_BUDGET_S:
            counts["left"] += 1
            continue
        try:
            job = jobs[entry.job_id]
            if job is None or job.status.is_final:
                cancel_task(svc, entry.job_id, entry.seq)
                continue
            if entry.outcome is not None:  # recorded before a crash: deliver it now
                decision = Decision.from_json(entry.outcome)
            else:
                found = provider(entry.backend)
                if not isinstance(found, AsyncProvider):
                    continue  # run by a dispatcher right now
                if entry.backend not in shares:
                    shares[entry.backend] = shares_of(svc, found)
                found = shares[entry.backend]
                backends.add(entry.backend)
                if entry.provider_job_id is None:  # its turn has not come, or it is going now
                    _heartbeat(svc, ledger, entry)
                    counts["waiting"] += 1
                    continue
                try:
                    _status, got = follow(ledger, found, svc.store, entry.key, retry=svc.retry)
                except ProviderError as exc:
                    if exc.retryable:
                        raise
                    got = _cannot_follow(svc, entry, exc)
                if got is None:
                    _heartbeat(svc, ledger, entry)
                    counts["waiting"] += 0 if rounds else 1
                    continue
                decision = got
            if deliver(svc, entry.key, decision):
                counts["failed" if decision.kind == "error" else "done"] += 1
        except Exception:
            log.exception("polling %s failed; it is polled again next time", entry.key)
            counts["errors"] += 1
    return backends


def _drain(svc: Services, backends: set[str], counts: dict[str, int]) -> None:
    for backend in sorted(backends):
        try:
            counts["submitted"] += drain(svc, backend)
        except Exception:
            log.exception("draining %s failed; it is tried again next time", backend)
            counts["errors"] += 1


def _heartbeat(svc: Services, ledger: Any, entry: Any) -> None:
    """Keep the waiting state's token alive, a third of its heartbeat timeout at a time (a
    long queue of waiting requests costs one SendTaskHeartbeat each per third, not per poll)."""
    if entry.token and entry.heartbeat_due(ledger.clock()):
        svc.send_token("send_task_heartbeat", taskToken=entry.token)
        ledger.record_heartbeat(entry.key)


def _cannot_follow(svc: Services, entry: Any, exc: Exception) -> Decision:
    seq = entry.seq or 0
    text = f"provider job {entry.provider_job_id} on {entry.backend} cannot be followed: {exc}"
    note(svc.store, entry.job_id, seq, "execute", f"{text} (key {entry.key})")
    decision = Decision.failed(seq, "execute", "ProviderJobFailed", text)
    svc.store.put_json(
        keys.step_dir(entry.job_id, seq, "execute") + "output.json", decision.to_json()
    )
    return decision
