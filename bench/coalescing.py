"""Coalescing: provider calls and queue wait for many small execute requests, with and without.

Run with ``.venv/bin/python bench/coalescing.py`` (``--help`` for the knobs). Prints a
markdown table.

100 small execute requests (one PUB each) for the same device arrive within a few
seconds. Each goes through the dispatcher core as the daemon drives it
(``submit_once`` on a ledger, ``poll_once`` every poll interval, ``result``) against a
FAKE QPU service whose device runs one provider job at a time and charges a fixed
per-job overhead (2 s: queue admission, loading, calibration checks) plus a per-PUB
time. Time is simulated (computed, never slept), so the run takes a few seconds.

With coalescing, requests pass through :class:`qlayer.dispatch.Coalescer` (a window
from the first request of a group, at most ``max_requests`` per provider job); the
merged job's ``PrimitiveResult`` is split back per request, and the split is checked
against what each request asked for: PUB ``i`` is an all-ones circuit on ``1 + i % 3``
qubits, so its counts must be ``{"1"*n: shots}``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qlayer.dispatch import MemoryLedger, poll_once, submit_once
from qlayer.dispatch.coalesce import CoalescedBatch, Coalescer
from qlayer.providers.base import AsyncProvider, BackendInfo, ProviderJobStatus
from qlayer.request import ExecuteRequest

BACKEND = "benchqpu_device"


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class SimJob:
    key: str
    request: ExecuteRequest
    submitted: float
    start: float
    end: float


@dataclass
class FakeDevice(AsyncProvider):
    """A FAKE QPU service on a simulated clock: one job at a time, FIFO, a fixed
    per-job overhead plus a per-PUB time; results computed with Aer's SamplerV2."""

    clock: SimClock
    overhead_s: float = 2.0
    per_pub_s: float = 0.01
    jobs: dict[str, SimJob] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    free_at: float = 0.0
    name: str = "benchqpu"

    def _count(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1

    def backends(self) -> list[BackendInfo]:
        return [BackendInfo(BACKEND, "benchqpu", "qpu", 27, description="FAKE device")]

    def target(self, backend: str) -> Any:
        raise NotImplementedError

    def find_job(self, backend: str, idempotency_key: str) -> str | None:
        self._count("find_job")
        return next((j for j, job in self.jobs.items() if job.key == idempotency_key), None)

    def submit(self, backend: str, request: ExecuteRequest, *, idempotency_key: str) -> str:
        self._count("submit")
        now = self.clock()
        start = max(now, self.free_at)
        end = start + self.overhead_s + self.per_pub_s * len(request.pubs)
        self.free_at = end
        job_id = f"bq-{len(self.jobs) + 1:04d}"
        self.jobs[job_id] = SimJob(idempotency_key, request, now, start, end)
        return job_id

    def status(self, provider_job_id: str) -> ProviderJobStatus:
        self._count("status")
        job, now = self.jobs[provider_job_id], self.clock()
        if now >= job.end:
            return ProviderJobStatus("DONE")
        return ProviderJobStatus("RUNNING" if now >= job.start else "QUEUED")

    def result(self, provider_job_id: str) -> Any:
        from qiskit_aer.primitives import SamplerV2

        self._count("result")
        request = self.jobs[provider_job_id].request
        return SamplerV2(default_shots=request.shots, seed=request.seed).run(request.pubs).result()

    def cancel(self, provider_job_id: str) -> None:
        self._count("cancel")


def make_requests(n: int, shots: int) -> list[tuple[str, ExecuteRequest]]:
    from qiskit import QuantumCircuit

    out = []
    for i in range(n):
        qc = QuantumCircuit(1 + i % 3)
        qc.x(range(qc.num_qubits))
        qc.measure_all()
        out.append(
            (f"job{i:03d}/1", ExecuteRequest("sampler", [qc], BACKEND, "then", shots, None, None))
        )
    return out


def run(
    requests: list[tuple[str, ExecuteRequest]],
    *,
    coalesce: bool,
    gap_s: float,
    window_s: float,
    max_requests: int,
    poll_s: float,
    overhead_s: float,
) -> dict[str, Any]:
    clock = SimClock()
    device = FakeDevice(clock, overhead_s=overhead_s)
    ledger = MemoryLedger(clock=clock)
    coalescer = Coalescer(window_s=window_s, max_requests=max_requests, clock=clock)
    arrivals = {key: i * gap_s for i, (key, _) in enumerate(requests)}
    pending = list(requests)
    open_batches: list[tuple[CoalescedBatch, float]] = []  # (batch, next poll time)
    finished: dict[str, float] = {}
    results: dict[str, Any] = {}

    def submit(batch: CoalescedBatch) -> None:
        submit_once(ledger, device, batch.key, BACKEND, batch.request)
        open_batches.append((batch, clock.now + poll_s))

    while pending or open_batches or (coalesce and coalescer.next_deadline() is not None):
        times = []
        if pending:
            times.append(arrivals[pending[0][0]])
        if coalesce and coalescer.next_deadline() is not None:
            times.append(coalescer.next_deadline())
        times += [at for _, at in open_batches]
        clock.now = max(clock.now, min(times))
        while pending and arrivals[pending[0][0]] <= clock.now:
            key, request = pending.pop(0)
            if coalesce:
                coalescer.add(key, request)
            else:
                submit(CoalescedBatch(key, BACKEND, request, [(key, 0, len(request.pubs))]))
        if coalesce:
            for batch in coalescer.ready():
                submit(batch)
        still = []
        for batch, at in open_batches:
            if at > clock.now:
                still.append((batch, at))
                continue
            if poll_once(ledger, device, batch.key).state != "DONE":
                still.append((batch, clock.now + poll_s))
                continue
            entry = ledger.get(batch.key)
            assert entry is not None and entry.provider_job_id is not None
            merged = device.result(entry.provider_job_id)
            for key, part in batch.split(merged).items():
                results[key] = part
                finished[key] = clock.now  # the dispatcher learns of it at this poll
        open_batches = still

    for key, request in requests:  # every request got its own PUB results back
        [pub] = results[key]
        n = request.pubs[0].num_qubits
        assert pub.data.meas.get_counts() == {"1" * n: request.shots}, (key, pub)
    waits = sorted(finished[key] - arrivals[key] for key, _ in requests)
    return {
        "provider_jobs": len(device.jobs),
        "submit": device.calls.get("submit", 0),
        "status": device.calls.get("status", 0),
        "result": device.calls.get("result", 0),
        "calls": sum(device.calls.values()),
        "mean_wait": statistics.fmean(waits),
        "p95_wait": waits[math.ceil(0.95 * len(waits)) - 1],
        "max_wait": waits[-1],
        "device_busy": sum(job.end - job.start for job in device.jobs.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between arrivals")
    parser.add_argument("--overhead", type=float, default=2.0, help="device seconds per job")
    parser.add_argument("--window", type=float, default=1.0, help="coalescing window (s)")
    parser.add_argument("--max-requests", type=int, default=50, help="requests per merged job")
    parser.add_argument("--poll", type=float, default=5.0, help="poll interval (s)")
    parser.add_argument("--shots", type=int, default=100)
    args = parser.parse_args(argv)
    requests = make_requests(args.requests, args.shots)
    common = dict(
        gap_s=args.gap,
        window_s=args.window,
        max_requests=args.max_requests,
        poll_s=args.poll,
        overhead_s=args.overhead,
    )
    rows = [
        ("without coalescing", run(requests, coalesce=False, **common)),  # type: ignore[arg-type]
        (f"coalescing ({args.window:g} s window)", run(requests, coalesce=True, **common)),  # type: ignore[arg-type]
    ]
    print(
        f"{args.requests} requests of 1 PUB for one device, one every {args.gap:g} s; "
        f"device: {args.overhead:g} s per provider job + 0.01 s per PUB, one job at a time; "
        f"poll every {args.poll:g} s. Simulated time.\n"
    )
    print(
        "| | provider jobs | submit | status | result | provider calls "
        "| mean wait (s) | p95 wait (s) | max wait (s) | device busy (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['provider_jobs']} | {r['submit']} | {r['status']} | {r['result']} "
            f"| {r['calls']} | {r['mean_wait']:.1f} | {r['p95_wait']:.1f} | {r['max_wait']:.1f} "
            f"| {r['device_busy']:.1f} |"
        )
    (_, plain), (_, merged) = rows
    print(
        f"\nCoalescing: {plain['calls'] / merged['calls']:.0f}× fewer provider calls, "
        f"{plain['provider_jobs'] / merged['provider_jobs']:.0f}× fewer provider jobs, "
        f"mean wait {plain['mean_wait'] / merged['mean_wait']:.0f}× shorter; every request's "
        "results were split back to it and checked."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
