"""Coalescing on a simulated device: requests waiting for the same device run as one job.

When a device takes its next job, compatible requests queued behind it ride along: their
PUBs are appended to the leader's, the device runs once, and the result is split back so
each request gets exactly its own PUB results. Nothing waits for a window: requests merge
only if they were already queued, so coalescing adds no latency.

Requests merge only when the merged job means exactly what each asked for: same
primitive, shots, precision and options, and no seed (a seeded request's results must not
depend on what else was queued). Requests with many PUBs are jobs enough on their own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

#: Requests with more PUBs than this never merge; a merged job holds at most MAX_PUBS PUBs.
SMALL_PUBS = 20
MAX_PUBS = 300
MAX_MEMBERS = 50


def enabled() -> bool:
    """Coalescing is on unless ``QLAYER_COALESCE=0``."""
    return os.environ.get("QLAYER_COALESCE", "1") not in ("0", "false", "no")


def compat_key(raw: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What must agree for two stored requests to merge; None if this one never merges."""
    if raw.get("seed") is not None or len(raw.get("pubs") or []) > SMALL_PUBS:
        return None
    options = tuple(sorted((k, repr(v)) for k, v in (raw.get("options") or {}).items()))
    return (raw["backend"], raw["primitive"], raw.get("shots"), raw.get("precision"), options)


def split(result: Any, sizes: Sequence[int]) -> list[Any]:
    """Split a merged ``PrimitiveResult`` into one per member, by PUB counts."""
    from qiskit.primitives import PrimitiveResult

    parts, start = [], 0
    pubs = list(result)
    for size in sizes:
        metadata = {**(result.metadata or {}), "coalesced": len(sizes)}
        parts.append(PrimitiveResult(pubs[start : start + size], metadata))
        start += size
    if start != len(pubs):
        raise ValueError(f"merged result has {len(pubs)} PUB results, members asked for {start}")
    return parts
