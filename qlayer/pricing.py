"""What QPU work costs: one price table, with its sources, overridable by configuration.

A price applies to the backends whose name matches its pattern (``fnmatch``: ``ibm_*``,
``braket_ionq_*``); the most specific pattern (the longest) wins. A request is charged

* ``per_task_usd`` once (Braket's per-task fee),
* ``per_shot_usd`` for each shot it asks for (Braket's per-shot fee),
* ``per_qpu_second_usd`` for each second of QPU time (IBM Quantum bills by the second):
  the provider's reported seconds once it ran, before that an estimate of
  ``seconds_per_task + seconds_per_shot × shots`` (an assumption, printed with every
  estimate).

The defaults are the list prices their sources published (checked on :data:`AS_OF`);
prices change and contracts differ, so ``QLAYER_PRICES`` may name a JSON file (or hold
JSON) mapping patterns to the same fields, which replace or add entries. Everything not
listed costs nothing (simulators on your own machine, the simulated ``fake_*`` devices).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qlayer.errors import ConfigError

PRICES_ENV = "QLAYER_PRICES"
AS_OF = "2025-06"
IBM_SOURCE = "https://www.ibm.com/quantum/pricing (Pay-As-You-Go plan: USD 96 per minute)"
BRAKET_SOURCE = "https://aws.amazon.com/braket/pricing/ (per task and per shot, by device)"


@dataclass(frozen=True)
class Price:
    """The price of a backend's work. See the module docstring for how it is charged."""

    per_task_usd: float = 0.0
    per_shot_usd: float = 0.0
    per_qpu_second_usd: float = 0.0
    seconds_per_task: float = 2.0
    seconds_per_shot: float = 0.00025
    source: str = ""

    def estimate(self, shots: int, tasks: int = 1) -> float:
        """Dollars for ``tasks`` requests of ``shots`` shots in all, before they run."""
        seconds = self.seconds_per_task * tasks + self.seconds_per_shot * shots
        return self.charge(shots, tasks, seconds)

    def charge(self, shots: int, tasks: int, qpu_seconds: float) -> float:
        """Dollars for work that ran: ``tasks`` requests, ``shots`` shots, QPU seconds."""
        return (
            self.per_task_usd * tasks
            + self.per_shot_usd * shots
            + self.per_qpu_second_usd * qpu_seconds
        )


DEFAULT_PRICES: dict[str, Price] = {
    "ibm_*": Price(per_qpu_second_usd=96 / 60, source=IBM_SOURCE),
    "braket_ionq_forte*": Price(per_task_usd=0.30, per_shot_usd=0.08, source=BRAKET_SOURCE),
    "braket_ionq_aria*": Price(per_task_usd=0.30, per_shot_usd=0.03, source=BRAKET_SOURCE),
    "braket_iqm_*": Price(per_task_usd=0.30, per_shot_usd=0.00145, source=BRAKET_SOURCE),
    "braket_rigetti_*": Price(per_task_usd=0.30, per_shot_usd=0.0009, source=BRAKET_SOURCE),
    "braket_quera_*": Price(per_task_usd=0.30, per_shot_usd=0.01, source=BRAKET_SOURCE),
}

_FIELDS = set(Price.__dataclass_fields__)
_cache: dict[str, dict[str, Price]] = {}


def table() -> dict[str, Price]:
    """The defaults with ``QLAYER_PRICES`` applied (read once per value of the variable).

    Raises:
        ConfigError: ``QLAYER_PRICES`` is not a JSON object of patterns to price fields.
    """
    raw = os.environ.get(PRICES_ENV, "")
    if raw not in _cache:
        _cache[raw] = {**DEFAULT_PRICES, **_overrides(raw)}
    return _cache[raw]


def _overrides(raw: str) -> dict[str, Price]:
    if not raw:
        return {}
    text = raw
    if raw.lstrip()[:1] not in ("{", "["):
        try:
            text = Path(raw).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{PRICES_ENV}={raw!r}: cannot read it: {exc}") from exc
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{PRICES_ENV} is not JSON: {exc.msg}") from exc
    if not isinstance(given, dict):
        raise ConfigError(f"{PRICES_ENV} must be a JSON object of backend patterns to prices")
    prices = {}
    for pattern, fields in given.items():
        if not isinstance(fields, dict) or not set(fields) <= _FIELDS:
            raise ConfigError(
                f"{PRICES_ENV}: the price of {pattern!r} must be an object with some of "
                f"{sorted(_FIELDS)}"
            )
        numbers = {k: v for k, v in fields.items() if k != "source"}
        if any(
            not isinstance(v, int | float) or isinstance(v, bool) or v < 0 for v in numbers.values()
        ):
            raise ConfigError(
                f"{PRICES_ENV}: the price of {pattern!r} must be non-negative numbers"
            )
        base = DEFAULT_PRICES.get(pattern, Price(source=f"{PRICES_ENV}"))
        prices[pattern] = replace(base, **fields)
    return prices


def price_of(backend: str, prices: Mapping[str, Price] | None = None) -> Price:
    """The price that applies to ``backend`` (zero when no pattern matches)."""
    listed = table() if prices is None else prices
    matches = [pattern for pattern in listed if fnmatch.fnmatchcase(backend, pattern)]
    if not matches:
        return Price()
    return listed[max(matches, key=len)]


def describe(backend: str) -> dict[str, Any]:
    """A backend's price as JSON, with where it comes from (for ``qlayer estimate``)."""
    price = price_of(backend)
    return {
        "backend": backend,
        **{name: getattr(price, name) for name in sorted(_FIELDS)},
        "as_of": AS_OF if price.source in (IBM_SOURCE, BRAKET_SOURCE) else None,
    }
