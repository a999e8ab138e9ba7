"""The dispatcher core beyond the ledger contract (tests/contract): a crash between the
provider's acceptance and the record, retries, rate limits, the windowed coalescer."""

from __future__ import annotations

import pytest

from qlayer.dispatch import (
    MemoryLedger,
    RateLimiter,
    RateLimits,
    SubmissionInProgress,
    backoff_delays,
    submit_once,
    with_retries,
)
from qlayer.dispatch.coalesce import Coalescer
from qlayer.providers.base import AsyncProvider, ProviderError, ProviderJobStatus
from qlayer.request import ExecuteRequest


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeQueueProvider(AsyncProvider):
    """A provider with a queue, recording every call; jobs are found by their key tag."""

    name = "fake"

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.calls: list[tuple] = []
        self.fail_next: ProviderError | None = None

    def backends(self):
        return []

    def target(self, backend):
        raise NotImplementedError

    def find_job(self, backend, idempotency_key):
        self.calls.append(("find_job", backend, idempotency_key))
        for job_id, job in self.jobs.items():
            if job["key"] == idempotency_key:
                return job_id
        return None

    def submit(self, backend, request, *, idempotency_key):
        self.calls.append(("submit", backend, idempotency_key))
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        job_id = f"job-{len(self.jobs) + 1}"
        self.jobs[job_id] = {"key": idempotency_key, "state": "QUEUED", "request": request}
        return job_id

    def status(self, provider_job_id):
        self.calls.append(("status", provider_job_id))
        job = self.jobs[provider_job_id]
        return ProviderJobStatus(
            job["state"],
            queue_position=3 if job["state"] == "QUEUED" else None,
            message=job.get("message"),
        )

    def result(self, provider_job_id):
        raise NotImplementedError

    def cancel(self, provider_job_id):
        self.jobs[provider_job_id]["state"] = "CANCELLED"

    def submits(self):
        return [call for call in self.calls if call[0] == "submit"]


class CrashAfterAccept(MemoryLedger):
    """A ledger whose first record_submission never happens (the process died there)."""

    crashed = False

    def record_submission(self, key, provider_job_id):
        if not self.crashed:
            self.crashed = True
            raise SystemExit("dispatcher killed after the provider accepted the job")
        return super().record_submission(key, provider_job_id)


def request(n_pubs: int = 1, **kw) -> ExecuteRequest:
    return ExecuteRequest("sampler", [f"pub{i}" for i in range(n_pubs)], "ibm_x", "then", **kw)


def test_crash_after_provider_accepted_before_record():
    clock = Clock()
    ledger, provider = CrashAfterAccept(clock=clock), FakeQueueProvider()
    with pytest.raises(SystemExit):
        submit_once(ledger, provider, "job1/3", "ibm_x", request(), lease_s=60)
    assert ledger.get("job1/3").provider_job_id is None
    # Redelivered while the dead claim's lease is still live: back off, do not submit.
    with pytest.raises(SubmissionInProgress) as info:
        submit_once(ledger, provider, "job1/3", "ibm_x", request(), lease_s=60)
    assert info.value.retryable
    clock.now += 61
    job_id = submit_once(ledger, provider, "job1/3", "ibm_x", request(), lease_s=60)
    assert job_id == "job-1"
    assert len(provider.submits()) == 1, "the provider's job was found by key, not submitted again"
    assert ("find_job", "ibm_x", "job1/3") in provider.calls
    assert ledger.get("job1/3").provider_job_id == "job-1"
    assert ledger.get("job1/3").claims == 2


def test_redelivery_many_times_one_job():
    clock = Clock()
    ledger, provider = MemoryLedger(clock=clock), FakeQueueProvider()
    ids = set()
    for _ in range(5):
        ids.add(submit_once(ledger, provider, "k", "ibm_x", request(), lease_s=1))
        clock.now += 5
    assert ids == {"job-1"} and len(provider.submits()) == 1


def test_with_retries_backoff_on_retryable_only():
    sleeps: list[float] = []
    attempts = iter(
        [ProviderError("429", retryable=True), ProviderError("502", retryable=True), "ok"]
    )

    def call():
        item = next(attempts)
        if isinstance(item, Exception):
            raise item
        return item

    assert (
        with_retries(call, attempts=5, base_delay=1.0, sleep=sleeps.append, jitter=lambda: 1.0)
        == "ok"
    )
    assert sleeps == [1.0, 2.0]


def test_with_retries_does_not_retry_non_retryable():
    sleeps: list[float] = []
    calls = []

    def call():
        calls.append(1)
        raise ProviderError("400 invalid circuit", retryable=False)

    with pytest.raises(ProviderError, match="invalid circuit"):
        with_retries(call, attempts=5, sleep=sleeps.append)
    assert calls == [1] and sleeps == []


