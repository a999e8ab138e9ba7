"""Coalesced requests in the local remote-QPU pump (:mod:`qlayer.local.remote`).

The pump's part of :mod:`qlayer.dispatch.batches`: on the loop, compatible waiting
requests of a backend become a batch when the backend can take a job; the batch's one
submission runs on a provider thread; its reply gives each member its share (or each
member the provider's refusal). Members are then polled like any request, through
:class:`~qlayer.dispatch.batches.Shares`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qlayer.dispatch import RateLimiter, SubmissionEnded, SubmissionInProgress, admit, batches
from qlayer.dispatch.batches import Shares
from qlayer.local.ledger import SqliteLedger
from qlayer.local.remote_work import BatchWork, RemoteConfig, RemoteWork
from qlayer.providers.base import ProviderError
from qlayer.store.base import ArtifactStore


class BatchPump:
    """The batch half of :class:`~qlayer.local.remote.RemoteDispatcher` (a mixin: it uses
    the dispatcher's ledgers, store, limits and provider threads)."""

    ledger: SqliteLedger
    _threads_ledger: SqliteLedger
    store: ArtifactStore
    submits: RateLimiter
    config: RemoteConfig
    owner: str
    works: dict[str, RemoteWork]
    batches: dict[str, BatchWork]
    _shares: dict[str, Shares]
    _formed: dict[str, frozenset[str]]
    clock: Callable[[], float]

    if TYPE_CHECKING:  # the dispatcher's own methods

        def _call(self, key: str, kind: str, fn: Callable[[], Any]) -> None: ...

        def _retry(self, fn: Callable[[], Any]) -> Any: ...

        def _submitted(
            self,
            work: RemoteWork,
            provider_job_id: str,
            now: float,
            notes: list[str],
            *,
            batch: tuple[str, int] | None = None,
        ) -> None: ...

        def _call_failed(
            self, work: RemoteWork, kind: str, error: BaseException, now: float
        ) -> None: ...

    def _form_batches(self) -> None:
        """Merge compatible waiting requests of a backend (:mod:`qlayer.dispatch.batches`):
        each batch becomes one provider job, submitted when its backend admits it."""
        waiting: dict[str, set[str]] = {}
        for work in self.works.values():
            if work.phase == "submit" and work.batch is None and not (work.busy or work.cancelled):
                waiting.setdefault(work.backend, set()).add(work.key)
        for backend, keys in waiting.items():
            if len(keys) < 2 or self._formed.get(backend) == keys:
                continue  # nothing to merge, or the same requests as last time
            if not batches.ready(self.ledger, self.submits, backend):
                continue  # merged when the backend can take the next job
            self._formed[backend] = frozenset(keys)
            entries = [
                e for e in self.ledger.entries_in(["WAITING"], backend=backend) if e.key in keys
            ]
            max_pubs = self.submits.limits_for(backend).max_pubs
            formed = batches.form(
                self.ledger, self.store, entries, owner=self.owner, max_pubs=max_pubs
            )
            for batch in formed:
                self.batches[batch] = BatchWork(batch, backend)
                for key in batches.member_keys(self.store, batch):
                    if key in self.works:
                        self.works[key].batch = batch

    def _pump_batch(self, batch: BatchWork, now: float) -> None:
        wait_s = admit(self.ledger, self.submits, batch.key, batch.backend)
        if wait_s > 0:
            batch.next_at = float("inf") if wait_s == float("inf") else now + wait_s
            return
        batch.busy = True
        shares, store, owner = self._shares_for(batch.backend), self.store, self.owner
        ledger, key = self._threads_ledger, batch.key

        def submit() -> tuple[tuple[str, list[str]] | None, list[str]]:
            got = batches.submit_batch(ledger, shares, store, key, owner=owner, retry=self._retry)
            return got, shares.take_notes(key)

        self._call(key, "batch", submit)

    def _shares_for(self, backend: str) -> Shares:
        """The backend's provider, with batches' shares understood (one per backend: it
        keeps a batch's status and result for all its members)."""
        from qlayer.providers.registry import async_provider

        if backend not in self._shares:
            self._shares[backend] = Shares(
                async_provider(backend),
                self._threads_ledger,
                self.store,
                status_ttl_s=self.config.poll_s / 2,
                retry=self._retry,
            )
        return self._shares[backend]

    def _batch_replied(self, key: str, outcome: Any, error: BaseException | None) -> None:
        """A batch's submission returned: its members poll their shares of the one job."""
        batch = self.batches.get(key)
        if batch is None:
            return
        batch.busy = False
        now = self.clock()
        members = [self.works[k] for k in batches.member_keys(self.store, key) if k in self.works]
        if error is None:
            del self.batches[key]
            got, notes = outcome
            if got is None:  # every member had ended: nothing was sent
                return
            provider_job_id, given = got
            for work in members:
                if work.key in given and not work.cancelled:
                    self._submitted(work, provider_job_id, now, notes, batch=(key, len(members)))
            return
        if isinstance(error, SubmissionEnded):
            del self.batches[key]
            return
        if isinstance(error, SubmissionInProgress) or (
            isinstance(error, ProviderError) and error.retryable
        ):
            batch.next_at = now + self.config.retry_later_s
            self.ledger.give_back_slot(key)
            return
        # Refused: every member fails with the provider's words, as a request alone would.
        del self.batches[key]
        self.ledger.finish(key, "ERROR", message=str(error))
        for work in members:
            work.batch = None
            self._call_failed(work, "submit", error, now)
