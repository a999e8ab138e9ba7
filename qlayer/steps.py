"""The steps of a job, as the library runs them on any substrate.

* :func:`run_stage` runs one stage and turns what it returned into a
  :class:`~qlayer.interpreter.Decision`, writing the payloads it points at;
* :func:`complete_execute` stores an execute result and hands it to ``then``;
* :func:`fan_in` hands the children's results to ``then``.

Each is idempotent: once a step's ``output.json`` exists, running it again
returns the recorded decision without running user code again.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qlayer import codec, keys
from qlayer.context import StageContext
from qlayer.core.transitions import child_job_id
from qlayer.errors import ArtifactError, BackendError, CodecError, PlannerError
from qlayer.interpreter import Decision, Route, over_run_limit, route
from qlayer.outcomes import Execute
from qlayer.planner import Resources, plan, summarise
from qlayer.request import ExecuteRequest, encode_request
from qlayer.step_logs import QLAYER_OWN, attempt_of, redirect_output, stage_logger
from qlayer.store.base import ArtifactStore
from qlayer.workflow import Workflow


@dataclass
class JobInfo:
    """What a step needs to know of its job."""

    job_id: str
    arguments: dict[str, Any]
    backend: str
    index: int | None = None
    runs: dict[str, int] = field(default_factory=dict)  # stage -> completed runs so far
    #: Which attempt at the step this is, where the substrate counts them (the local
    #: daemon); None: counted from the step's log (see :func:`qlayer.step_logs.attempt_of`).
    attempt: int | None = None
    #: The folders of the job's environment, on this process's import path already
    #: (:mod:`qlayer.envs`): for the processes a stage starts itself.
    env_paths: tuple[str, ...] = ()


def first_input(store: ArtifactStore, job_id: str, stage: str, encoded: Any) -> str:
    """Write the first stage's input: the job's arguments, already encoded (see
    :func:`qlayer.submit.encode_arguments`; their sidecars are written once, for the job)."""
    key = keys.stage_input(job_id, 0, stage)
    store.put_json(key, {"data": encoded, "state": None})
    return key


def decode_arguments(store: ArtifactStore, encoded: Any, *, where: str = "job arguments") -> Any:
    """The job's arguments as a stage sees them (``ctx.arguments``)."""
    return codec.decode(encoded, where=where, files=store)


def run_stage(
    store: ArtifactStore,
    workflow: Workflow,
    job: JobInfo,
    seq: int,
    stage: str,
    limits: Resources,
    *,
    timeout_s: int | None = None,
    given_input: Mapping[str, Any] | None = None,
) -> Decision:
    """Run ``stage`` as step ``seq`` of ``job`` and record its decision.

    Args:
        timeout_s: Stop the stage after this many seconds (an error decision ``Timeout``),
            where the caller cannot stop the process running it (a Lambda, a Batch
            container); the local daemon stops its worker instead.
        given_input: The stage's input record itself, where the substrate kept it with
            the step (a fan-out child's small item, locally) instead of at its key.
    """
    out_key = keys.stage_output(job.job_id, seq, stage)
    if store.exists(out_key):
        try:
            return Decision.from_json(store.get_json(out_key))
        except (ArtifactError, ValueError, TypeError):
            pass  # a torn or corrupted record: run the stage again
    decision = _run_stage(store, workflow, job, seq, stage, limits, timeout_s, given_input)
    store.put_json(out_key, decision.to_json())
    return decision


