"""What a program would cost on a backend, before it runs there (``qlayer estimate``).

A program's cost depends on what its stages ask for — how many requests, how many shots,
how many loop iterations — which only running it tells. So the estimate runs it, on
this machine, with every request served by a free stand-in (the backend itself when it
is a simulated ``fake_*`` device, else the ideal simulator ``aer``), and prices what it
asked for at the target backend's price (:mod:`qlayer.pricing`). The assumptions — the
stand-in, the QPU time model, the price's source and date — come with the figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qlayer import pricing, usage
from qlayer.job import BaseJob

STAND_IN = "aer"


def stand_in_for(backend: str) -> str:
    """The free backend an estimate runs on in place of ``backend``."""
    return backend if backend.startswith("fake_") or backend.startswith("aer") else STAND_IN


@dataclass
class StageCost:
    """What one stage's requests would cost on the target."""

    stage: str
    requests: int = 0
    shots: int = 0
    qpu_seconds: float = 0.0
    usd: float = 0.0


@dataclass
class Estimate:
    """An estimate: per stage, in all, and what it assumed."""

    backend: str
    stand_in: str
    stages: list[StageCost] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def total(self) -> StageCost:
        total = StageCost("all")
        for row in self.stages:
            total.requests += row.requests
            total.shots += row.shots
            total.qpu_seconds += row.qpu_seconds
            total.usd += row.usd
        return total

    def to_json(self) -> dict[str, Any]:
        rows = [*self.stages, self.total]
        return {
            "backend": self.backend,
            "stand_in": self.stand_in,
            "stages": [vars(row) for row in rows[:-1]],
            "total": vars(rows[-1]),
            "assumptions": self.assumptions,
            "price": pricing.describe(self.backend),
        }


def of_job(job: BaseJob, backend: str) -> Estimate:
    """Price a finished stand-in run's requests (and its children's) as ``backend``'s."""
    price = pricing.price_of(backend)
    rows: dict[str, StageCost] = {}
    for issuer, request in _requests(job):
        row = rows.setdefault(issuer, StageCost(issuer))
        shots = usage.shots_of(request)
        row.requests += 1
        row.shots += shots
        row.qpu_seconds += price.seconds_per_task + price.seconds_per_shot * shots
        row.usd += price.estimate(shots)
    result = Estimate(backend, stand_in_for(backend), list(rows.values()))
    result.assumptions = assumptions(backend, price)
    return result


def assumptions(backend: str, price: pricing.Price) -> list[str]:
    """What an estimate for ``backend`` takes for granted, in words."""
    said = [
        f"the program ran on {stand_in_for(backend)} in place of {backend}; loops ran as "
        "many iterations as they did there (a device's noise may change that)",
        f"QPU time per request: {price.seconds_per_task:g} s + {price.seconds_per_shot:g} s a "
        "shot (a model, not the provider's figure)",
        "estimator requests count no shots (their cost is the per-request part)",
    ]
    if price.source:
        said.append(f"prices: {price.source}, list prices as of {pricing.AS_OF}")
    else:
        said.append(f"{backend} has no price in qlayer.pricing (QLAYER_PRICES adds one): $0")
    return said


def _requests(job: BaseJob) -> Sequence[tuple[str, Mapping[str, Any]]]:
    """(issuing stage, request) of every execute of the job and its children."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    stages = {e["seq"]: e["stage"] for e in job.timeline() if e["event"] == "started"}
    for seq, request in sorted(usage.requests_of(job.store, job.job_id).items()):
        found.append((str(stages.get(seq - 1, "?")), request))
    for child in job.children():
        found.extend(_requests(child))
    return found
