"""What each Lambda function (and the Batch entry point) does, as plain library functions.

``functions/<name>/app.py`` parses its event with :mod:`qlayer.aws.events` and calls
one function here with the process's :class:`Services`. The step logic itself is
:mod:`qlayer.steps` (the same code the local daemon's workers run): these functions
only load what a step needs, call it, record progress in the ``jobs`` table and
return the next :class:`~qlayer.interpreter.Decision` for the state machine's
"Route" state.

Light handlers (trigger, loader, read_outcome, start_children, fan_in, finaliser,
fail_job) must not import qiskit: this module imports it only inside the functions
of the image handlers (stage_runner, simulator, dispatcher, poller).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from qlayer import keys
from qlayer.aws.config import AwsConfig
from qlayer.aws.events import (
    DispatchMessage,
    EventError,
    ExecutionStatusChange,
    FailureEvent,
    JobSpec,
    LoadEvent,
    S3Event,
    SqsEvent,
    StepEvent,
    parse,
)
from qlayer.aws.jobs import JobRecord, JobTable, TaskTable, task_key
from qlayer.aws.store import S3Store
from qlayer.errors import ArtifactError, QlayerError
from qlayer.interpreter import Decision
from qlayer.status import JobStatus

log = logging.getLogger("qlayer.aws")

#: Key suffix of the error report written next to a malformed inbox spec.
SPEC_ERROR_SUFFIX = ".error.json"
#: Written next to a spec when its job starts, and when it ends.
SPEC_JOB_SUFFIX = ".job.json"
SPEC_RESULT_SUFFIX = ".result.json"
_OWN_REPORTS = (SPEC_ERROR_SUFFIX, SPEC_JOB_SUFFIX, SPEC_RESULT_SUFFIX)
#: Token errors that mean the state already moved on (a duplicate delivery): ignored.
_STALE_TOKEN = {"TaskDoesNotExist", "InvalidToken", "TaskTimedOut"}
#: Seconds a dispatch message deferred by a backend's in-flight limit stays invisible
#: before SQS delivers it again (instead of the queue's whole visibility timeout).
DEFER_ENV = "QLAYER_DISPATCH_DEFER_S"
DEFAULT_DEFER_S = 30
#: SQS's largest visibility timeout (12 hours).
_MAX_VISIBILITY_S = 43200


def _defer_s_from_env() -> int:
    return int(os.environ.get(DEFER_ENV, DEFAULT_DEFER_S))


@dataclass
class Services:
    """What a handler works with; built once per Lambda process (or by a test with moto)."""

    config: AwsConfig
    store: S3Store
    jobs: JobTable
    tasks: TaskTable | None = None
    sfn: Any = None
    sqs: Any = None
    provider_for: Callable[[str], Any] | None = None
    scratch: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "qlayer-programs")
    #: Provider calls: tries per call and the first backoff delay (``with_retries``);
    #: ``sleep`` is injected by tests. A Lambda must finish within its timeout, so few.
    retry_attempts: int = 4
    retry_base_s: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    #: Seconds before a message deferred by an in-flight limit comes back (QLAYER_DISPATCH_DEFER_S).
    defer_s: int = field(default_factory=_defer_s_from_env)
    #: Per-backend limits (``qlayer.dispatch``: providers' published quotas, plugins'
    #: ``limits``, then QLAYER_LIMITS); built on first use.
    limiter: Any = None
    _programs: Any = None

    @classmethod
    def create(cls, config: AwsConfig, session: Any = None, **overrides: Any) -> Services:
        """Services with boto3 clients from ``session`` (default: a new boto3 Session)."""
        import boto3
        from botocore.config import Config

        session = session or boto3.Session(region_name=config.region)
        retries = Config(retries={"mode": "standard", "max_attempts": 5})
        values: dict[str, Any] = {
            "config": config,
            "store": S3Store(config.bucket, session.client("s3", config=retries)),
            "jobs": JobTable(config.jobs_table, session.client("dynamodb", config=retries)),
            "sfn": session.client("stepfunctions", config=retries),
            "sqs": session.client("sqs", config=retries) if config.dispatch_queue_url else None,
        }
        if config.tasks_table:
            values["tasks"] = TaskTable(config.tasks_table, values["jobs"].client)
        values.update(overrides)
        return cls(**values)

    def programs(self) -> Any:
        from qlayer.program import ProgramCache

        if self._programs is None:
            self._programs = ProgramCache(self.store, self.scratch)
        return self._programs

    def limits(self) -> Any:
        """The process's :class:`qlayer.dispatch.RateLimiter` (token buckets are per process;
        the in-flight cap is counted in the tasks table, across all dispatchers)."""
        if self.limiter is None:
            from qlayer.dispatch import RateLimiter
            from qlayer.providers.registry import configured_limits

            self.limiter = RateLimiter(configured_limits())
        return self.limiter

    def retry(self, fn: Callable[[], Any]) -> Any:
        """``fn`` with retries of retryable provider errors (throttling, transient network)."""
        from qlayer.dispatch import with_retries

        return with_retries(fn, self.retry_attempts, self.retry_base_s, sleep=self.sleep)

    def provider(self, backend: str) -> Any:
        if self.provider_for is not None:
            return self.provider_for(backend)
        from qlayer.providers.registry import provider_for

        return provider_for(backend)


@functools.lru_cache(maxsize=1)
def services() -> Services:
    """The process's services from the Lambda environment (cached across warm invocations)."""
    return Services.create(AwsConfig.from_env())


# ------------------------------------------------------------------------------ helpers
def limits() -> Any:
    """AWS tiers: no local memory limit, so the planner picks lambda/batch/batch-gpu/qpu."""
    from qlayer.planner import Limits

    return Limits()