def _run_stage(
    store: ArtifactStore,
    workflow: Workflow,
    job: JobInfo,
    seq: int,
    stage_name: str,
    limits: Resources,
    timeout_s: int | None = None,
    given_input: Mapping[str, Any] | None = None,
) -> Decision:
    if stage_name not in workflow.stages:
        return Decision.failed(
            seq,
            stage_name,
            "WorkflowError",
            f"workflow {workflow.name!r} has no stage {stage_name!r}; "
            f"its stages are: {', '.join(workflow.stages)}",
        )
    stage = workflow.stages[stage_name]
    runs_before = job.runs.get(stage_name, 0)
    problem = over_run_limit(workflow, stage_name, runs_before)
    if problem:
        return Decision.failed(seq, stage_name, "MaxRunsExceeded", problem)

    log_key = keys.log_key(job.job_id, seq, stage_name)
    logger, sink = stage_logger(store, log_key, job.job_id, stage_name)
    try:
        try:
            data, state = load_input(
                store, keys.stage_input(job.job_id, seq, stage_name), given=given_input
            )
            arguments = decode_arguments(store, job.arguments)
        except (ArtifactError, CodecError) as exc:
            logger.error("cannot read the input of stage %s: %s", stage_name, exc)
            return Decision.failed(seq, stage_name, "ArtifactError", str(exc))
        ctx = StageContext(
            job_id=job.job_id,
            stage=stage_name,
            seq=seq,
            arguments=arguments,
            backend=job.backend,
            store=store,
            log=logger,
            state=state,
            run=runs_before + 1,
            index=job.index,
            env_paths=job.env_paths,
        )
        counted = attempt_of(store, log_key, stage_name)
        attempt = max(job.attempt or 0, counted)
        if attempt > 1:
            # an attempt killed within its first moments may have left no lines (a quick
            # step's lines are held until it ends: qlayer.local.artifacts)
            where = "its lines are above" if counted > 1 else "it left no lines"
            sink.write_line(
                f"── attempt {attempt} of step {seq}: attempt {attempt - 1} was interrupted "
                f"before it finished ({where}) ──\n",
                now=True,
                own=False,
            )
        logger.info(
            "stage %s started (run %d, step %d, attempt %d)",
            stage_name,
            ctx.run,
            seq,
            attempt,
            extra=QLAYER_OWN,
        )
        started = time.perf_counter()
        try:
            with redirect_output(sink), _deadline(timeout_s), sink.flushing():
                returned = stage.fn(data, ctx) if stage.takes_ctx else stage.fn(data)
        except StageTimeout:
            message = f"stage {stage_name!r} exceeded its timeout of {timeout_s} s and was stopped"
            logger.error("%s", message)
            return Decision.failed(seq, stage_name, "Timeout", message)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            sink.write("".join(traceback.format_exception(exc)))
            message = _exception_message(exc, stage_name, stage.compute.memory_mb)
            logger.error("stage %s raised %s: %s", stage_name, type(exc).__name__, message)
            return Decision.failed(seq, stage_name, type(exc).__name__, message)
        logger.info(
            "stage %s finished in %.3f s",
            stage_name,
            time.perf_counter() - started,
            extra=QLAYER_OWN,
        )
        decision = materialise(
            store, workflow, job, seq, stage_name, route(workflow, stage_name, returned), limits
        )
        if decision.kind == "error":
            logger.error("%s", decision.message)
        return decision
    finally:
        sink.flush()
        logger.handlers.clear()


def _exception_message(exc: BaseException, stage: str, memory_mb: int) -> str:
    """What a stage's exception says; never empty, even for ``raise ValueError()``."""
    message = str(exc).strip()
    if not message:
        where = ""
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            last = frames[-1]
            where = f" at {last.filename.rsplit('/', 1)[-1]}, line {last.lineno}, in {last.name}"
        message = (
            f"{type(exc).__name__} raised with no message in stage {stage!r}{where}; "
            "job.logs() has the traceback"
        )
    if isinstance(exc, MemoryError):
        message += (
            f" (out of memory: stage {stage!r} may use memory_mb={memory_mb} MiB; "
            "raise memory_mb in @wf.stage() if it needs more)"
        )
    return message


def materialise(
    store: ArtifactStore,
    workflow: Workflow,
    job: JobInfo,
    seq: int,
    stage: str,
    decided: Route,
    limits: Resources,
) -> Decision:
    """Write the payloads of a routed outcome and return the decision pointing at them."""
    where = f"the output of stage {stage!r}"
    try:
        if decided.kind == "error":
            return Decision.failed(seq, stage, "WorkflowError", decided.message or "")
        if decided.kind == "done":
            key = keys.job_result(job.job_id)
            store.put_value(key, decided.payload, where=where)
            return Decision("done", seq=seq, stage=stage, result_key=key)
        if decided.kind == "next":
            assert decided.stage is not None
            key = keys.stage_input(job.job_id, seq + 1, decided.stage)
            sidecars = codec.Sidecars(store, key)
            store.put_json(
                key,
                {
                    "data": codec.encode(decided.payload, where=where, sidecars=sidecars),
                    "state": codec.encode(
                        decided.state, where=f"state from {stage!r}", sidecars=sidecars
                    ),
                },
            )
            return Decision(
                "next",
                seq=seq + 1,
                stage=decided.stage,
                input_key=key,
                compute=workflow.stages[decided.stage].compute.to_json(),
            )
        if decided.kind == "execute":
            return _materialise_execute(store, workflow, job, seq, stage, decided, limits)
        assert decided.kind == "fanout" and decided.stage and decided.then
        key = keys.step_dir(job.job_id, seq + 1, "fanout") + "items.json"
        sidecars = codec.Sidecars(store, key)
        store.put_json(
            key,
            {
                "items": codec.encode(
                    decided.payload, where=f"fan-out items of {stage!r}", sidecars=sidecars
                ),
                "state": codec.encode(
                    decided.state, where=f"state from {stage!r}", sidecars=sidecars
                ),
                "stage": decided.stage,
                "then": decided.then,
                "then_compute": workflow.stages[decided.then].compute.to_json(),
            },
        )
        return Decision(
            "fanout",
            seq=seq + 1,
            stage=decided.stage,
            then=decided.then,
            items_key=key,
            count=len(decided.payload),
            compute=workflow.stages[decided.stage].compute.to_json(),
        )
    except CodecError as exc:
        return Decision.failed(seq, stage, "CodecError", str(exc))
    except MemoryError:
        memory_mb = workflow.stages[stage].compute.memory_mb
        return Decision.failed(
            seq,
            stage,
            "MemoryError",
            f"stage {stage!r} returned, but storing the output of stage {stage!r} ran out of "
            f"memory: encoding a value takes a few times its size, and the stage may use "
            f"memory_mb={memory_mb} MiB. Raise memory_mb in @wf.stage(), or write large "
            "arrays with ctx.save_file() and return their names.",
        )


