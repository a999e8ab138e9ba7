"""The state machine's step states: load a job, run a stage, read a Batch outcome, simulate,
finalise.

Each is a thin layer over the library the local daemon's workers run too: the step itself
(:mod:`qlayer.steps`) and what happens around it (:mod:`qlayer.core.transitions`). Each
returns the next :class:`~qlayer.interpreter.Decision` for the "Route" state.

The light handlers (loader, read_outcome, finaliser) run without qiskit: this module
imports it only inside the functions of the image handlers (stage_runner, simulator) and
Batch.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from pathlib import Path
from typing import Any

from qlayer import codec, keys
from qlayer.aws.events import LoadEvent, StepEvent
from qlayer.aws.services import Services, batch_compute
from qlayer.core import transitions
from qlayer.core.ports import Event, NewJob
from qlayer.envs import load_lock
from qlayer.errors import ArtifactError, QlayerError
from qlayer.interpreter import Decision
from qlayer.status import JobStatus
from qlayer.step_logs import note


def decision_of(event: StepEvent) -> Decision:
    return Decision.from_json(event.decision_json())


def carry_on(decision: Decision | None, seq: int) -> Decision:
    """What the state machine gets: the decision, or — when the job had ended or is being
    cancelled (nothing to carry on with) — an error that ends the execution."""
    if decision is not None:
        return decision
    return Decision.failed(seq, None, "JobEnded", "the job has ended; nothing more to run")


# ------------------------------------------------------------------------------ loader
def load_job(event: LoadEvent, svc: Services) -> dict[str, Any]:
    """The "Load job" step: mark the job RUNNING and return its first decision.

    A job submitted by the client or started as a child already knows its first stage
    (``first`` in ``input.json``). A job from an inbox spec does not: its program has not
    been imported yet (this function runs without qiskit), so the first decision asks the
    stage runner to prepare it (bind the arguments, find the first stage) first.
    """
    job_id = event.job_id
    raw = svc.store.get_json(keys.job_input(job_id))
    first = Decision.from_json(raw["first"]) if raw.get("first") else None
    record = svc.jobs.find(job_id)
    if record is None:
        svc.jobs.create(
            NewJob(
                job_id,
                program_id=raw.get("program_id", ""),
                workflow=raw.get("workflow") or "",
                arguments=raw.get("arguments") or {},
                backend=raw.get("backend") or "",
                first=first,
                parent_id=raw.get("parent_id"),
                item_index=raw.get("item_index"),
                env=raw.get("env"),
            )
        )
    elif record.status.is_final:
        return Decision.failed(
            0, None, "JobEnded", f"job {job_id} is already {record.status.value}"
        ).to_json()
    stage = first.stage if first is not None else "prepare"
    svc.jobs.set(
        job_id,
        status=JobStatus.RUNNING,
        stage=stage,
        seq=0,
        attrs={"execution_arn": event.execution} if event.execution else None,
        event=Event(None, None, "execution started", {"execution": event.execution}),
    )
    env = raw.get("env") or (record.env if record is not None else None)
    if first is not None and env:
        return env_gate(svc, job_id, first, str(env)).to_json()
    if first is not None:
        return first.to_json()
    return Decision(
        "next", seq=0, stage=None, compute={"kind": "lambda"}, extra={"prepare": True}
    ).to_json()


# ------------------------------------------------------------------------------ environments
#: The key of a first decision's ``extra`` that sends it to "Build environment" first.
BUILD_ENV = "build_env"


def env_gate(svc: Services, job_id: str, first: Decision, env: str) -> Decision:
    """Before a job's first stage: its environment is built (go on), failed to build a
    moment ago (the job fails with the installer's message), or must be built (BUILDING:
    the decision carries ``extra.build_env`` and "Build environment" runs first)."""
    from qlayer.aws.envs import env_state

    state = env_state(svc.store, env)
    if state.info is not None:
        detail = {"env": env, "build": "skipped", "unpacked_mb": state.info.unpacked_mb}
        svc.jobs.update(job_id, event=Event(0, first.stage, "environment ready", detail))
        return first
    if state.failure is not None:
        return env_failed(svc, job_id, first, env, state.failure)
    try:
        packages = list(load_lock(svc.store, env).install)
    except QlayerError as exc:
        return env_failed(svc, job_id, first, env, f"its lock cannot be read: {exc}")
    svc.jobs.update(
        job_id,
        status=JobStatus.BUILDING,
        event=Event(0, first.stage, "building environment", {"env": env, "packages": packages}),
    )
    first.extra = {**first.extra, BUILD_ENV: env}
    return first


def env_outcome(svc: Services, job_id: str, decision: Decision) -> Decision:
    """The "Check environment" step, after "Build environment": the first decision (the
    job goes on, RUNNING), or the job's failure with the installer's message."""
    from qlayer.aws.envs import env_state

    env = str(decision.extra.get(BUILD_ENV))
    first = Decision.from_json(decision.to_json())
    first.extra = {k: v for k, v in decision.extra.items() if k != BUILD_ENV}
    state = env_state(svc.store, env)
    if state.info is None:
        reason = state.failure or (
            "the build job ended without recording the environment or a reason; its log "
            "is in CloudWatch (the Batch log group)"
        )
        return env_failed(svc, job_id, first, env, reason)
    svc.jobs.update(
        job_id,
        status=JobStatus.RUNNING,
        event=Event(
            0,
            first.stage,
            "environment ready",
            {"env": env, "build_s": state.info.build_s, "unpacked_mb": state.info.unpacked_mb},
        ),
    )
    return first


def env_failed(svc: Services, job_id: str, first: Decision, env: str, reason: str) -> Decision:
    """The error decision of a job whose environment cannot be built (logged too)."""
    note(
        svc.store,
        job_id,
        first.seq,
        first.stage or "environment",
        f"building environment {env} failed:\n{reason}",
    )
    return Decision.failed(
        first.seq,
        first.stage,
        "EnvBuildError",
        f"building the program's environment failed: {reason}",
    )


def env_to_batch(svc: Services, job_id: str, decision: Decision) -> Decision | None:
    """A Lambda stage whose job's environment does not fit the stage runner
    (:func:`qlayer.planner.env_on_lambda`): the same step, sent to Batch; else None."""
    from qlayer.planner import env_on_lambda

    env = svc.jobs.get(job_id).env
    if not env:
        return None
    info = svc.envs().info(env)
    archive_mb = -(-info.archive_bytes // 2**20)
    reason = env_on_lambda(info.unpacked_mb, archive_mb, svc.config.resources())
    if reason is None:
        return None
    compute = dict(decision.compute or {})
    moved = {
        "kind": "batch",
        "vcpus": max(1, math.ceil(float(compute.get("vcpus") or 1))),
        "memory_mb": max(2048, int(compute.get("memory_mb") or 0)),
        "gpus": 0,
        "timeout_s": max(60, int(compute.get("timeout_s") or 900)),
    }
    svc.jobs.update(
        job_id,
        event=Event(
            decision.seq,
            decision.stage,
            "moved to Batch",
            {"env": env, "reason": reason, "compute": moved},
        ),
    )
    decision.compute = moved
    return decision


def env_paths(svc: Services, job_id: str, env: str | None) -> tuple[Path, ...]:
    """The folders to import a job's environment from (unpacked on first use), or ()."""
    if not env:
        return ()
    return (svc.envs().path(env),)