def with_compute(decision: Decision) -> Decision:
    """Give an execute decision bound for Batch the ``compute`` its Batch state reads."""
    plan = decision.plan or {}
    tier = plan.get("tier")
    if decision.kind == "execute" and tier in ("batch", "batch-gpu") and decision.compute is None:
        memory = max(2048, int(plan.get("memory_mb") or 0) + 512)
        decision.compute = {
            "kind": tier,
            "vcpus": 4 if tier == "batch" else 8,
            "memory_mb": memory,
            "gpus": 1 if tier == "batch-gpu" else 0,
            "timeout_s": 43200,
        }
    return decision


def _log_line(svc: Services, job_id: str, seq: int, name: str, text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    try:
        svc.store.append_text(keys.log_key(job_id, seq, name), f"{stamp} qlayer  {text.rstrip()}\n")
    except Exception:  # pragma: no cover - a log line must never fail a step
        log.exception("cannot write a log line for %s", job_id)


def advance(svc: Services, job_id: str, label: str, finished_seq: int, decision: Decision) -> None:
    """Record a finished step in the job's row: a timeline event, and where it goes next.

    The event (``finished`` or ``error``) names the step that ended (``finished_seq``,
    ``label``); the row's stage and seq move on to the step the decision starts.
    """
    where: dict[str, Any] = {"event_seq": finished_seq, "event_stage": label}
    if decision.kind == "error":
        svc.jobs.update(
            job_id,
            event="error",
            detail={"error_type": decision.error_type, "message": decision.message},
            **where,
        )
        return
    detail: dict[str, Any] = {"decision": decision.kind}
    if decision.kind == "next":
        svc.jobs.update(
            job_id,
            status=JobStatus.RUNNING,
            stage=decision.stage,
            seq=decision.seq,
            event="finished",
            detail=detail,
            **where,
        )
    elif decision.kind == "execute":
        detail.update(backend=decision.backend, plan=decision.plan)
        svc.jobs.update(
            job_id,
            status=JobStatus.RUNNING,
            stage="execute",
            seq=decision.seq,
            event="finished",
            detail=detail,
            **where,
        )
    else:
        svc.jobs.update(job_id, event="finished", detail=detail, **where)


def _decision_of(event: StepEvent) -> Decision:
    return Decision.from_json(event.decision_json())


# ------------------------------------------------------------------------------ loader
def load_job(event: LoadEvent, svc: Services) -> dict[str, Any]:
    """The "Load job" step: mark the job RUNNING and return its first decision.

    A job submitted by the client or started as a child already knows its first
    stage (``first`` in ``input.json``). A job from an inbox spec does not: its
    program has not been imported yet (this function runs without qiskit), so the
    first decision asks the stage runner to prepare it (bind the arguments, find
    the first stage) before running it.
    """
    job_id = event.job_id
    raw = svc.store.get_json(keys.job_input(job_id))
    record = svc.jobs.find(job_id)
    if record is None:
        svc.jobs.put_job(
            job_id,
            program_id=raw.get("program_id", ""),
            workflow=raw.get("workflow") or "",
            arguments=raw.get("arguments") or {},
            backend=raw.get("backend") or "",
        )
    elif record.status.is_final:
        return Decision.failed(
            0, None, "JobEnded", f"job {job_id} is already {record.status.value}"
        ).to_json()
    first = raw.get("first")
    if first:
        decision = Decision.from_json(first)
        svc.jobs.update(
            job_id,
            status=JobStatus.RUNNING,
            stage=decision.stage,
            seq=0,
            execution_arn=event.execution,
            event="started",
            detail={"execution": event.execution},
        )
        return decision.to_json()
    svc.jobs.update(
        job_id,
        status=JobStatus.RUNNING,
        stage="prepare",
        seq=0,
        execution_arn=event.execution,
        event="started",
        detail={"execution": event.execution},
    )
    return Decision(
        "next", seq=0, stage=None, compute={"kind": "lambda"}, extra={"prepare": True}
    ).to_json()


# ------------------------------------------------------------------------------ stages
def prepare(svc: Services, job_id: str) -> Decision:
    """Import the program, bind the arguments and write the first stage's input."""
    from qlayer.submit import write_inputs

    raw = svc.store.get_json(keys.job_input(job_id))
    try:
        workflow = svc.programs().workflow(raw["program_id"])
        job = write_inputs(
            svc.store,
            job_id,
            raw["program_id"],
            workflow,
            raw.get("arguments") or {},
            backend=raw.get("backend"),
            extra=raw,
        )
    except QlayerError as exc:
        _log_line(svc, job_id, 0, "prepare", f"cannot start the job: {type(exc).__name__}: {exc}")
        return Decision.failed(0, None, type(exc).__name__, str(exc))
    svc.jobs.update(
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


def run_stage_step(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Run stage on Lambda" step (and Batch's entry point): one stage, by qlayer.steps."""
    decision = _decision_of(event)
    if decision.extra.get("prepare") or decision.stage is None:
        decision = prepare(svc, event.job_id)
        if decision.kind != "next" or (decision.compute or {}).get("kind", "lambda") != "lambda":
            return with_compute(decision).to_json()  # an error, or a first stage bound for Batch
    return with_compute(
        run_stage_for(svc, event.job_id, decision.seq, decision.stage or "")
    ).to_json()


def run_stage_for(svc: Services, job_id: str, seq: int, stage: str) -> Decision:
    from qlayer.steps import JobInfo, run_stage

    record = svc.jobs.get(job_id)
    svc.jobs.update(
        job_id,
        status=JobStatus.RUNNING,
        stage=stage,
        seq=seq,
        event="started",
        detail={"stage": stage},
    )
    try:
        workflow = svc.programs().workflow(record.program_id)
    except Exception as exc:
        _log_line(svc, job_id, seq, stage, f"cannot load the program: {type(exc).__name__}: {exc}")
        decision = Decision.failed(seq, stage, "ProgramError", str(exc))
        svc.store.put_json(keys.stage_output(job_id, seq, stage), decision.to_json())
        advance(svc, job_id, stage, seq, decision)
        return decision
    info = JobInfo(
        job_id=job_id,
        arguments=record.arguments,
        backend=record.backend,
        index=record.item_index,
        runs=record.runs_before(seq),
    )
    decision = run_stage(svc.store, workflow, info, seq, stage, limits())
    svc.jobs.record_run(job_id, stage, seq)
    advance(svc, job_id, stage, seq, decision)
    return decision


def read_outcome(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Read stage outcome" step: the decision a Batch container wrote to output.json."""
    decision = _decision_of(event)
    job_id, seq = event.job_id, decision.seq
    if decision.kind == "execute":
        label, key = "execute", keys.step_dir(job_id, seq, "execute") + "output.json"
    else:
        label, key = (
            decision.stage or "stage",
            keys.stage_output(job_id, seq, decision.stage or "stage"),
        )
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
    if decision.kind == "next" and decision.stage:
        svc.jobs.record_run(job_id, decision.stage, seq)
    advance(svc, job_id, label, seq, outcome)
    return with_compute(outcome).to_json()


# ------------------------------------------------------------------------------ execute
def simulate(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Simulate on Lambda" step: run an execute request on Aer; ``then`` gets the result."""
    decision = _decision_of(event)
    outcome = simulate_step(
        svc, event.job_id, decision.seq, decision.request_key or "", decision.backend or ""
    )
    advance(svc, event.job_id, "execute", decision.seq, outcome)
    return with_compute(outcome).to_json()


def simulate_step(
    svc: Services,
    job_id: str,
    seq: int,
    request_key: str,
    backend: str,
    status: JobStatus = JobStatus.RUNNING,
) -> Decision:
    """Run execute step ``seq`` on our own compute; idempotent like every step."""
    from qlayer.request import decode_request
    from qlayer.steps import complete_execute

    out_key = keys.step_dir(job_id, seq, "execute") + "output.json"
    if svc.store.exists(out_key):
        try:
            return Decision.from_json(svc.store.get_json(out_key))
        except (ArtifactError, ValueError, TypeError):
            pass  # torn: run it again
    svc.jobs.update(
        job_id,
        status=status,
        stage="execute",
        seq=seq,
        event="device running" if status == JobStatus.WAITING_FOR_QPU else "started",
        detail={"backend": backend, "provider_job_id": task_key(job_id, seq)}
        if status == JobStatus.WAITING_FOR_QPU
        else {"backend": backend},
    )
    try:
        request_raw = svc.store.get_json(request_key or keys.execute_request(job_id, seq))
        request = decode_request(request_raw)
        started = time.perf_counter()
        result = svc.provider(backend).run(backend, request)
        _log_line(
            svc,
            job_id,
            seq,
            "execute",
            f"{request.primitive} on {backend}: {len(request.pubs)} PUB(s) in "
            f"{time.perf_counter() - started:.3f} s",
        )
    except Exception as exc:
        message = str(exc) or repr(exc)
        _log_line(
            svc,
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


# ------------------------------------------------------------------------------ fan-out
def start_children(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Start children" step: one child job per fan-out item (input, row); the Map starts them.

    Returns ``{"children": [ids], "children_key": key, "count": n}`` at ``$.fanout``;
    past the inline Map limit the ids are only in ``children_key`` (the state stays small).
    """
    from qlayer.interpreter import INLINE_MAP_LIMIT
    from qlayer.steps import child_job_id

    decision = _decision_of(event)
    job_id, seq = event.job_id, decision.seq
    assert decision.items_key is not None and decision.stage is not None
    items = svc.store.get_json(decision.items_key)["items"]
    parent = svc.jobs.get(job_id)
    ids = []
    for index, item in enumerate(items):
        child = child_job_id(job_id, seq, index)
        ids.append(child)
        input_key = keys.stage_input(child, 0, decision.stage)
        # The items are already encoded (codec): copied as they are, never decoded here.
        svc.store.put_json(input_key, {"data": item, "state": None})
        first = Decision(
            "next", seq=0, stage=decision.stage, input_key=input_key, compute=decision.compute
        )
        svc.store.put_json(
            keys.job_input(child),
            {
                "program_id": parent.program_id,
                "workflow": parent.workflow,
                "arguments": parent.arguments,
                "backend": parent.backend,
                "first": first.to_json(),
                "prepared": True,
                "parent_id": job_id,
                "item_index": index,
            },
        )
        svc.jobs.put_job(
            child,
            program_id=parent.program_id,
            workflow=parent.workflow,
            arguments=parent.arguments,
            backend=parent.backend,
            stage=decision.stage,
            parent_id=job_id,
            item_index=index,
        )
    children_key = keys.step_dir(job_id, seq, "fanout") + "children.json"
    svc.store.put_json(children_key, ids)
    svc.jobs.update(
        job_id,
        status=JobStatus.RUNNING,
        stage=f"{decision.stage} ×{len(ids)}",
        seq=seq,
        children_total=len(ids),
        attrs={"fanout_seq": seq},
        event="fanned out",
        detail={"children": len(ids)},
    )
    return {
        "children": ids if len(ids) <= INLINE_MAP_LIMIT else [],
        "children_key": children_key,
        "count": len(ids),
    }


def fan_in_step(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Fan in" step: every child is DONE; hand their results, in item order, to ``then``."""
    from qlayer.steps import child_job_id, fan_in

    decision = _decision_of(event)
    job_id, seq = event.job_id, decision.seq
    ids = [child_job_id(job_id, seq, i) for i in range(decision.count)]
    outcome: Decision | None = None
    for index, (child_id, child) in enumerate(zip(ids, svc.jobs.get_many(ids), strict=True)):
        if child is None or child.status != JobStatus.DONE:
            state = child.status.value if child else "missing"
            reason = f": {child.error_type}: {child.message}" if child and child.message else ""
            outcome = Decision.failed(
                seq,
                "fan-in",
                child.error_type if child and child.error_type else "ChildFailed",
                f"fan-out item {index} ({child_id}) is {state}{reason}",
            )
            break
    if outcome is None:
        assert decision.items_key is not None
        outcome = fan_in(
            svc.store, job_id, seq, svc.store.get_json(decision.items_key), decision.count
        )
    advance(svc, job_id, "fan-in", seq, outcome)
    return with_compute(outcome).to_json()


# ------------------------------------------------------------------------------ ends
def finalise(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Finalise" step: the result is written (by the step that returned Done); mark DONE."""
    decision = _decision_of(event)
    changed = svc.jobs.update(
        event.job_id, status=JobStatus.DONE, clear_stage=True, seq=decision.seq, event="done"
    )
    record = svc.jobs.get(event.job_id)
    if changed:
        report_to_spec(svc, event.job_id)
    return {"job_id": event.job_id, "status": record.status.value, "changed": changed}


def _cause_text(failure: Mapping[str, Any]) -> str:
    """The words of a caught Step Functions error (a Lambda's Cause is JSON)."""
    cause = failure.get("Cause") or ""
    try:
        parsed = json.loads(cause)
    except (TypeError, ValueError):
        return str(cause)
    if isinstance(parsed, dict):
        return str(
            parsed.get("errorMessage")
            or parsed.get("StatusReason")
            or parsed.get("message")
            or cause
        )
    return str(cause)


def record_failure(
    svc: Services,
    job_id: str,
    error_type: str,
    message: str,
    *,
    seq: int | None = None,
    stage: str | None = None,
    cancel: bool = False,
) -> bool:
    """Put the job in ERROR (or CANCELLED) with its reason; never overwrites a final status.

    A job with no row yet (an execution started by hand for a job that was never
    prepared) gets one, in ERROR, so the failure is visible to ``qlayer status``.
    """
    record = svc.jobs.find(job_id)
    if record is None:
        if cancel:
            return False
        svc.jobs.put_job(
            job_id,
            program_id="",
            workflow="",
            arguments={},
            backend="",
            status=JobStatus.ERROR,
            message=message,
            error_type=error_type,
        )
        svc.store.put_json(
            keys.job_error(job_id),
            {"error_type": error_type, "message": message, "stage": stage, "seq": seq or 0},
        )
        return True
    if record.status.is_final:
        return False
    if cancel:
        changed = svc.jobs.update(
            job_id, status=JobStatus.CANCELLED, clear_stage=True, event="cancelled"
        )
    else:
        svc.store.put_json(
            keys.job_error(job_id),
            {
                "error_type": error_type,
                "message": message,
                "stage": stage or record.stage,
                "seq": record.seq if seq is None else seq,
            },
        )
        changed = svc.jobs.update(
            job_id,
            status=JobStatus.ERROR,
            message=message,
            error_type=error_type,
            event="error",
            detail={"error_type": error_type, "message": message},
        )
    if changed:
        cancel_provider_tasks(svc, record)
        report_to_spec(svc, job_id)
    return changed


def cancel_provider_tasks(svc: Services, record: JobRecord) -> None:
    """Ask the dispatcher to cancel the job's open provider task (cancel reaches the QPU)."""
    if svc.sqs is None or not svc.config.dispatch_queue_url or record.stage != "execute":
        return
    svc.sqs.send_message(
        QueueUrl=svc.config.dispatch_queue_url,
        MessageBody=json.dumps({"action": "cancel", "job_id": record.job_id, "seq": record.seq}),
    )


def fail_job(event: Mapping[str, Any], svc: Services) -> dict[str, Any]:
    """The "Fail job" step (an error decision or a caught failure), or an execution-ended event."""
    if event.get("source") == "aws.states":
        change = parse(ExecutionStatusChange, event, what="execution status change")
        job_id, status = change.detail.name, change.detail.status
        record = svc.jobs.find(job_id)
        if record is None:
            return {"job_id": job_id, "changed": False}
        if status == "ABORTED" and record.cancel_requested:
            changed = record_failure(svc, job_id, "Cancelled", "cancelled", cancel=True)
        else:
            words = {"FAILED": "failed", "TIMED_OUT": "timed out", "ABORTED": "was stopped"}.get(
                status, status
            )
            text = f"the job's execution {words}"
            if change.detail.error or change.detail.cause:
                text += f": {change.detail.error or ''} {change.detail.cause or ''}".rstrip()
            changed = record_failure(
                svc, job_id, f"Execution{status.title().replace('_', '')}", text
            )
        return {"job_id": job_id, "changed": changed}

    parsed = parse(FailureEvent, event, what="Fail job event")
    decision = parsed.decision
    error_type = str(decision.get("error_type") or "Error")
    message: str | None = decision.get("message")
    failure = decision.get("failure")
    if not message and isinstance(failure, Mapping):
        message = f"{failure.get('Error', error_type)}: {_cause_text(failure)}"
        child = _failed_child(svc, parsed.job_id)
        if child is not None:
            error_type = child.error_type or error_type
            message = f"fan-out item {child.item_index} ({child.job_id}) failed: {child.message}"
    message = str(
        message or f"the job failed ({error_type}) without a message; see the execution history"
    )
    changed = record_failure(
        svc,
        parsed.job_id,
        error_type,
        message,
        seq=decision.get("seq"),
        stage=decision.get("stage"),
    )
    return {"job_id": parsed.job_id, "status": "ERROR", "changed": changed}


def _failed_child(svc: Services, job_id: str) -> JobRecord | None:
    record = svc.jobs.find(job_id)
    if record is None or not record.children_total:
        return None
    from qlayer.steps import child_job_id

    ids = [child_job_id(job_id, record.fanout_seq, i) for i in range(record.children_total)]
    for child in svc.jobs.get_many(ids):
        if child is not None and child.status == JobStatus.ERROR:
            return child
    return None


# ------------------------------------------------------------------------------ trigger
def spec_job_id(bucket: str, key: str, record_id: str, event_time: str | None) -> str:
    """A job id derived from the upload, so a redelivered S3 event starts no second job."""
    stamp = time.gmtime()
    if event_time:
        try:
            stamp = datetime.fromisoformat(event_time.replace("Z", "+00:00")).utctimetuple()
        except ValueError:
            pass
    digest = hashlib.sha256(f"{bucket}/{key}/{record_id}".encode()).hexdigest()[:6]
    return time.strftime("%Y%m%d-%H%M%S", stamp) + "-" + digest


def trigger_from_s3(event: Mapping[str, Any], svc: Services) -> list[dict[str, Any]]:
    """An upload to ``inbox/*.json`` starts a job; a malformed spec gets ``<key>.error.json``."""
    parsed = parse(S3Event, event, what="S3 event")
    started = []
    for record in parsed.Records:
        key = urllib.parse.unquote_plus(record.s3.object.key)
        if key.endswith(_OWN_REPORTS):
            continue  # our own reports next to a spec
        obj = record.s3.object
        job_id = spec_job_id(
            record.s3.bucket.name,
            key,
            obj.sequencer or obj.versionId or obj.eTag or "",
            record.eventTime,
        )
        started.append(start_from_spec(svc, key, job_id))
    return started


def start_from_spec(svc: Services, key: str, job_id: str) -> dict[str, Any]:
    existing = svc.jobs.find(job_id)
    if existing is not None:  # a redelivered event: make sure it started, once
        if existing.status == JobStatus.QUEUED:
            start_execution(svc, job_id)
        return {"key": key, "job_id": job_id, "duplicate": True}
    try:
        raw = svc.store.get_bytes(key)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EventError(f"invalid job spec: {key} is not JSON ({exc})") from exc
        spec = parse(JobSpec, body, what=f"job spec {key}")
        program_id = _spec_program(svc, spec)
        if spec.backend is not None:
            _check_backend_name(spec.backend)
    except QlayerError as exc:
        message = str(exc)
        error = {
            "spec_key": key,
            "job_id": job_id,
            "error_type": type(exc).__name__,
            "message": message,
            "expected": {
                "program": "programs/<id>/ or the key of a .py in this bucket",
                "arguments": {},
                "backend": "aer",
            },
        }
        svc.store.put_json(key + SPEC_ERROR_SUFFIX, error)
        svc.jobs.put_job(
            job_id,
            program_id="",
            workflow="",
            arguments={},
            backend="",
            status=JobStatus.ERROR,
            message=message,
            error_type=type(exc).__name__,
        )
        svc.store.put_json(
            keys.job_error(job_id),
            {"error_type": type(exc).__name__, "message": message, "stage": None, "seq": 0},
        )
        return {"key": key, "job_id": job_id, "error": message}
    svc.store.put_json(
        keys.job_input(job_id),
        {
            "program_id": program_id,
            "workflow": None,
            "arguments": spec.arguments,
            "backend": spec.backend,
            "prepared": False,
            "spec_key": key,
        },
    )
    svc.jobs.put_job(
        job_id,
        program_id=program_id,
        workflow="",
        arguments=spec.arguments,
        backend=spec.backend or "",
    )
    arn = start_execution(svc, job_id)
    svc.store.put_json(
        key + SPEC_JOB_SUFFIX,
        {"job_id": job_id, "execution_arn": arn, "job_prefix": keys.job_prefix(job_id)},
    )
    return {"key": key, "job_id": job_id}


def report_to_spec(svc: Services, job_id: str) -> None:
    """If the job came from an inbox spec, write how it ended next to the spec.

    ``<spec>.result.json`` holds the status, the result's key and the result itself as
    stored (plain JSON for plain values; see :mod:`qlayer.codec` for tagged ones), or the
    error. Nothing is decoded, so this needs no qiskit.
    """
    try:
        spec_key = svc.store.get_json(keys.job_input(job_id)).get("spec_key")
    except ArtifactError:
        return
    if not spec_key:
        return
    record = svc.jobs.get(job_id)
    report: dict[str, Any] = {"job_id": job_id, "status": record.status.value}
    if record.status == JobStatus.DONE:
        report["result_key"] = keys.job_result(job_id)
        report["result"] = svc.store.get_json(keys.job_result(job_id))
    else:
        report["error_type"] = record.error_type
        report["message"] = record.message
    svc.store.put_json(spec_key + SPEC_RESULT_SUFFIX, report)


def _spec_program(svc: Services, spec: JobSpec) -> str:
    from qlayer.errors import ProgramError
    from qlayer.program import bundle, upload

    if spec.program_id is not None:
        if not svc.store.exists(keys.program_prefix(spec.program_id) + "manifest.json"):
            raise ProgramError(
                f"program {spec.program!r} is not uploaded (no manifest.json); upload it with "
                "Client.aws().run(...) or point 'program' at a .py key"
            )
        return spec.program_id
    try:
        source = svc.store.get_bytes(spec.program)
    except ArtifactError as exc:
        raise ProgramError(f"program {spec.program!r} does not exist in the bucket") from exc
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(spec.program).name
        path.write_bytes(source)
        program = bundle(path)
    return upload(svc.store, program)


def _check_backend_name(backend: str) -> None:
    """A cheap check without qiskit; the stage runner resolves the name fully."""
    from qlayer.errors import BackendError
    from qlayer.providers.aer import IDEAL_METHODS

    if backend in IDEAL_METHODS or backend.startswith(
        ("fake_", "ibm_", "braket_", "arn:aws:braket")
    ):
        return
    raise BackendError(
        f"unknown backend {backend!r}; use one of {', '.join(IDEAL_METHODS)} or fake_<device>"
    )


def start_execution(svc: Services, job_id: str) -> str:
    """Start the job's execution, named by the job id (idempotent for the same input)."""
    response = svc.sfn.start_execution(
        stateMachineArn=svc.config.require("state_machine_arn"),
        name=job_id,
        input=json.dumps({"job_id": job_id}),
    )
    arn: str = response["executionArn"]
    svc.jobs.update(job_id, execution_arn=arn)
    return arn


# ------------------------------------------------------------------------------ dispatcher
class Deferred(Exception):
    """The message cannot go now (a backend's limit, a live claim elsewhere): SQS brings it
    back after ``delay_s`` seconds (its visibility is changed), not after the full timeout."""

    def __init__(self, delay_s: float, reason: str) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


def dispatcher(event: Mapping[str, Any], svc: Services) -> dict[str, Any]:
    """SQS batch -> each message submitted once; failed ones are reported for redelivery.

    A message deferred by a backend's in-flight or rate limit (or by a live claim held by
    another dispatcher) is a partial batch failure too, and its visibility is set to the
    deferral's delay so SQS delivers it again soon, not after the queue's visibility timeout.
    """
    batch = parse(SqsEvent, event, what="SQS event")
    failures = []
    for record in batch.Records:
        try:
            body = json.loads(record.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.error("dropping message %s: the body is not JSON", record.messageId)
            continue
        try:
            message = parse(DispatchMessage, body, what="dispatch message").check()
        except EventError as exc:
            log.error("dropping message %s: %s", record.messageId, exc)
            token = body.get("task_token") if isinstance(body, dict) else None
            if token:
                _send(
                    svc,
                    "send_task_failure",
                    taskToken=token,
                    error="InvalidDispatchMessage",
                    cause=str(exc)[:32000],
                )
            continue
        try:
            dispatch_message(message, svc)
        except Deferred as deferred:
            log.info("message %s (%s) deferred: %s", record.messageId, message.job_id, deferred)
            failures.append({"itemIdentifier": record.messageId})
            _defer(svc, record.receiptHandle, deferred.delay_s)
        except Exception:
            log.exception(
                "message %s (%s) failed; it will be redelivered", record.messageId, message.job_id
            )
            failures.append({"itemIdentifier": record.messageId})
    return {"batchItemFailures": failures}


def _defer(svc: Services, receipt_handle: str | None, delay_s: float) -> None:
    """Make a failed message visible again after ``delay_s`` (best effort)."""
    if svc.sqs is None or not svc.config.dispatch_queue_url or not receipt_handle:
        return
    try:
        svc.sqs.change_message_visibility(
            QueueUrl=svc.config.dispatch_queue_url,
            ReceiptHandle=receipt_handle,
            VisibilityTimeout=max(0, min(_MAX_VISIBILITY_S, math.ceil(delay_s))),
        )
    except Exception:  # the message still comes back, after the queue's timeout
        log.exception("cannot change the visibility of a deferred message")


def _send(svc: Services, method: str, **kwargs: Any) -> bool:
    """Call a task-token API; a stale token (the state moved on) is not an error."""
    from botocore.exceptions import ClientError

    try:
        getattr(svc.sfn, method)(**kwargs)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in _STALE_TOKEN:
            log.warning("%s: token no longer valid (%s)", method, exc.response["Error"]["Code"])
            return False
        raise
    return True


def _finish_task(svc: Services, key: str, token: str | None, decision: Decision) -> None:
    assert svc.tasks is not None
    svc.tasks.finish(
        key,
        "ERROR" if decision.kind == "error" else "DONE",
        decision=decision.to_json(),
        message=decision.message,
    )
    if token:
        _send(
            svc,
            "send_task_success",
            taskToken=token,
            output=json.dumps(with_compute(decision).to_json()),
        )


def dispatch_message(message: DispatchMessage, svc: Services) -> None:
    """Submit one execute request to its provider, exactly once per ``job_id/seq``.

    Raises:
        Deferred: Not now (a limit, or another dispatcher's live claim); SQS redelivers.
    """
    from qlayer.providers.base import AsyncProvider

    if svc.tasks is None:
        raise RuntimeError("the dispatcher needs QLAYER_TASKS_TABLE")
    if message.action == "cancel":
        cancel_task(svc, message.job_id, message.seq)
        return
    assert (
        message.seq is not None and message.backend is not None and message.request_key is not None
    )
    key = task_key(message.job_id, message.seq)
    job = svc.jobs.find(message.job_id)
    if job is None or job.status.is_final:
        # A late message for a job that ended (cancelled, timed out): never submit
        # provider work for it — on a real QPU that would be paid for and thrown away.
        log.warning(
            "not dispatching %s: job %s", key, "unknown" if job is None else job.status.value
        )
        if message.task_token:
            _send(
                svc,
                "send_task_failure",
                taskToken=message.task_token,
                error="JobEnded",
                cause=f"job {message.job_id} has already ended",
            )
        return
    owner = uuid.uuid4().hex
    task = svc.tasks.claim(
        job_id=message.job_id,
        seq=message.seq,
        backend=message.backend,
        request_key=message.request_key,
        task_token=message.task_token,
        owner=owner,
    )
    if task.status in ("DONE", "ERROR") and task.decision:
        # Done before (a redelivery, or the state was re-entered): answer again.
        if message.task_token:
            _send(
                svc,
                "send_task_success",
                taskToken=message.task_token,
                output=json.dumps(task.decision),
            )
        return
    if task.status == "CANCELLED" or task.provider_job_id is not None:
        return  # cancelled, or submitted: the poller finishes it
    if task.owner != owner:
        # A duplicate delivery while another dispatcher holds the claim: come back when
        # its lease ends, and find the provider job it recorded (or take the claim over).
        wait_s = max(1.0, task.lease_until - svc.tasks.clock())
        raise Deferred(wait_s, f"submission of {key} is in progress elsewhere ({task.owner})")
    provider = svc.provider(message.backend)
    if isinstance(provider, AsyncProvider):
        _submit_remote(svc, message, task.claims, owner, provider)
        return
    # A provider that runs on our compute (Aer; simulated devices): run it here, now.
    svc.jobs.update(
        message.job_id,
        status=JobStatus.WAITING_FOR_QPU,
        stage="execute",
        seq=message.seq,
        provider_job_id=key,
        event="submitted",
        detail={"backend": message.backend, "provider_job_id": key},
    )
    decision = simulate_step(
        svc,
        message.job_id,
        message.seq,
        message.request_key,
        message.backend,
        status=JobStatus.WAITING_FOR_QPU,
    )
    advance(svc, message.job_id, "execute", message.seq, decision)
    _finish_task(svc, key, task.task_token or message.task_token, decision)


def _submit_remote(
    svc: Services, message: DispatchMessage, claims: int, owner: str, provider: Any
) -> None:
    """Submit a claimed task to a provider with its own queue, within the backend's limits.

    Order: a slot of the backend's in-flight limit (counted in the tasks table, across
    every dispatcher), a token of its submission rate, then — for a claim taken over
    from a dispatcher that died — ``find_job`` before any submit.

    The limits are :data:`qlayer.dispatch.DEFAULT_LIMITS` (each with its ``source``: IBM
    Open Plan, 3 pending jobs and 5 job creations a minute; Braket quotas,
    CreateQuantumTask 20/s with bursts of 40 and 35 concurrent SV1/DM1 or 10 TN1 tasks),
    then a plugin's ``limits``, then ``QLAYER_LIMITS`` (JSON), longest name prefix first.
    A slot left by a claim whose message never came back is given back when the job
    ends: Fail job sends a cancel, and ``cancel_task`` finishes the claim.
    """
    from qlayer.dispatch import FindsJobs
    from qlayer.providers.base import ProviderError
    from qlayer.request import decode_request

    assert svc.tasks is not None
    assert message.seq is not None and message.backend and message.request_key
    job_id, seq, backend = message.job_id, message.seq, message.backend
    key = task_key(job_id, seq)
    limits = svc.limits().limits_for(backend)
    if not svc.tasks.take_slot(key, owner, backend, limits.max_in_flight):
        svc.tasks.release_claim(key, owner, undo=True)
        raise Deferred(
            svc.defer_s,
            f"{backend} has {limits.max_in_flight} provider jobs in flight, its limit "
            f"({limits.source or 'configured'})",
        )
    wait_s = svc.limits().try_acquire(backend, in_flight=0)
    if wait_s > 0:
        svc.tasks.give_back_slot(key)
        svc.tasks.release_claim(key, owner, undo=True)
        raise Deferred(
            wait_s,
            f"{backend} is at its submission rate ({limits.submits_per_s:g}/s, "
            f"{limits.source or 'configured'})",
        )
    try:
        found = (
            svc.retry(lambda: provider.find_job(backend, key))
            if claims > 1 and isinstance(provider, FindsJobs)
            else None
        )
        how = "found"
        if found is None:
            request = decode_request(svc.store.get_json(message.request_key))
            found = svc.retry(lambda: provider.submit(backend, request, idempotency_key=key))
            how = "submitted"
    except ProviderError as exc:
        if exc.retryable:  # throttled past our retries: give the slot back, come back later
            svc.tasks.give_back_slot(key)
            svc.tasks.release_claim(key, owner)
            raise Deferred(svc.defer_s, f"{backend} still refuses: {exc}") from exc
        # Fatal (a bad request, auth): the provider's words end the step.
        text = f"submit to {backend} failed: {exc}"
        _log_line(svc, job_id, seq, "execute", f"{text} (key {key})")
        decision = Decision.failed(seq, "execute", "ProviderError", text)
        svc.store.put_json(
            keys.step_dir(job_id, seq, "execute") + "output.json", decision.to_json()
        )
        advance(svc, job_id, "execute", seq, decision)
        _finish_task(svc, key, _token_of(svc, key, message.task_token), decision)
        return
    except Exception:
        # Not the provider's answer (our own fault): let the next delivery try at once,
        # asking find_job first (the provider may have accepted the job).
        svc.tasks.give_back_slot(key)
        svc.tasks.release_claim(key, owner)
        raise
    recorded = svc.tasks.record_submission(key, str(found))
    provider_job_id = recorded.provider_job_id or str(found)
    if how == "submitted":
        _log_line(
            svc,
            job_id,
            seq,
            "execute",
            f"submitted to {backend}: provider job {provider_job_id} (key {key})",
        )
    else:
        _log_line(
            svc,
            job_id,
            seq,
            "execute",
            f"found provider job {provider_job_id} on {backend} (key {key}): accepted before "
            "its dispatcher stopped; not submitted again",
        )
    if recorded.status == "CANCELLED":  # cancelled while the submission was in flight
        _cancel_provider_job(svc, provider, recorded.idempotency_key, backend, provider_job_id)
        return
    svc.jobs.update(
        job_id,
        status=JobStatus.WAITING_FOR_QPU,
        stage="execute",
        seq=seq,
        provider_job_id=provider_job_id,
        event="submitted",
        detail={"backend": backend, "provider_job_id": provider_job_id, "idempotency_key": key},
    )


def _token_of(svc: Services, key: str, fallback: str | None) -> str | None:
    assert svc.tasks is not None
    task = svc.tasks.get(key)
    return (task.task_token if task else None) or fallback


def _cancel_provider_job(
    svc: Services, provider: Any, key: str, backend: str, provider_job_id: str
) -> None:
    svc.retry(lambda: provider.cancel(provider_job_id))
    job_id, _, seq = key.rpartition("/")
    _log_line(
        svc,
        job_id,
        int(seq),
        "execute",
        f"cancelled provider job {provider_job_id} on {backend} (key {key})",
    )


def cancel_task(svc: Services, job_id: str, seq: int | None) -> None:
    """Cancel the provider job of ``job_id`` (its execute step ``seq``, or its current step).

    A task still CLAIMED may have reached the provider before its dispatcher stopped:
    the provider is asked (``find_job``) so that job is cancelled too.
    """
    from qlayer.dispatch import FindsJobs
    from qlayer.providers.base import AsyncProvider

    assert svc.tasks is not None
    if seq is None:
        record = svc.jobs.find(job_id)
        seq = record.seq if record else 0
    key = task_key(job_id, seq)
    task = svc.tasks.get(key)
    if task is None or task.status in ("DONE", "ERROR"):
        return
    if task.status != "CANCELLED":
        svc.tasks.finish(key, "CANCELLED", message="cancelled with the job")
        task = svc.tasks.get(key)
        if task is None or task.status != "CANCELLED":
            return  # it ended meanwhile
    # Cancelled (now, or by a delivery of this message whose provider call failed): make
    # sure the provider got it. Cancelling an ended provider job is not an error.
    provider = svc.provider(task.backend)
    if not isinstance(provider, AsyncProvider):
        return
    provider_job_id = task.provider_job_id
    if provider_job_id is None and isinstance(provider, FindsJobs):
        backend = task.backend
        provider_job_id = svc.retry(lambda: provider.find_job(backend, key))
        if provider_job_id is not None:
            svc.tasks.record_submission(key, provider_job_id)
    if provider_job_id is not None:
        _cancel_provider_job(svc, provider, key, task.backend, provider_job_id)
    # else: the dispatcher holding the claim records its id on a CANCELLED task and
    # cancels the job itself (see _submit_remote).


# ------------------------------------------------------------------------------ poller
def poller(event: Mapping[str, Any], svc: Services) -> dict[str, Any]:
    """Check every submitted provider job: finish ended ones, keep the others' tokens alive.

    Harmless to repeat and to race: a final state is delivered once (``record_outcome``
    is a conditional write, first poller wins), a result already stored is not fetched
    again, and a task whose outcome was recorded by a poller that died before waking the
    state machine is delivered by the next poll. States after the first final one (a
    stale RUNNING after DONE) are never seen: the task is no longer open.
    """
    from qlayer.providers.base import AsyncProvider, ProviderError

    assert svc.tasks is not None
    counts = {"done": 0, "failed": 0, "waiting": 0, "errors": 0}
    for task in svc.tasks.open_tasks():
        try:
            if task.decision is not None:  # recorded before a crash: deliver it now
                _deliver(svc, task, Decision.from_json(task.decision))
                counts["failed" if task.decision.get("kind") == "error" else "done"] += 1
                continue
            provider = svc.provider(task.backend)
            if not isinstance(provider, AsyncProvider) or task.provider_job_id is None:
                continue
            try:
                decision = _poll_task(svc, task, provider)
            except ProviderError as exc:
                if exc.retryable:
                    raise
                decision = _failed(
                    svc,
                    task,
                    f"provider job {task.provider_job_id} on {task.backend} cannot be "
                    f"followed: {exc}",
                )
            if decision is None:
                if task.task_token:
                    _send(svc, "send_task_heartbeat", taskToken=task.task_token)
                counts["waiting"] += 1
                continue
            if not svc.tasks.record_outcome(task.idempotency_key, decision.to_json()):
                continue  # another poller (or a cancel) got there first
            _deliver(svc, task, decision)
            counts["failed" if decision.kind == "error" else "done"] += 1
        except Exception:
            log.exception("polling %s failed; it is polled again next time", task.idempotency_key)
            counts["errors"] += 1
    return counts


def _poll_task(svc: Services, task: Any, provider: Any) -> Decision | None:
    """The task's decision once its provider job ended; None while it is queued or running."""
    from qlayer.steps import complete_execute

    provider_job_id = task.provider_job_id
    status = svc.retry(lambda: provider.status(provider_job_id))
    if status.state == "DONE":
        out_key = keys.step_dir(task.job_id, task.seq, "execute") + "output.json"
        if svc.store.exists(out_key):  # collected before a crash: not fetched again
            try:
                return Decision.from_json(svc.store.get_json(out_key))
            except (ArtifactError, ValueError, TypeError, KeyError):
                pass
        result = svc.retry(lambda: provider.result(provider_job_id))
        request_raw = svc.store.get_json(task.request_key)
        decision = complete_execute(svc.store, task.job_id, task.seq, request_raw, result)
        _log_line(
            svc,
            task.job_id,
            task.seq,
            "execute",
            f"provider job {provider_job_id} on {task.backend} done (key {task.idempotency_key})",
        )
        return decision
    if status.state in ("ERROR", "CANCELLED"):
        return _failed(
            svc,
            task,
            f"provider job {provider_job_id} on {task.backend} ended {status.state}"
            + (f": {status.message}" if status.message else ""),
        )
    return None


def _failed(svc: Services, task: Any, text: str) -> Decision:
    _log_line(svc, task.job_id, task.seq, "execute", f"{text} (key {task.idempotency_key})")
    decision = Decision.failed(task.seq, "execute", "ProviderJobFailed", text)
    svc.store.put_json(
        keys.step_dir(task.job_id, task.seq, "execute") + "output.json", decision.to_json()
    )
    return decision


def _deliver(svc: Services, task: Any, decision: Decision) -> None:
    """Advance the job, wake the state machine, close the task (in that order: a crash
    before the close repeats the first two, which are harmless to repeat)."""
    assert svc.tasks is not None
    advance(svc, task.job_id, "execute", task.seq, decision)
    if task.task_token:
        _send(
            svc,
            "send_task_success",
            taskToken=task.task_token,
            output=json.dumps(with_compute(decision).to_json()),
        )
    svc.tasks.finish(
        task.idempotency_key,
        "ERROR" if decision.kind == "error" else "DONE",
        decision=decision.to_json(),
        message=decision.message,
    )
