"""Usage accounting per job, derived from its timeline and its execute requests.

Nothing is counted twice or stored separately: the timeline already says when each
step started and ended, and the request artifacts say how many shots were asked for.

* ``stage_seconds``: wall time of stage steps (worker compute);
* ``simulator_seconds``: wall time of execute steps run by simulators;
* ``qpu_seconds``: the QPU time a provider reports (``usage_seconds`` on its status,
  recorded in the timeline); where it reports none, the time the device ran the job
  (simulated devices count their simulation time here);
* ``shots``: shots requested by sampler PUBs (parameter sets × shots), of the
  requests that ran (a request cancelled before its device started counts none);
* ``executes``: execute requests; ``provider_jobs``: provider job ids;
* ``cost_usd``: what the requests that ran cost at :mod:`qlayer.pricing`'s prices (QPU
  seconds as reported, estimated while a request runs).
* ``session_seconds``: what the QPU service bills for the sessions/batches the job held
  (a session counts the time the device was held, so it may exceed ``qpu_seconds``),
  reported when they are closed (``sessions closed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qlayer.core.ports import JobStore
    from qlayer.store.base import ArtifactStore

START_EVENTS = {"started", "device running"}
RAN_EVENTS = {"started", "device running", "finished"}
END_EVENTS = {"finished", "error", "worker died, retrying", "cancelled", "device job cancelled"}


def empty() -> dict[str, Any]:
    return {
        "stage_seconds": 0.0,
        "simulator_seconds": 0.0,
        "qpu_seconds": 0.0,
        "shots": 0,
        "executes": 0,
        "provider_jobs": [],
        "cost_usd": 0.0,
        "session_seconds": 0.0,
    }


def from_timeline(
    timeline: Iterable[Mapping[str, Any]], requests: Mapping[int, Mapping[str, Any]]
) -> dict[str, Any]:
    """Usage of one job (children not included).

    Args:
        timeline: The job's events in order (``Job.timeline()``).
        requests: Execute request artifacts by step ``seq``; their planned tier
            (``qpu`` or a simulator tier) says where execute time is counted.
    """
    total = empty()
    open_steps: dict[tuple[int | None, str | None], float] = {}
    reported: dict[int | None, float] = {}  # seq -> QPU seconds the provider reported
    ran: set[int] = set()  # execute steps whose device started or finished
    qpu_by_seq: dict[int, float] = {}  # QPU seconds of each execute step that ended
    for event in timeline:
        key = (event.get("seq"), "execute" if event.get("stage") == "execute" else "stage")
        name = event["event"]
        provider_seconds = (event.get("detail") or {}).get("usage_seconds")
        if provider_seconds is not None:
            reported[event.get("seq")] = float(provider_seconds)
        if key[1] == "execute" and name in RAN_EVENTS:
            ran.add(int(event.get("seq") or 0))
        if name == "sessions closed":
            total["session_seconds"] += float((event.get("detail") or {}).get("session_seconds", 0))
        if name in START_EVENTS:
            open_steps[key] = event["at"]
            if name == "device running":
                provider_job = (event.get("detail") or {}).get("provider_job_id")
                if provider_job and provider_job not in total["provider_jobs"]:
                    total["provider_jobs"].append(provider_job)
        elif (
            name in END_EVENTS
            and key not in open_steps
            and key[1] == "execute"
            and key[0] in reported
            and (requests.get(key[0] or 0, {}).get("plan") or {}).get("tier") == "qpu"
        ):
            # No poll saw the job running (queued, then done by the next poll): the
            # provider's own figure still counts.
            total["qpu_seconds"] += reported[key[0]]
            qpu_by_seq[int(key[0] or 0)] = reported[key[0]]
        elif name in END_EVENTS and key in open_steps:
            seconds = event["at"] - open_steps.pop(key)
            if key[1] == "stage":
                total["stage_seconds"] += seconds
            else:
                tier = (requests.get(key[0] or 0, {}).get("plan") or {}).get("tier")
                bucket = "qpu_seconds" if tier == "qpu" else "simulator_seconds"
                if bucket == "qpu_seconds" and key[0] in reported:
                    seconds = reported[key[0]]  # the provider's own figure wins
                total[bucket] += seconds
                if bucket == "qpu_seconds":
                    qpu_by_seq[int(key[0] or 0)] = seconds
    for seq, request in requests.items():
        total["executes"] += 1
        if seq in ran:
            shots = shots_of(request)
            total["shots"] += shots
            total["cost_usd"] += cost_of(request, shots, qpu_by_seq.get(seq, reported.get(seq)))
    for field in ("stage_seconds", "simulator_seconds", "qpu_seconds", "session_seconds"):
        total[field] = round(total[field], 4)
    total["cost_usd"] = round(total["cost_usd"], 6)
    return total


def cost_of(request: Mapping[str, Any], shots: int, qpu_seconds: float | None) -> float:
    """Dollars of one request that ran (QPU seconds estimated where none are known yet)."""
    from qlayer.pricing import price_of

    price = price_of(str(request.get("backend") or ""))
    if qpu_seconds is None:
        return price.estimate(shots)
    return price.charge(shots, 1, qpu_seconds)


def estimate_of(request: Mapping[str, Any]) -> float:
    """Dollars a request will cost, before it runs (the price's time assumptions)."""
    from qlayer.pricing import price_of

    return price_of(str(request.get("backend") or "")).estimate(shots_of(request))


def shots_of(request: Mapping[str, Any]) -> int:
    """Shots a sampler request asks for: per PUB, parameter sets × shots."""
    if request.get("primitive") != "sampler":
        return 0
    from qlayer import codec

    default = request.get("shots") or 1024
    pubs = codec.decode(request["pubs"], where="execute request PUBs")
    total = 0
    for pub in pubs:
        sets, shots = 1, default
        if isinstance(pub, tuple):
            if len(pub) > 1 and pub[1] is not None:
                import numpy as np

                values = np.asarray(pub[1])
                sets = int(np.prod(values.shape[:-1])) if values.ndim > 1 else 1
            if len(pub) > 2 and pub[2] is not None:
                shots = int(pub[2])
        total += sets * shots
    return total


def add(into: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Add ``other``'s usage (a child's) into ``into``."""
    for field in ("stage_seconds", "simulator_seconds", "qpu_seconds", "session_seconds"):
        into[field] = round(into[field] + other.get(field, 0.0), 4)
    into["shots"] += other["shots"]
    into["cost_usd"] = round(into.get("cost_usd", 0.0) + other.get("cost_usd", 0.0), 6)
    into["executes"] += other["executes"]
    into["provider_jobs"] = [*into["provider_jobs"], *other["provider_jobs"]]
    return into


def of_job(jobs: JobStore, store: ArtifactStore, job_id: str) -> dict[str, Any]:
    """Usage of a job and its fan-out children (recursively), read through the ports."""
    total = from_timeline(jobs.timeline(job_id), requests_of(store, job_id))
    for child in jobs.children(job_id):
        add(total, of_job(jobs, store, child.job_id))
    return total


def requests_of(store: ArtifactStore, job_id: str) -> dict[int, dict[str, Any]]:
    """The job's execute requests (its own, not its children's), by step ``seq``."""
    from qlayer import keys

    prefix = keys.job_prefix(job_id) + "stages/"
    requests: dict[int, dict[str, Any]] = {}
    for key in store.list(prefix):
        if key.endswith("-execute/request.json"):
            requests[int(key[len(prefix) :].split("-", 1)[0])] = store.get_json(key)
    return requests