# ------------------------------------------------------------------------------ stages
def prepare(svc: Services, job_id: str) -> Decision:
    """Import the program, check it against the deployment, bind the arguments and write
    the first stage's input (a job from an inbox spec)."""
    from qlayer.planner import check_stages
    from qlayer.submit import write_inputs

    raw = svc.store.get_json(keys.job_input(job_id))
    try:
        # A spec's arguments come from outside: decoded within the codec's bounds, and
        # they may not refer to files in the bucket.
        arguments = codec.decode(raw.get("arguments") or {}, where="the job spec's arguments")
        workflow = svc.programs().workflow(raw["program_id"])
        check_stages(workflow, svc.config.resources())
        refuse_requirements(svc, raw["program_id"], workflow)
        job = write_inputs(
            svc.store,
            job_id,
            raw["program_id"],
            workflow,
            arguments,
            backend=raw.get("backend"),
            extra=raw,
        )
    except QlayerError as exc:
        note(svc.store, job_id, 0, "prepare", f"cannot start the job: {type(exc).__name__}: {exc}")
        return Decision.failed(0, None, type(exc).__name__, str(exc))
    svc.jobs.set(
        job_id,
        stage=job.first_stage,
        seq=0,
        attrs={
            "workflow": workflow.name,
            "backend": job.backend,
            "arguments": json.dumps(job.arguments),
        },
    )
    return job.first