def _materialise_execute(
    store: ArtifactStore,
    workflow: Workflow,
    job: JobInfo,
    seq: int,
    stage: str,
    decided: Route,
    limits: Resources,
) -> Decision:
    from qlayer.providers.registry import resolve

    execute: Execute = decided.payload
    backend = execute.backend or job.backend
    try:
        info = resolve(backend)
        _check_pubs(execute)
        chosen = plan(info, summarise(execute.pubs, execute.shots), limits)
    except (BackendError, PlannerError, ValueError, TypeError) as exc:
        kind = (
            type(exc).__name__ if isinstance(exc, (BackendError, PlannerError)) else "InvalidPubs"
        )
        return Decision.failed(seq, stage, kind, f"stage {stage!r} asked to execute: {exc}")
    request = ExecuteRequest.from_execute(execute, backend)
    request.options = {**(request.options or {}), "method": chosen.method}
    if info.kind == "qpu" and info.provider != "aer":  # simulated devices hold no sessions
        from qlayer.providers.registry import prepare_request

        request.options.update(qpu_mode(workflow, job, stage, execute))

        try:  # client-side preparation runs here, on stage compute, not in a dispatcher
            request.prepared = prepare_request(request)
        except (ValueError, TypeError) as exc:
            return Decision.failed(
                seq, stage, "InvalidPubs", f"stage {stage!r} asked to execute: {exc}"
            )
    key = keys.execute_request(job.job_id, seq + 1)
    sidecars = codec.Sidecars(store, key)
    raw = encode_request(request, decided.state, where=f"stage {stage!r}", sidecars=sidecars)
    assert decided.then is not None
    raw["then_compute"] = workflow.stages[decided.then].compute.to_json()
    raw["plan"] = chosen.to_json()
    store.put_json(key, raw)
    return Decision(
        "execute",
        seq=seq + 1,
        then=decided.then,
        request_key=key,
        backend=backend,
        plan=chosen.to_json(),
    )


def qpu_mode(workflow: Workflow, job: JobInfo, stage: str, execute: Execute) -> dict[str, str]:
    """The execution mode of a QPU request and the group whose requests share it.

    The request's ``mode``, else the legacy ``options["mode"]``, else the workflow's
    ``qpu_mode``, else by shape: a fan-out item's requests share one batch with their
    siblings' (group: the parent's fan-out step); a loop (the stage, or the one it hands
    the result to, has run before in this job, or hands the result to itself) holds one
    session for the job; anything else is a job. The group is the qlayer job id unless
    ``options["session_group"]`` names one.
    """
    options = execute.options or {}
    mode = execute.mode or options.get("mode") or workflow.qpu_mode
    fan_out_item = job.index is not None
    if mode is None:
        looping = (
            execute.then == stage or job.runs.get(stage, 0) > 0 or job.runs.get(execute.then, 0) > 0
        )
        mode = "batch" if fan_out_item else "session" if looping else "job"
    if mode == "job":
        # No group: requests of different jobs stay alike, so they may still share one
        # provider job (coalescing compares options).
        return {"mode": "job"}
    group = options.get("session_group")
    if group is None:
        # One batch for the items of a fan-out: child ids are <parent>_<seq>_<index>.
        group = job.job_id.rsplit("_", 1)[0] if fan_out_item and mode == "batch" else job.job_id
    return {"mode": str(mode), "session_group": str(group)}