def test_with_retries_gives_up_after_attempts():
    sleeps: list[float] = []

    def call():
        raise ProviderError("503", retryable=True)

    with pytest.raises(ProviderError):
        with_retries(
            call, attempts=4, base_delay=0.5, max_delay=1.5, sleep=sleeps.append, jitter=lambda: 1.0
        )
    assert sleeps == [0.5, 1.0, 1.5]
    assert backoff_delays(3, 1.0) == [1.0, 2.0]


def test_with_retries_lets_other_errors_through():
    with pytest.raises(KeyError):
        with_retries(lambda: {}["x"], sleep=lambda s: None)


def test_rate_limiter_token_bucket_and_in_flight():
    clock = Clock(0.0)
    limiter = RateLimiter(
        {"ibm_x": RateLimits(max_in_flight=3, submits_per_s=0.5, burst=2)}, clock=clock
    )
    assert limiter.try_acquire("ibm_x") == 0.0
    assert limiter.try_acquire("ibm_x") == 0.0
    wait = limiter.try_acquire("ibm_x")
    assert wait == pytest.approx(2.0)
    clock.now += 2.0
    assert limiter.try_acquire("ibm_x") == 0.0
    clock.now += 100
    assert limiter.try_acquire("ibm_x") == float("inf"), "3 in flight: the cap holds"
    limiter.release("ibm_x")
    assert limiter.try_acquire("ibm_x") == 0.0
    # A caller counting in-flight slots in a ledger asks for the rate only.
    clock.now += 100
    assert limiter.take_token("ibm_x") == 0.0
    assert limiter.try_acquire("ibm_x") == float("inf"), "take_token counts nothing in flight"


def test_rate_limiter_defaults_from_published_quotas():
    limiter = RateLimiter()
    assert limiter.limits_for("ibm_brisbane").max_in_flight == 3
    assert limiter.limits_for("braket_sv1").max_in_flight == 35
    assert limiter.limits_for("braket_tn1").max_in_flight == 10
    assert limiter.limits_for("braket_ionq_aria").submits_per_s == 20.0
    assert limiter.limits_for("fake_brisbane").max_in_flight == 2
    custom = RateLimiter({"ibm": RateLimits(20, 1.0, 5)})
    assert custom.limits_for("ibm_torino").max_in_flight == 20


def _sampler_result(n: int, tag: str):
    import numpy as np
    from qiskit.primitives import DataBin, PrimitiveResult, SamplerPubResult
    from qiskit.primitives.containers import BitArray

    return PrimitiveResult(
        [
            SamplerPubResult(
                DataBin(meas=BitArray.from_bool_array(np.array([[i % 2 == 1]]), order="little")),
                metadata={"i": i, "tag": tag},
            )
            for i in range(n)
        ],
        metadata={"version": 2},
    )


def test_coalescer_merges_within_window_and_splits_results():
    clock = Clock(0.0)
    coalescer = Coalescer(window_s=2.0, clock=clock)
    coalescer.add("a/1", request(2, shots=100))
    clock.now = 0.5
    coalescer.add("b/1", request(3, shots=100))
    coalescer.add("c/1", request(1, shots=200))  # other shots: its own group
    assert coalescer.ready() == []
    assert coalescer.next_deadline() == 2.0
    clock.now = 2.0
    (merged,) = coalescer.ready()
    clock.now = 2.5  # c/1 arrived at 0.5: its window ends later
    (alone,) = coalescer.ready()
    assert merged.ranges == [("a/1", 0, 2), ("b/1", 2, 5)]
    assert merged.request.pubs == ["pub0", "pub1", "pub0", "pub1", "pub2"]
    assert merged.key.startswith("coalesced/") and alone.key == "c/1"
    parts = merged.split(_sampler_result(5, "m"))
    assert [len(parts["a/1"]), len(parts["b/1"])] == [2, 3]
    assert [pub.metadata["i"] for pub in parts["b/1"]] == [2, 3, 4]
    assert parts["b/1"].metadata["coalesced"] == {"batch": merged.key, "start": 2, "stop": 5}
    with pytest.raises(ValueError):
        merged.split(_sampler_result(4, "short"))


def test_coalescer_caps_and_big_requests():
    clock = Clock(0.0)
    coalescer = Coalescer(window_s=10, max_pubs=4, small_pubs=3, clock=clock)
    coalescer.add("big", request(10))
    coalescer.add("x", request(3))
    coalescer.add("y", request(2))  # 3 + 2 > 4: x is released, y opens a new group
    ready = coalescer.ready()
    assert [b.key for b in ready] == ["big", "x"]
    assert [b.ranges for b in coalescer.flush()] == [[("y", 0, 2)]]
    assert coalescer.flush() == []
