"""A job's budget (``max_cost_usd``): no execute request is sent that would pass it.

The budget is the root job's (``input.json``'s ``max_cost_usd``), shared by its fan-out
children. Before an execute request starts, :func:`refusal` adds what the job tree has
spent (:func:`qlayer.usage.of_job`, at :mod:`qlayer.pricing`'s prices) to the request's
estimate; past the budget the request is not submitted and the job ends in ERROR
(``BudgetExceeded``), naming the budget, the spend and the estimate. What was spent is
kept: usage and every earlier result stay with the job.

Reading the spend costs one pass over the job tree's timelines, so it is done only for
jobs that have a budget, and only for requests that cost something.
"""

from __future__ import annotations

from qlayer import keys, usage
from qlayer.core.ports import JobRecord, Ports
from qlayer.errors import ArtifactError
from qlayer.interpreter import Decision

#: job id -> (root id, budget): both are fixed when a job is created, so a warm process
#: reads them once per job tree, not once per execute request.
_KNOWN: dict[str, tuple[str, float | None]] = {}
_KNOWN_MAX = 4096


def budget_of(ports: Ports, job: JobRecord) -> tuple[str, float | None]:
    """The job tree's root and its budget in dollars (None: no budget)."""
    known = _KNOWN.get(job.job_id) or (_KNOWN.get(job.parent_id) if job.parent_id else None)
    if known is not None:
        return known
    root = job
    while root.parent_id:
        root = ports.jobs.get(root.parent_id)
    try:
        limit = ports.store.get_json(keys.job_input(root.job_id)).get("max_cost_usd")
    except ArtifactError:
        return root.job_id, None  # not remembered: the input may be written later
    found = root.job_id, float(limit) if limit is not None else None
    if len(_KNOWN) >= _KNOWN_MAX:
        _KNOWN.clear()
    _KNOWN[job.job_id] = _KNOWN[root.job_id] = found
    return found


def refusal(ports: Ports, job: JobRecord, decision: Decision) -> Decision | None:
    """The error that ends the job if ``decision``'s request would pass its budget.

    Returns:
        None when the request may go (no budget, a free backend, or room left).
    """
    if decision.kind != "execute" or not decision.request_key:
        return None
    root_id, limit = budget_of(ports, job)
    if limit is None:
        return None
    request = ports.store.get_json(decision.request_key)
    estimate = usage.estimate_of(request)
    if estimate <= 0:
        return None
    spent = usage.of_job(ports.jobs, ports.store, root_id)["cost_usd"]
    if spent + estimate <= limit:
        return None
    whose = "this job's" if root_id == job.job_id else f"job {root_id}'s"
    return Decision.failed(
        decision.seq,
        "execute",
        "BudgetExceeded",
        f"the execute request of step {decision.seq} on {request.get('backend')} would cost "
        f"about ${estimate:.4f}, taking the spend from ${spent:.4f} past {whose} budget "
        f"max_cost_usd=${limit:.4f}; it was not submitted (raise max_cost_usd, or use fewer "
        "shots or iterations)",
    )
