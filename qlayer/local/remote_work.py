"""What the local remote-QPU pump remembers of its work, and how it is configured.

The durable truth is the ledger (:class:`~qlayer.local.ledger.SqliteLedger`); these are
the pump's in-memory views of it (:mod:`qlayer.local.remote`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class RemoteConfig:
    """How the daemon drives QPU services. From the environment:

    * ``QLAYER_QPU_TIMEOUT_S`` (7 days): an execute step whose provider job has not
      completed this long after the step was queued ends the job in ERROR (and the
      provider job is cancelled): a completion that never arrives is never a hang;
    * ``QLAYER_QPU_POLL_S`` (5 s): time between two polls of one provider job;
    * ``QLAYER_QPU_POLLS_PER_S`` (10): polls per second per provider (token bucket);
    * ``QLAYER_QPU_RETRIES`` (5) and ``QLAYER_QPU_RETRY_BASE_S`` (1 s): backoff of a
      retryable provider error (throttling, transient network) within one call;
    * ``QLAYER_QPU_RETRY_LATER_S`` (30 s): when a call still fails after its retries,
      try again this much later (the timeout above bounds it all);
    * ``QLAYER_PROVIDER_THREADS`` (8): threads making provider calls.
    """

    timeout_s: float = 7 * 24 * 3600.0
    poll_s: float = 5.0
    polls_per_s: float = 10.0
    retries: int = 5
    retry_base_s: float = 1.0
    retry_later_s: float = 30.0
    threads: int = 8

    @classmethod
    def from_env(cls) -> RemoteConfig:
        return cls(
            timeout_s=_env_float("QLAYER_QPU_TIMEOUT_S", cls.timeout_s),
            poll_s=_env_float("QLAYER_QPU_POLL_S", cls.poll_s),
            polls_per_s=_env_float("QLAYER_QPU_POLLS_PER_S", cls.polls_per_s),
            retries=int(_env_float("QLAYER_QPU_RETRIES", cls.retries)),
            retry_base_s=_env_float("QLAYER_QPU_RETRY_BASE_S", cls.retry_base_s),
            retry_later_s=_env_float("QLAYER_QPU_RETRY_LATER_S", cls.retry_later_s),
            threads=int(_env_float("QLAYER_PROVIDER_THREADS", cls.threads)),
        )


@dataclass
class RemoteWork:
    """One execute request waiting on a remote provider: the pump's memory of it (the
    durable truth is the ledger entry)."""

    key: str
    job_id: str
    seq: int
    backend: str
    request_key: str
    queued_at: float  # the request's arrival: the timeout counts from here
    phase: str = "submit"  # submit | poll
    provider_job_id: str | None = None
    next_at: float = 0.0
    busy: bool = False  # a provider call for it is in flight on a thread
    last_state: str | None = None
    cancelled: bool = False
    batch: str | None = None  # the batch that submits it (it shares one provider job)


@dataclass
class BatchWork:
    """A batch of coalesced requests waiting for its one submission (the ledger entry
    ``coalesced/<digest>`` is the durable truth; its members are :class:`RemoteWork`)."""

    key: str
    backend: str
    next_at: float = 0.0
    busy: bool = False
