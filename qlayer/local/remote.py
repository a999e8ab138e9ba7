"""The local pump to remote QPU services: execute requests of ``AsyncProvider`` backends.

Each request is held in the ledger (:class:`~qlayer.local.ledger.SqliteLedger`, WAITING)
until its backend's limits let it go (:func:`~qlayer.dispatch.calls.admit`: in-flight
slots counted in the ledger, then the submission rate), then submitted exactly once
(``submit_once``), polled (``follow``), and its result handed on — the calls the AWS
dispatcher and poller make.

Provider calls are network calls: they run on a small thread pool, never on the daemon's
loop and never on the warm workers (the machine's compute for stages and simulations; a
worker blocked for minutes on a slow API would starve them). The threads touch only the
provider, the ledger (their own connection) and the artifact store; every job update
stays on the loop, through the job store, and a finished request's decision goes back
through ``on_decision``. A thread reports through a queue and wakes the loop with a byte
on a socket pair. This module never imports the daemon.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qlayer.core.ports import Event, JobStore
from qlayer.dispatch import (
    OPEN_STATES,
    NotSubmitted,
    RateLimiter,
    RateLimits,
    SubmissionEnded,
    admit,
    batches,
    cancel_once,
    end,
    follow,
    submit_once,
    with_retries,
)
from qlayer.dispatch.batches import Shares
from qlayer.interpreter import Decision
from qlayer.local.ledger import SqliteLedger
from qlayer.local.remote_batches import BatchPump
from qlayer.local.remote_work import BatchWork, RemoteConfig, RemoteWork
from qlayer.providers.base import ProviderError
from qlayer.request import decode_request
from qlayer.status import JobStatus
from qlayer.step_logs import note
from qlayer.steps import held_group
from qlayer.store.base import ArtifactStore

log = logging.getLogger("qlayer.daemon")

OnDecision = Callable[[str, int, Decision], None]


class RemoteDispatcher(BatchPump):
    """Submits remote execute requests exactly once, polls them, hands their results on.

    Args:
        conn: The daemon's connection: the ledger on the loop thread shares it (joining
            the loop's open transaction, never waiting on it).
        db: The state database: the provider threads' ledger opens its own connection.
        jobs: The daemon's job store (used on the loop thread only).
        store: The artifact store.
        on_decision: ``(job_id, seq, decision)``: a request's step ended.
        clock: Epoch seconds.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        db: Path,
        jobs: JobStore,
        store: ArtifactStore,
        on_decision: OnDecision,
        *,
        clock: Callable[[], float],
    ) -> None:
        from qlayer.providers.registry import configured_limits, plugins

        self.jobs = jobs
        self.store = store
        self.on_decision = on_decision
        self.clock = clock
        self.config = RemoteConfig.from_env()
        self.ledger = SqliteLedger(conn)
        self._threads_ledger = SqliteLedger(db)
        self.owner = f"daemon-{os.getpid()}-{secrets.token_hex(4)}"
        self.works: dict[str, RemoteWork] = {}
        self.batches: dict[str, BatchWork] = {}
        self._shares: dict[str, Shares] = {}
        self._formed: dict[str, frozenset[str]] = {}  # backend -> the keys last grouped
        self.submits = RateLimiter(configured_limits())
        poll_limits = RateLimits(
            max_in_flight=10**9,
            submits_per_s=self.config.polls_per_s,
            burst=max(1, int(self.config.polls_per_s)),
            source="QLAYER_QPU_POLLS_PER_S",
        )
        names = {"aer", "ibm", "braket", *(p.prefix for p in plugins())}
        self.polls = RateLimiter({name: poll_limits for name in names})
        self.results: queue.SimpleQueue[tuple[str, str, Any, BaseException | None]] = (
            queue.SimpleQueue()
        )
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, self.config.threads), thread_name_prefix="provider"
        )
        self._remote: dict[str, bool] = {}
        #: Sessions/batches qlayer opened -> (backend, the job whose end closes it): a
        #: job's own session, or a fan-out's batch (closed when the job that fanned out
        #: ends; :func:`qlayer.steps.held_group`), closed by the pump once that job ended.
        self.held: dict[str, tuple[str, str]] = {}

    # -- which backends -------------------------------------------------------------------
    def is_remote(self, backend: str | None) -> bool:
        if not backend:
            return False
        if backend not in self._remote:
            from qlayer.providers.registry import is_remote

            self._remote[backend] = is_remote(backend)
        return self._remote[backend]

    # -- loop integration -------------------------------------------------------------------
    def track(self, job_id: str, seq: int, decision: Decision, queued_at: float) -> None:
        """Execute step ``seq`` of ``job_id`` goes to its provider: held in the ledger (once)
        until its backend's limits let it go. Repeating it is harmless."""
        assert decision.backend is not None and decision.request_key is not None
        key = f"{job_id}/{seq}"
        entry = self.ledger.hold(key, decision.backend, decision.request_key)
        held = held_group(self.store.get_json(decision.request_key), job_id)
        if held is not None:
            self.held[held[0]] = (decision.backend, held[1])
        work = self.works.get(key)
        if work is None:
            work = RemoteWork(
                key, job_id, seq, decision.backend, decision.request_key, queued_at=queued_at
            )
            if entry.provider_job_id is not None:
                work.phase, work.provider_job_id = "poll", entry.provider_job_id
                work.last_state = entry.state
            work.batch = batches.batch_of(entry)
            if work.batch is not None and entry.provider_job_id is None:
                self.batches.setdefault(work.batch, BatchWork(work.batch, decision.backend))
            self.works[key] = work
        elif not work.busy:  # queued again: through submit_once again (it finds the id)
            work.phase, work.next_at = "submit", 0.0
        self.jobs.update(
            job_id,
            status=JobStatus.WAITING_FOR_QPU,
            stage="execute",
            seq=seq,
            event=Event(
                seq,
                "execute",
                "queued for provider",
                {"backend": decision.backend, "plan": decision.plan or {}},
            ),
        )

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._threads_ledger.close()

    def next_timeout(self, now: float) -> float | None:
        times = [batch.next_at for batch in self.batches.values() if not batch.busy]
        for work in self.works.values():
            times.append(work.queued_at + self.config.timeout_s)
            if not work.busy:
                times.append(work.next_at)
        return min(times) - now if times else None

    def drain_wake(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def recover(self, ended: Callable[[str], bool]) -> None:
        """After a restart. This daemon holds the home's lock: no other dispatcher is alive,
        so claims without a provider id were left by a killed daemon; they are taken over
        now (the next ``submit_once`` asks the provider, ``find_job``, before submitting).
        Open entries of jobs that ended while the daemon was down (a cancel that had not
        reached the provider yet) are cancelled now.

        Args:
            ended: Whether a job id names a job that has ended.
        """
        self.ledger.expire_claims()
        for entry in self.ledger.entries_in(OPEN_STATES):
            if batches.is_batch(entry.key):
                # Not submitted yet, or submitted before its members got their shares.
                self.batches.setdefault(entry.key, BatchWork(entry.key, entry.backend))
                continue
            if entry.key in self.works:
                continue
            if entry.outcome is not None:  # applied before the crash, or not: apply, end
                self._deliver(entry.key, Decision.from_json(entry.outcome))
            elif ended(entry.job_id):
                self._call(entry.key, "cancel", self._cancel_call(entry.key, entry.backend))
        if self.works:
            log.info("recovered %d remote execute requests", len(self.works))

    # -- scheduling -------------------------------------------------------------------------
    def pump(self) -> None:
        """Start the provider calls that are due, within each backend's limits."""
        now = self.clock()
        self._close_ended()
        self._form_batches()
        for batch in list(self.batches.values()):
            if not batch.busy and batch.next_at <= now:
                self._pump_batch(batch, now)
        for work in list(self.works.values()):
            if work.busy or work.cancelled:
                continue
            if now >= work.queued_at + self.config.timeout_s:
                self._timed_out(work)
                continue
            if work.next_at > now:
                continue
            if work.phase == "submit" and work.batch is not None:
                continue  # its batch submits it
            if work.phase == "submit":
                wait_s = admit(self.ledger, self.submits, work.key, work.backend)
                if wait_s > 0:
                    # At the cap: woken when a slot comes back. Rate-limited: when a token is due.
                    work.next_at = float("inf") if wait_s == float("inf") else now + wait_s
                    continue
                work.busy = True
                self._call(work.key, "submit", self._submit_call(work))
            else:
                wait_s = self.polls.try_acquire(work.backend)
                if wait_s > 0:
                    work.next_at = now + min(wait_s, 1.0)
                    continue
                self.polls.release(work.backend)
                work.busy = True
                self._call(work.key, "poll", self._poll_call(work))

    def _close_ended(self) -> None:
        """Close the sessions/batches of jobs that have ended (on a provider thread)."""
        from qlayer.providers.registry import async_provider

        for group, (backend, owner) in list(self.held.items()):
            record = self.jobs.find(owner)
            if record is not None and not record.status.is_final:
                continue
            if any(
                w.busy and (w.job_id == owner or w.job_id.startswith(owner + "_"))
                for w in self.works.values()
            ):
                continue  # a call in flight may still open one: close after it
            del self.held[group]

            def close(group: str = group, backend: str = backend) -> dict[str, float | None]:
                return self._retry(lambda: async_provider(backend).close_group(group))

            self._call(f"{owner}/close", "close", close)

    def _forget(self, work: RemoteWork) -> None:
        self.works.pop(work.key, None)
        waiting: list[RemoteWork | BatchWork] = [*self.works.values(), *self.batches.values()]
        for other in waiting:  # a slot may have come back: wake who waits for one
            if other.backend == work.backend and other.next_at == float("inf"):
                other.next_at = 0.0

    # -- provider calls (on the pool's threads) ------------------------------------------
    def _call(self, key: str, kind: str, fn: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                outcome: Any = fn()
                error: BaseException | None = None
            except BaseException as exc:  # reported to the loop, which decides
                outcome, error = None, exc
            self.results.put((key, kind, outcome, error))
            try:
                self.wake_w.send(b"!")
            except OSError:
                pass

        self.pool.submit(run)

    def _retry(self, fn: Callable[[], Any]) -> Any:
        return with_retries(fn, self.config.retries, self.config.retry_base_s, max_delay=60.0)

    def _submit_call(self, work: RemoteWork) -> Callable[[], tuple[str, list[str]]]:
        from qlayer.providers.registry import async_provider

        key, backend, request_key = work.key, work.backend, work.request_key
        store, ledger, owner = self.store, self._threads_ledger, self.owner

        def submit() -> tuple[str, list[str]]:
            provider = async_provider(backend)
            request = decode_request(store.get_json(request_key))
            provider_job_id = submit_once(
                ledger,
                provider,
                key,
                backend,
                request,
                request_key=request_key,
                owner=owner,
                retry=self._retry,
            )
            return provider_job_id, provider.take_notes(key)

        return submit

    def _poll_call(self, work: RemoteWork) -> Callable[[], Any]:
        key, backend, store, ledger = work.key, work.backend, self.store, self._threads_ledger

        shares = self._shares_for(backend)

        def poll() -> tuple[Any, Decision | None]:
            return follow(ledger, shares, store, key, retry=self._retry)

        return poll

    def _cancel_call(self, key: str, backend: str) -> Callable[[], str | None]:
        ledger, shares = self._threads_ledger, self._shares_for(backend)

        def cancel() -> str | None:
            return cancel_once(ledger, shares, key, retry=self._retry)

        return cancel

    # -- results (on the loop) -------------------------------------------------------------
    def collect(self) -> None:
        """Apply what the provider calls returned."""
        while True:
            try:
                key, kind, outcome, error = self.results.get_nowait()
            except queue.Empty:
                return
            try:
                self._collect_one(key, kind, outcome, error)
            except Exception:  # never let one bad reply stop the daemon
                log.exception("handling the %s reply of %s failed", kind, key)

    def _collect_one(self, key: str, kind: str, outcome: Any, error: BaseException | None) -> None:
        job_id = key.rpartition("/")[0]
        if kind == "close":
            if error is not None:
                event = Event(None, None, "session close failed", {"message": str(error)})
            else:
                seconds = [v for v in outcome.values() if v is not None]
                detail: dict[str, Any] = {"sessions": sorted(outcome)}
                if seconds:
                    detail["session_seconds"] = sum(seconds)
                event = Event(None, None, "sessions closed", detail)
            self.jobs.add_event(job_id, event)
            return
        if kind == "batch":
            self._batch_replied(key, outcome, error)
            return
        if kind == "cancel":
            if error is not None:
                event = Event(None, "execute", "provider cancel failed", {"message": str(error)})
            else:
                event = Event(
                    None, "execute", "provider job cancelled", {"provider_job_id": outcome}
                )
            self.jobs.add_event(job_id, event)
            return
        work = self.works.get(key)
        if work is None:
            return
        work.busy = False
        now = self.clock()
        if work.cancelled:  # cancelled while the call was in flight: cancel what it made
            self._forget(work)
            self._call(key, "cancel", self._cancel_call(key, work.backend))
            return
        if error is not None:
            self._call_failed(work, kind, error, now)
        elif kind == "submit":
            provider_job_id, notes = outcome
            self._submitted(work, str(provider_job_id), now, notes)
        else:
            status, decision = outcome
            self._polled(work, status, decision, now)

    def _submitted(
        self,
        work: RemoteWork,
        provider_job_id: str,
        now: float,
        notes: list[str],
        *,
        batch: tuple[str, int] | None = None,
    ) -> None:
        first = work.provider_job_id != provider_job_id
        work.provider_job_id, work.phase = provider_job_id, "poll"
        work.next_at = now + self.config.poll_s
        for text in notes:  # what the provider ran instead of what was asked, said once
            note(self.store, work.job_id, work.seq, "execute", text)
            self.jobs.add_event(
                work.job_id, Event(work.seq, "execute", "execution mode", {"message": text})
            )
        if not first:
            return
        self.jobs.update(
            work.job_id,
            status=JobStatus.WAITING_FOR_QPU,
            stage="execute",
            seq=work.seq,
            provider_job_id=provider_job_id,
            event=Event(
                work.seq,
                "execute",
                "submitted",
                {
                    "backend": work.backend,
                    "provider_job_id": provider_job_id,
                    "idempotency_key": work.key,
                    **({"coalesced": {"batch": batch[0], "requests": batch[1]}} if batch else {}),
                },
            ),
        )
        shared = f", shared by {batch[1]} requests ({batch[0]})" if batch else ""
        note(
            self.store,
            work.job_id,
            work.seq,
            "execute",
            f"submitted to {work.backend}: provider job {provider_job_id} (key {work.key}){shared}",
        )

    def _polled(self, work: RemoteWork, status: Any, decision: Decision | None, now: float) -> None:
        if status.state != work.last_state:
            work.last_state = status.state
            detail: dict[str, Any] = {
                "provider_job_id": work.provider_job_id,
                "backend": work.backend,
                "state": status.state,
            }
            if status.queue_position is not None:
                detail["queue_position"] = status.queue_position
            if status.usage_seconds is not None:
                detail["usage_seconds"] = status.usage_seconds
            event = "device running" if status.state == "RUNNING" else "provider state"
            self.jobs.add_event(work.job_id, Event(work.seq, "execute", event, detail))
        if decision is None:
            work.next_at = now + self.config.poll_s
            return
        self._forget(work)
        if decision.kind == "error":
            note(self.store, work.job_id, work.seq, "execute", decision.message or "")
        self._deliver(work.key, decision)

    def _deliver(self, key: str, decision: Decision) -> None:
        """Apply the request's decision to its step, then end its ledger entry. An entry
        that had ended (its step queued again) gives its recorded outcome once more: the
        step applies it once, whatever is repeated around it."""
        job_id, _, seq = key.rpartition("/")
        if not end(self.ledger, key, decision, lambda d: self.on_decision(job_id, int(seq), d)):
            self.on_decision(job_id, int(seq), decision)

    def _call_failed(self, work: RemoteWork, kind: str, error: BaseException, now: float) -> None:
        if isinstance(error, NotSubmitted):
            work.phase, work.next_at = "submit", now
            return
        if isinstance(error, SubmissionEnded):
            self._forget(work)  # cancelled: the job is ending (or has ended) with it
            return
        if isinstance(error, ProviderError) and error.retryable:
            # Still failing after its backoff: try again later (the timeout bounds it all).
            work.next_at = now + self.config.retry_later_s
            if kind == "submit":
                self.ledger.give_back_slot(work.key)  # others may try while it waits
            self.jobs.add_event(
                work.job_id,
                Event(
                    work.seq,
                    "execute",
                    "provider busy, retrying",
                    {"call": kind, "message": str(error), "retry_in_s": self.config.retry_later_s},
                ),
            )
            return
        self._forget(work)
        doing = "refused" if kind == "submit" else "failed"
        what = "provider job " + work.provider_job_id if work.provider_job_id else "execute request"
        message = f"{work.backend} {doing} {what} {work.key}: {error}"
        if not isinstance(error, ProviderError):
            message = f"{work.backend}: {type(error).__name__}: {error}"
        self.ledger.finish(work.key, "ERROR", message=str(error))
        note(self.store, work.job_id, work.seq, "execute", message)
        error_type = "ProviderError" if isinstance(error, ProviderError) else type(error).__name__
        self.on_decision(
            work.job_id, work.seq, Decision.failed(work.seq, "execute", error_type, message)
        )

    def _timed_out(self, work: RemoteWork) -> None:
        self._forget(work)
        waited = self.clock() - work.queued_at
        what = (
            f"provider job {work.provider_job_id}"
            if work.provider_job_id
            else f"execute request {work.key}"
        )
        message = (
            f"no completion from {work.backend} for {what}"
            f" within {self.config.timeout_s:g} s (QLAYER_QPU_TIMEOUT_S; waited {waited:.0f} s, "
            f"last state {work.last_state or 'not submitted'}); the provider job was cancelled"
        )
        note(self.store, work.job_id, work.seq, "execute", message)
        # Failing the job cancels its provider jobs (cancel_job): the open entry is one.
        self.on_decision(
            work.job_id, work.seq, Decision.failed(work.seq, "execute", "Timeout", message)
        )

    def cancel_job(self, job_id: str) -> None:
        """The job is ending: cancel its provider jobs (the ledger's open entries of it)."""
        for work in [w for w in self.works.values() if w.job_id == job_id]:
            work.cancelled = True
            self.jobs.add_event(
                job_id,
                Event(
                    work.seq,
                    "execute",
                    "provider job cancel requested",
                    {"provider_job_id": work.provider_job_id, "backend": work.backend},
                ),
            )
            if work.busy:
                continue  # cancelled when its call returns (it may create the provider job)
            self._forget(work)
        for entry in self.ledger.entries_for_job(job_id):
            if entry.state in OPEN_STATES and not any(
                w.busy and w.key == entry.key for w in self.works.values()
            ):
                self._call(entry.key, "cancel", self._cancel_call(entry.key, entry.backend))
