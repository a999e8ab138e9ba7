"""What happens around a step, written once for both substrates.

A step (a stage run, an execute, a fan-in) ends in a :class:`~qlayer.interpreter.Decision`.
:func:`advance` records it in the job; the decision's kind then names the transition:

========  =====================================  =================================
kind      transition                             state of the AWS state machine
========  =====================================  =================================
next      (the substrate runs the next stage)    ``Choose compute``
execute   (the substrate runs the request)       ``Execute``
fanout    :func:`start_children`                 ``Fan out`` → ``Start children``
done      :func:`finish`                         ``Finalise``
error     :func:`fail`                           ``Fail job``
========  =====================================  =================================

:data:`ROUTES` is that table (kind → state); ``tests/infra`` holds the synthesized Route
state to it. The local daemon calls these functions from its loop, the AWS handlers from
the state machine's states: Step Functions decides the order of states, the work done in
each is the same.

Every function is safe to repeat (a redelivered event, a daemon restarted mid-way): a job
that has ended is never changed again (:class:`~qlayer.core.ports.JobStore` refuses), a
child is created once, and a count moves only with the status change it counts.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from qlayer import keys
from qlayer.core import budget
from qlayer.core.ports import Event, JobRecord, NewJob, Ports
from qlayer.interpreter import DECISION_KINDS, Decision
from qlayer.status import JobStatus

#: Decision kind -> the state of the job state machine that carries it out.
ROUTES: dict[str, str] = {
    "next": "Choose compute",
    "execute": "Execute",
    "fanout": "Fan out",
    "done": "Finalise",
    "error": "Fail job",
}
assert tuple(ROUTES) == DECISION_KINDS


def child_job_id(job_id: str, seq: int, index: int) -> str:
    """The id of item ``index`` of fan-out step ``seq`` of ``job_id``."""
    return f"{job_id}_{seq}_{index}"


def advance(
    ports: Ports,
    job_id: str,
    seq: int,
    label: str,
    decision: Decision,
    *,
    ran_stage: str | None = None,
) -> Decision | None:
    """Record that step ``seq`` (``label``: its stage, ``execute``, ``fan-in``…) ended with
    ``decision``, and move the job to the step the decision starts.

    Args:
        ran_stage: The stage this step ran, if it ran one (counted for ``max_runs``).

    Returns:
        The decision to carry on with; None when there is nothing to carry on with: the
        job had ended (a late step), or a cancel was pending (the job is cancelled now).
    """
    jobs = ports.jobs
    if ran_stage is not None:
        jobs.record_run(job_id, ran_stage, seq)
    job = jobs.find(job_id)
    if job is None or job.status.is_final:
        return None
    if job.cancel_requested:
        cancel_tree(ports, job_id)
        return None
    if decision.kind == "error":
        return decision  # fail() records it, with the reason
    detail: dict[str, Any] = {"decision": decision.kind}
    finished = Event(seq, label, "finished", detail)
    if decision.kind == "next":
        jobs.update(
            job_id, status=JobStatus.RUNNING, stage=decision.stage, seq=decision.seq, event=finished
        )
    elif decision.kind == "execute":
        refused = budget.refusal(ports, job, decision)
        if refused is not None:
            jobs.update(job_id, event=finished)
            return refused  # fail() records it: the request is never submitted
        detail.update(backend=decision.backend, plan=decision.plan)
        jobs.update(
            job_id, status=JobStatus.RUNNING, stage="execute", seq=decision.seq, event=finished
        )
    else:
        jobs.update(job_id, event=finished)
    return decision


def start_children(
    ports: Ports,
    parent_id: str,
    decision: Decision,
    *,
    start: int = 0,
    stop: int | None = None,
    items: list[Any] | None = None,
) -> list[str]:
    """The fan-out transition: one child job per item, each starting at ``decision.stage``.

    The items are already encoded (by the stage that returned ``FanOut``) and are copied
    into each child's first input as they are, never decoded here. Each child also gets
    its ``input.json`` where the substrate loads jobs from it (AWS:
    :attr:`~qlayer.core.ports.Orchestrator.loads_job_inputs`).

    A substrate may create the children in batches, each call one transaction: items
    ``start`` to ``stop`` (default: all). The call with ``start == 0`` records the
    fan-out itself (its size, the parent's stage and its ``fanned out`` event); children
    must be created in item order, so those created are always a prefix.

    Args:
        start: The first item to create a child for.
        stop: One past the last (default: every item).
        items: The items, when the caller holds them already (else read from
            ``decision.items_key``).

    Returns:
        The ids of the children this call created, in item order.
    """
    assert decision.kind == "fanout" and decision.items_key and decision.stage
    store, jobs = ports.store, ports.jobs
    if items is None:
        items = store.get_json(decision.items_key)["items"]
    stop = len(items) if stop is None else min(stop, len(items))
    parent = jobs.get(parent_id)
    with_inputs = ports.orchestrator.loads_job_inputs
    keeps_inputs = ports.orchestrator.keeps_first_inputs
    with jobs.atomic():
        if start == 0:
            jobs.set_fan_out(parent_id, decision.seq, len(items))
        ids = []
        for index in range(start, stop):
            child = child_job_id(parent_id, decision.seq, index)
            ids.append(child)
            input_key = keys.stage_input(child, 0, decision.stage)
            record = {"data": items[index], "state": None}
            first_input = record if keeps_inputs and _small(record) else None
            if first_input is None:
                store.put_json(input_key, record)
            first = Decision(
                "next", seq=0, stage=decision.stage, input_key=input_key, compute=decision.compute
            )
            if with_inputs:
                store.put_json(
                    keys.job_input(child),
                    {
                        "program_id": parent.program_id,
                        "workflow": parent.workflow,
                        "arguments": parent.arguments,
                        "backend": parent.backend,
                        "first": first.to_json(),
                        "prepared": True,
                        "parent_id": parent_id,
                        "item_index": index,
                        **({"env": parent.env} if parent.env else {}),
                    },
                )
            jobs.create(
                NewJob(
                    child,
                    program_id=parent.program_id,
                    workflow=parent.workflow,
                    arguments=parent.arguments,
                    backend=parent.backend,
                    first=first,
                    parent_id=parent_id,
                    item_index=index,
                    env=parent.env,
                    first_input=first_input,
                )
            )
        if start == 0:
            jobs.update(
                parent_id,
                status=JobStatus.RUNNING,
                stage=f"{decision.stage} ×{len(items)}",
                seq=decision.seq,
                event=Event(decision.seq, decision.stage, "fanned out", {"children": len(items)}),
            )
    return ids


#: The largest first input (encoded JSON, bytes) a child keeps with its step
#: (:attr:`~qlayer.core.ports.Orchestrator.keeps_first_inputs`); larger ones are artifacts.
INLINE_INPUT_MAX_BYTES = 4096


def _small(first_input: dict[str, Any]) -> bool:
    return len(json.dumps(first_input)) <= INLINE_INPUT_MAX_BYTES


def fan_in(ports: Ports, parent_id: str, fanout: Decision) -> Decision:
    """The decision after fan-out step ``fanout.seq`` once its children have ended.

    Every child DONE: their results, in item order, go to the ``then`` stage. Otherwise
    the first child that is not DONE gives the error (its own type and message).
    """
    from qlayer.steps import fan_in as hand_on

    assert fanout.items_key is not None
    prefix = child_job_id(parent_id, fanout.seq, 0)[:-1]
    children = {
        c.item_index: c for c in ports.jobs.children(parent_id) if c.job_id.startswith(prefix)
    }
    for index in range(fanout.count):
        child = children.get(index)
        if child is None or child.status != JobStatus.DONE:
            state = child.status.value if child else "missing"
            reason = f": {child.error_type}: {child.message}" if child and child.message else ""
            return Decision.failed(
                fanout.seq,
                "fan-in",
                child.error_type if child and child.error_type else "ChildFailed",
                f"fan-out item {index} ({prefix}{index}) is {state}{reason}",
            )
    items_raw = ports.store.get_json(fanout.items_key)
    return hand_on(ports.store, parent_id, fanout.seq, items_raw, fanout.count)


class Finished(NamedTuple):
    """What :func:`finish` did.

    Attributes:
        changed: This call marked the job DONE (False: it had ended already).
        fan_in: The parent whose fan-out this child completed (the caller runs the
            parent's fan-in where Step Functions does not), else None.
    """

    changed: bool
    fan_in: str | None = None


def finish(ports: Ports, job_id: str, seq: int) -> Finished:
    """The done transition: the result is written (by the step that returned Done); DONE."""
    jobs = ports.jobs
    if not jobs.update(
        job_id, status=JobStatus.DONE, stage=None, seq=seq, event=Event(seq, None, "done")
    ):
        return Finished(False)
    job = jobs.get(job_id)
    ports.orchestrator.ended(job)
    if job.parent_id is None:
        return Finished(True)
    done, total = jobs.child_done(job.parent_id)
    return Finished(True, job.parent_id if done >= total else None)


def fail(
    ports: Ports,
    job_id: str,
    error_type: str,
    message: str,
    *,
    seq: int | None = None,
    stage: str | None = None,
) -> bool:
    """The error transition: ERROR with the reason, everywhere it matters.

    Writes ``error.json``; cancels the job's provider jobs and its children; a child's
    failure fails its fan-out parent (``fan-out item <i> (<id>) failed: …``), which cancels
    the other children. A job with no record yet (an execution started by hand for a job
    never submitted) gets one, in ERROR, so the failure is visible.

    Returns:
        True if this call failed the job; False if it had ended already.
    """
    jobs, store = ports.jobs, ports.store
    job = jobs.find(job_id)
    where = {"error_type": error_type, "message": message}
    if job is None:
        store.put_json(keys.job_error(job_id), {**where, "stage": stage, "seq": seq or 0})
        return jobs.create(
            NewJob(
                job_id,
                program_id="",
                workflow="",
                arguments={},
                backend="",
                status=JobStatus.ERROR,
                message=message,
                error_type=error_type,
            )
        )
    if job.status.is_final:
        return False
    seq = job.seq if seq is None else seq
    stage = stage or job.stage
    store.put_json(keys.job_error(job_id), {**where, "stage": stage, "seq": seq})
    if not jobs.update(
        job_id,
        status=JobStatus.ERROR,
        message=message,
        error_type=error_type,
        event=Event(seq, stage, "error", where),
    ):
        return False
    ports.orchestrator.cancel_provider_jobs(job)
    _cancel_children(ports, job_id)
    ports.orchestrator.ended(jobs.get(job_id))
    if job.parent_id is not None:
        fail(
            ports,
            job.parent_id,
            error_type,
            f"fan-out item {job.item_index} ({job_id}) failed: {message}",
        )
    return True


def fail_with(ports: Ports, job_id: str, decision: Decision) -> bool:
    """:func:`fail` with an error decision's type, message, step and stage."""
    return fail(
        ports,
        job_id,
        decision.error_type or "Error",
        decision.message or f"the job failed ({decision.error_type or 'Error'}) without a message",
        seq=decision.seq,
        stage=decision.stage,
    )


def cancel_tree(ports: Ports, job_id: str) -> bool:
    """The cancel transition: CANCELLED, its running work stopped, its provider jobs and
    its children cancelled.

    Returns:
        True if this call cancelled the job; False if it had ended already.
    """
    jobs = ports.jobs
    job = jobs.find(job_id)
    if job is None or job.status.is_final:
        return False
    changed = jobs.update(
        job_id, status=JobStatus.CANCELLED, stage=None, event=Event(None, None, "cancelled")
    )
    if changed:
        ports.orchestrator.stop(job)
    _cancel_children(ports, job_id)
    if changed:
        ports.orchestrator.ended(jobs.get(job_id))
    return changed


def cancel(ports: Ports, job_id: str) -> bool:
    """Cancel a job now (a client that can stop the job's work itself: AWS).

    Returns:
        False if the job had already ended.

    Raises:
        JobNotFound: There is no such job.
    """
    if not ports.jobs.request_cancel(job_id):
        return False
    cancel_tree(ports, job_id)
    return True


def _cancel_children(ports: Ports, job_id: str) -> None:
    for child in ports.jobs.children(job_id):
        if not child.status.is_final:
            cancel_tree(ports, child.job_id)


def status_json(job: JobRecord) -> dict[str, Any]:
    """The fields of a job record that every substrate shows in ``status --json``."""
    return {
        "job_id": job.job_id,
        "status": job.status.value,
        "stage": job.stage,
        "seq": job.seq,
        "workflow": job.workflow,
        "backend": job.backend,
        "arguments": job.arguments,
        "message": job.message,
        "error_type": job.error_type,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
    }