def refuse_requirements(svc: Services, program_id: str, workflow: Any) -> None:
    """An inbox spec's program may not declare requirements (yet): resolving them writes
    ``envs/``, which no role that runs user code may do.

    Raises:
        RequirementError: The program declares requirements.
    """
    from qlayer.envs import stored_program_requirements
    from qlayer.errors import RequirementError

    declared = stored_program_requirements(svc.store, program_id, workflow)
    if declared:
        raise RequirementError(
            f"the program declares requirements ({', '.join(declared)}), which a job "
            "started from an inbox spec cannot bring yet: submit it with the qlayer client "
            "(Client.aws().run or `qlayer --target aws run`), which resolves them"
        )


def run_stage_step(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Run stage on Lambda" step: one stage, by :func:`run_stage_for`."""
    decision = decision_of(event)
    if decision.extra.get("prepare") or decision.stage is None:
        decision = prepare(svc, event.job_id)
        if decision.kind != "next" or (decision.compute or {}).get("kind", "lambda") != "lambda":
            return batch_compute(svc, decision).to_json()  # an error, or a first stage for Batch
    assert decision.stage is not None
    declared = int((decision.compute or {}).get("memory_mb") or 0)
    offered = svc.config.resources().stage_memory_mb
    if declared > offered:
        message = (
            f"stage {decision.stage!r} declares memory_mb={declared}, but Lambda stages run "
            f"with {offered} MB in this stack (stage_memory_mb); use compute='batch' or "
            "deploy the stack with a larger stage_memory_mb"
        )
        return Decision.failed(decision.seq, decision.stage, "PlannerError", message).to_json()
    moved = env_to_batch(svc, event.job_id, decision)
    if moved is not None:
        return moved.to_json()
    return batch_compute(
        svc, run_stage_for(svc, event.job_id, decision.seq, decision.stage)
    ).to_json()


def run_stage_for(svc: Services, job_id: str, seq: int, stage: str) -> Decision:
    """Run ``stage`` as step ``seq`` (the stage runner Lambda, or a Batch container),
    within its declared ``timeout_s``, and record its end."""
    from qlayer.steps import JobInfo, run_stage

    record = svc.jobs.get(job_id)
    ports = svc.ports()
    svc.jobs.update(
        job_id,
        status=JobStatus.RUNNING,
        stage=stage,
        seq=seq,
        event=Event(seq, stage, "started", {"stage": stage}),
    )
    try:
        paths = env_paths(svc, job_id, record.env)
    except QlayerError as exc:
        note(svc.store, job_id, seq, stage, f"cannot fetch the environment: {exc}")
        decision = Decision.failed(seq, stage, "EnvBuildError", str(exc))
        svc.store.put_json(keys.stage_output(job_id, seq, stage), decision.to_json())
        return carry_on(transitions.advance(ports, job_id, seq, stage, decision), seq)
    try:
        workflow = svc.programs().workflow(record.program_id, paths)
    except Exception as exc:
        note(svc.store, job_id, seq, stage, f"cannot load the program: {type(exc).__name__}: {exc}")
        decision = Decision.failed(seq, stage, "ProgramError", str(exc))
        svc.store.put_json(keys.stage_output(job_id, seq, stage), decision.to_json())
        return carry_on(transitions.advance(ports, job_id, seq, stage, decision), seq)
    info = JobInfo(
        job_id=job_id,
        arguments=record.arguments,
        backend=record.backend,
        index=record.item_index,
        runs=svc.jobs.runs_before(job_id, seq),
        env_paths=tuple(str(path) for path in paths),
    )
    declared = workflow.stages[stage].compute.timeout_s if stage in workflow.stages else None
    decision = run_stage(
        svc.store, workflow, info, seq, stage, svc.config.resources(), timeout_s=declared
    )
    return carry_on(transitions.advance(ports, job_id, seq, stage, decision, ran_stage=stage), seq)


def read_outcome(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Read stage outcome" step: the decision a Batch container wrote to output.json."""
    decision = decision_of(event)
    job_id, seq = event.job_id, decision.seq
    if decision.extra.get(BUILD_ENV):
        return env_outcome(svc, job_id, decision).to_json()
    if decision.kind == "execute":
        label, key = "execute", keys.step_dir(job_id, seq, "execute") + "output.json"
    else:
        label = decision.stage or "stage"
        key = keys.stage_output(job_id, seq, label)
    try:
        outcome = Decision.from_json(svc.store.get_json(key))
    except (ArtifactError, ValueError, TypeError) as exc:
        outcome = Decision.failed(
            seq,
            label,
            "BatchOutputMissing",
            f"the Batch job of step {seq} ({label}) ended without a readable {key}: {exc}. "
            "Its container log is in CloudWatch (log group of the Batch job definition).",
        )
    ran = decision.stage if decision.kind == "next" else None
    carried = transitions.advance(svc.ports(), job_id, seq, label, outcome, ran_stage=ran)
    return batch_compute(svc, carry_on(carried, seq)).to_json()


# ------------------------------------------------------------------------------ execute
def simulate(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Simulate on Lambda" step: run an execute request on our own compute."""
    decision = decision_of(event)
    outcome = simulate_step(
        svc, event.job_id, decision.seq, decision.request_key or "", decision.backend or ""
    )
    carried = transitions.advance(svc.ports(), event.job_id, decision.seq, "execute", outcome)
    return batch_compute(svc, carry_on(carried, decision.seq)).to_json()


def simulate_step(
    svc: Services,
    job_id: str,
    seq: int,
    request_key: str,
    backend: str,
    status: JobStatus = JobStatus.RUNNING,
) -> Decision:
    """Run execute step ``seq`` on our own compute; idempotent like every step."""
    from qlayer.providers.registry import sync_provider
    from qlayer.request import decode_request
    from qlayer.steps import complete_execute

    out_key = keys.step_dir(job_id, seq, "execute") + "output.json"
    if svc.store.exists(out_key):
        try:
            return Decision.from_json(svc.store.get_json(out_key))
        except (ArtifactError, ValueError, TypeError):
            pass  # torn: run it again
    qpu = status == JobStatus.WAITING_FOR_QPU
    detail: dict[str, Any] = {"backend": backend}
    if qpu:
        detail["provider_job_id"] = f"{job_id}/{seq}"
    svc.jobs.update(
        job_id,
        status=status,
        stage="execute",
        seq=seq,
        event=Event(seq, "execute", "device running" if qpu else "started", detail),
    )
    try:
        request_raw = svc.store.get_json(request_key or keys.execute_request(job_id, seq))
        request = decode_request(request_raw)
        started = time.perf_counter()
        result = sync_provider(backend).run(backend, request)
        note(
            svc.store,
            job_id,
            seq,
            "execute",
            f"{request.primitive} on {backend}: {len(request.pubs)} PUB(s) in "
            f"{time.perf_counter() - started:.3f} s",
        )
    except Exception as exc:
        message = str(exc) or repr(exc)
        note(
            svc.store,
            job_id,
            seq,
            "execute",
            f"execute failed on {backend}: {type(exc).__name__}: "
            f"{message}\n{traceback.format_exc()}",
        )
        failed = Decision.failed(
            seq, "execute", type(exc).__name__, f"execute on {backend} failed: {message}"
        )
        svc.store.put_json(out_key, failed.to_json())
        return failed
    return complete_execute(svc.store, job_id, seq, request_raw, result)


# ------------------------------------------------------------------------------ ends
def finalise(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Finalise" step: the result is written (by the step that returned Done); DONE."""
    decision = decision_of(event)
    changed = transitions.finish(svc.ports(), event.job_id, decision.seq).changed
    record = svc.jobs.get(event.job_id)
    return {"job_id": event.job_id, "status": record.status.value, "changed": changed}
