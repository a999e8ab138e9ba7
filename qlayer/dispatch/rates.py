"""How hard qlayer may push one backend: in-flight caps and submission rates.

These are *rate limits* (a provider's quotas). What a compute tier can give a job — memory,
vCPUs, GPUs — are *resources*, and live in :mod:`qlayer.planner`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimits:
    """How hard qlayer may push one backend (a provider quota).

    Attributes:
        max_in_flight: Provider jobs queued or running at once.
        submits_per_s: Sustained submissions per second (token bucket rate).
        burst: Submissions allowed at once above the rate (bucket size).
        max_pubs: PUBs one provider job may carry (the coalescer's cap).
        source: Where the numbers come from.
    """

    max_in_flight: int
    submits_per_s: float
    burst: int
    max_pubs: int = 300
    source: str = ""


#: Defaults from the providers' published quotas. Override per backend or per
#: provider with ``RateLimiter(overrides)`` (e.g. from qlayer config or env).
DEFAULT_RATE_LIMITS: dict[str, RateLimits] = {
    # IBM Quantum: the Open Plan allows at most 3 jobs pending (queued or running)
    # across all QPUs; a 4th is refused with error 3458 (docs.quantum.ibm.com/guides/instances).
    # Job creation (POST /v1/jobs) is limited to 5 per minute per IAM token (Qiskit
    # Runtime REST API description). Paid plans may raise max_in_flight.
    "ibm": RateLimits(
        max_in_flight=3,
        submits_per_s=5 / 60,
        burst=3,
        max_pubs=300,
        source="IBM Open Plan: 3 pending jobs; 5 job creations/min per token",
    ),
    # Amazon Braket service quotas (docs.aws.amazon.com/braket/latest/developerguide/
    # braket-quotas.html): CreateQuantumTask 20/s (burst 40, not adjustable);
    # concurrent tasks SV1 35, DM1 35, TN1 10. QPUs queue server-side: we keep a
    # modest number in flight to bound spend.
    "braket": RateLimits(
        max_in_flight=10,
        submits_per_s=20.0,
        burst=40,
        max_pubs=1,
        source="Braket quotas: CreateQuantumTask 20/s burst 40",
    ),
    "braket_sv1": RateLimits(35, 20.0, 40, 1, "Braket quotas: 35 concurrent SV1 tasks"),
    "braket_dm1": RateLimits(35, 20.0, 40, 1, "Braket quotas: 35 concurrent DM1 tasks"),
    "braket_tn1": RateLimits(10, 20.0, 40, 1, "Braket quotas: 10 concurrent TN1 tasks"),
    "braket_local": RateLimits(2, 1000.0, 1000, 1, "local simulator: this machine's cores"),
    # Our own simulators: bounded by local cores / Lambda concurrency, not a quota.
    "aer": RateLimits(
        max_in_flight=2, submits_per_s=1000.0, burst=1000, max_pubs=10_000, source="local compute"
    ),
}


def provider_of(backend: str) -> str:
    """``ibm_brisbane`` -> ``ibm``; ``braket_sv1`` -> ``braket``; anything else -> ``aer``."""
    head = backend.split("_", 1)[0]
    if head in ("ibm", "braket"):
        return head
    if backend.startswith("arn:aws:braket"):
        return "braket"
    return "aer"


class RateLimiter:
    """Per-backend token bucket for submissions plus an in-flight cap.

    Pure logic with an injected clock. ``try_acquire`` answers how long to wait
    (0 = go now: one token is taken and one more counted in flight, in this object);
    ``take_token`` looks at the rate only, for callers whose in-flight slots are counted
    in a ledger (:func:`qlayer.dispatch.calls.admit`).
    """

    def __init__(
        self,
        overrides: dict[str, RateLimits] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {**DEFAULT_RATE_LIMITS, **(overrides or {})}
        self._clock = clock
        self._tokens: dict[str, float] = {}
        self._stamp: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def limits_for(self, backend: str) -> RateLimits:
        """Exact backend name first, then the longest configured prefix (``ibm`` for
        ``ibm_torino``, a plugin's prefix for its backends), then its provider's defaults."""
        exact = self._limits.get(backend)
        if exact is not None:
            return exact
        prefixes = [name for name in self._limits if backend.startswith(name + "_")]
        if prefixes:
            return self._limits[max(prefixes, key=len)]
        return self._limits[provider_of(backend)]

    def take_token(self, backend: str) -> float:
        """0.0 when the submission rate lets one go now (a token is taken); otherwise the
        seconds until a token is due. In-flight counts are not looked at."""
        limits = self.limits_for(backend)
        with self._lock:
            return self._take_token(backend, limits)

    def _take_token(self, backend: str, limits: RateLimits) -> float:
        now = self._clock()
        tokens = self._tokens.get(backend, float(limits.burst))
        tokens = min(
            float(limits.burst),
            tokens + (now - self._stamp.get(backend, now)) * limits.submits_per_s,
        )
        self._stamp[backend] = now
        if tokens < 1.0:
            self._tokens[backend] = tokens
            return (1.0 - tokens) / limits.submits_per_s
        self._tokens[backend] = tokens - 1.0
        return 0.0

    def token_wait(self, backend: str) -> float:
        """The seconds until the submission rate lets one go (0.0: now); takes nothing."""
        limits = self.limits_for(backend)
        with self._lock:
            tokens = self._tokens.get(backend, float(limits.burst))
            elapsed = self._clock() - self._stamp.get(backend, self._clock())
            tokens = min(float(limits.burst), tokens + elapsed * limits.submits_per_s)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / limits.submits_per_s

    def try_acquire(self, backend: str) -> float:
        """0.0 when a submission may go now (a token is taken and this object counts one
        more in flight, until :meth:`release`); otherwise the seconds to wait (``inf``
        when the in-flight cap is reached)."""
        limits = self.limits_for(backend)
        with self._lock:
            if self._in_flight.get(backend, 0) >= limits.max_in_flight:
                return float("inf")
            wait = self._take_token(backend, limits)
            if wait == 0.0:
                self._in_flight[backend] = self._in_flight.get(backend, 0) + 1
            return wait

    def release(self, backend: str) -> None:
        """A provider job of ``backend`` ended (or its submission failed)."""
        with self._lock:
            self._in_flight[backend] = max(0, self._in_flight.get(backend, 0) - 1)