def held_group(request_raw: Mapping[str, Any], job_id: str) -> tuple[str, str] | None:
    """The session/batch a QPU request of ``job_id`` holds that qlayer closes, and the job
    whose end closes it; None for a plain job or a group the program named itself.

    A loop's session (or a job's own batch) is the job's and closes when the job ends; a
    fan-out item's batch (group ``<parent>_<seq>``) is shared by the siblings and closes
    when the job that fanned out ends — done, failed or cancelled — on both substrates.
    """
    options = request_raw.get("options") or {}
    group = options.get("session_group")
    if options.get("mode") not in ("session", "batch") or not isinstance(group, str):
        return None
    if group == job_id:
        return group, job_id
    index = job_id[len(group) + 1 :] if job_id.startswith(group + "_") else ""
    parent, _, seq = group.rpartition("_")
    if index.isdigit() and parent and seq.isdigit():
        return group, parent
    return None


def _check_pubs(execute: Execute) -> None:
    """Coerce each PUB as the primitives will, so a bad one fails in its stage."""
    from qiskit.primitives.containers.estimator_pub import EstimatorPub
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    coerce = SamplerPub.coerce if execute.primitive == "sampler" else EstimatorPub.coerce
    for index, pub in enumerate(execute.pubs):
        try:
            if execute.primitive == "sampler":
                coerce(pub, execute.shots)
            else:
                coerce(pub, execute.precision)
        except Exception as exc:
            raise ValueError(f"PUB {index} is not a valid {execute.primitive} PUB: {exc}") from exc


def load_input(
    store: ArtifactStore, key: str, *, given: Mapping[str, Any] | None = None
) -> tuple[Any, Any]:
    """A stage's input: inline data, a pointer to a result, or a list of pointers.

    Args:
        given: The input record itself, when the substrate kept it elsewhere than at
            ``key`` (read from ``key`` otherwise).
    """
    raw = dict(given) if given is not None else store.get_json(key)
    if not isinstance(raw, dict):
        raise ArtifactError(f"artifact {key} is corrupted: not a stage input")
    state = codec.decode(raw.get("state"), where=f"state in {key}", files=store)
    if "data_ref" in raw:
        return store.get_value(raw["data_ref"]), state
    if "data_refs" in raw:
        return [store.get_value(ref) for ref in raw["data_refs"]], state
    return codec.decode(raw.get("data"), where=f"input {key}", files=store), state


def complete_execute(
    store: ArtifactStore, job_id: str, seq: int, request_raw: dict[str, Any], result: Any
) -> Decision:
    """Store the result of execute step ``seq`` and hand it to the ``then`` stage."""
    result_key = keys.execute_result(job_id, seq)
    store.put_value(result_key, result, where="the execute result")
    then = request_raw["then"]
    input_key = keys.stage_input(job_id, seq + 1, then)
    store.put_json(input_key, {"data_ref": result_key, "state": request_raw.get("state")})
    decision = Decision(
        "next",
        seq=seq + 1,
        stage=then,
        input_key=input_key,
        compute=request_raw.get("then_compute"),
    )
    store.put_json(keys.step_dir(job_id, seq, "execute") + "output.json", decision.to_json())
    return decision


def fan_in(
    store: ArtifactStore, job_id: str, seq: int, items_raw: dict[str, Any], count: int
) -> Decision:
    """Hand the results of fan-out step ``seq``'s children, in item order, to ``then``."""
    then = items_raw["then"]
    input_key = keys.stage_input(job_id, seq + 1, then)
    refs = [keys.job_result(child_job_id(job_id, seq, i)) for i in range(count)]
    store.put_json(input_key, {"data_refs": refs, "state": items_raw.get("state")})
    decision = Decision(
        "next", seq=seq + 1, stage=then, input_key=input_key, compute=items_raw.get("then_compute")
    )
    store.put_json(keys.step_dir(job_id, seq, "fanout") + "output.json", decision.to_json())
    return decision


# ----------------------------------------------------------------------------- deadlines
class StageTimeout(BaseException):
    """Raised inside a stage that ran past its ``timeout_s`` (a BaseException, so a stage's
    own ``except Exception`` does not swallow it)."""


@contextlib.contextmanager
def _deadline(seconds: int | None) -> Any:
    """Raise :class:`StageTimeout` in this thread after ``seconds`` (the main thread only)."""
    import signal

    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise StageTimeout()

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------- logging
