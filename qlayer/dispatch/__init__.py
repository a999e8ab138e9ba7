"""The dispatcher core: execute requests to providers, exactly once, within their limits.

Substrate-independent: the local daemon (:mod:`qlayer.local.remote`) and the AWS
dispatcher and poller (:mod:`qlayer.aws.dispatcher`, :mod:`qlayer.aws.poller`) make the
same calls over a :class:`Ledger` (SQLite or DynamoDB).

* :mod:`~qlayer.dispatch.ledger` — the ledger port and its states;
* :mod:`~qlayer.dispatch.calls` — ``admit``, ``submit_once``, ``poll_once``, ``follow``,
  ``cancel_once``;
* :mod:`~qlayer.dispatch.retries` — backoff of retryable provider errors;
* :mod:`~qlayer.dispatch.rates` — per-backend rate limits (in flight, submissions/s);
* :mod:`~qlayer.dispatch.coalesce` — the rules by which small requests share a job;
* :mod:`~qlayer.dispatch.batches` — coalescing over the ledger for providers with a
  queue (one provider job for many requests, exactly once).
"""

from __future__ import annotations

from qlayer.dispatch.calls import (
    FindsJobs,
    NotSubmitted,
    SubmissionEnded,
    SubmissionInProgress,
    admit,
    cancel_once,
    end,
    follow,
    poll_once,
    submit_once,
)
from qlayer.dispatch.ledger import (
    DEFAULT_LEASE_S,
    FINAL_STATES,
    LEDGER_STATES,
    OPEN_STATES,
    POLLED_STATES,
    Ledger,
    LedgerEntry,
    MemoryLedger,
    Slot,
)
from qlayer.dispatch.rates import DEFAULT_RATE_LIMITS, RateLimiter, RateLimits, provider_of
from qlayer.dispatch.retries import backoff_delays, with_retries

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_RATE_LIMITS",
    "FINAL_STATES",
    "LEDGER_STATES",
    "OPEN_STATES",
    "POLLED_STATES",
    "FindsJobs",
    "Ledger",
    "LedgerEntry",
    "MemoryLedger",
    "NotSubmitted",
    "RateLimiter",
    "RateLimits",
    "Slot",
    "SubmissionEnded",
    "SubmissionInProgress",
    "admit",
    "backoff_delays",
    "cancel_once",
    "end",
    "follow",
    "poll_once",
    "provider_of",
    "submit_once",
    "with_retries",
]
