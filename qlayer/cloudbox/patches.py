"""The moto internals the cloud in a box replaces, inside the server's process.

moto's server plays AWS; these patches fill the places where moto, without Docker,
does not run anything, or runs it unlike AWS. Each one forwards to the box's own
emulation and changes nothing else:

* Lambda: ``LambdaFunction.invoke`` of a box function forwards the event to the
  function's runtime processes (:class:`~qlayer.cloudbox.runtimes.LambdaService`) and
  returns their answer; an unhandled exception comes back as Lambda reports it
  (``X-Amz-Function-Error: Unhandled``, ``{"errorMessage", "errorType", ...}``). An
  ``Event`` invocation is queued and answered at once (202). Without Docker the Invoke
  API reaches ``LambdaSimpleBackend.invoke``, which only echoes the payload; it is
  routed to ``LambdaBackend.invoke`` (which calls ``LambdaFunction.invoke``) for box
  functions.
* S3 notifications: moto calls the function synchronously inside PutObject; the patch
  of ``moto.s3.notifications._invoke_awslambda`` makes it an ``Event`` invocation, as
  S3 does.
* SQS event source mappings: moto delivers each message synchronously when it is sent
  (one record per invoke, no partial batch failures). The patch of
  ``LambdaBackend.create_event_source_mapping`` keeps the mapping (the API lists it
  with its BatchSize, window and FunctionResponseTypes) but detaches it from the queue
  (``Queue.lambda_event_source_mappings``); the box's poller
  (:mod:`qlayer.cloudbox.pumps`) runs it as Lambda does.
* Batch: without Docker, ``BatchSimpleBackend._mark_job_as_finished`` marks a job
  SUCCEEDED inside SubmitJob. The patch registers the job RUNNABLE and hands it to the
  box's Batch runner (:mod:`qlayer.cloudbox.batch`), which runs its command and sets
  RUNNING, then SUCCEEDED or FAILED (``exitCode``, ``statusReason``) through
  :class:`MotoBatchJob`.
* DynamoDB: each request (a conditional write, a transaction) is atomic in DynamoDB;
  moto's server answers requests on many threads and applies them without a lock (a
  ``TransactWriteItems`` copies the tables while another thread writes them: "dictionary
  changed size during iteration", or a condition checked against a stale item). The patch
  of ``DynamoHandler.call_action`` applies one request at a time, as DynamoDB promises.
* Step Functions: the interpreter's ``_normalise_parameters`` and
  ``_normalise_response`` are stubs, so ``batch:submitJob.sync`` sends ``JobName``
  where botocore wants ``jobName``, and results keep botocore's camelCase where Step
  Functions answers PascalCase (``JobId``). The patches rename keys by the botocore
  operation's shapes (``_from_boto_response`` is moto's own, unused, helper).

Every patched or relied-on attribute is in :data:`PATCHED`; ``tests/functional/
test_moto_internals.py`` checks them, so a moto upgrade that moves one fails loudly.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Mapping
from typing import Any, Protocol

_STS = "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service"
#: (module, class or "" for a module function, attribute) of every moto internal the
#: patches replace or call.
PATCHED: tuple[tuple[str, str, str], ...] = (
    ("moto.awslambda.models", "LambdaFunction", "invoke"),
    ("moto.awslambda.models", "LambdaBackend", "invoke"),
    ("moto.awslambda.models", "LambdaBackend", "create_event_source_mapping"),
    ("moto.awslambda.models", "LambdaBackend", "get_function"),
    ("moto.awslambda_simple.models", "LambdaSimpleBackend", "invoke"),
    ("moto.awslambda.utils", "", "get_backend"),
    ("moto.s3.notifications", "", "_invoke_awslambda"),
    ("moto.sqs.models", "", "sqs_backends"),
    ("moto.dynamodb.responses", "DynamoHandler", "call_action"),
    ("moto.batch_simple.models", "BatchSimpleBackend", "_mark_job_as_finished"),
    ("moto.batch.models", "Job", "_start_attempt"),
    ("moto.batch.models", "Job", "_mark_stopped"),
    (_STS, "StateTaskService", "_normalise_parameters"),
    (_STS, "StateTaskService", "_normalise_response"),
    (_STS, "StateTaskService", "_from_boto_response"),
)


class Lambdas(Protocol):
    """What the Lambda patch forwards to (:class:`~qlayer.cloudbox.runtimes.LambdaService`)."""

    def owns(self, function_name: str) -> bool: ...

    def invoke(self, function_name: str, payload: bytes) -> Any: ...

    def invoke_async(self, function_name: str, payload: bytes) -> None: ...


class BatchJobs(Protocol):
    """What the Batch patch hands jobs to (:class:`~qlayer.cloudbox.batch.BatchRunner`)."""

    def submit(self, job: MotoBatchJob) -> None: ...


def _owner(module: str, cls: str) -> Any:
    found = importlib.import_module(module)
    return getattr(found, cls) if cls else found


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name) if hasattr(headers, "get") else None
    if value is None:
        for key, item in dict(headers).items():
            if key.lower() == name.lower():
                return str(item)
    return None if value is None else str(value)


class MotoBatchJob:
    """A submitted Batch job, read from and written back to moto's ``Job``.

    Attributes:
        job_id, name, queue: As SubmitJob made them.
        image: The job definition's image.
        command: The command with ``Ref::`` parameters substituted (overrides first).
        environment: The job definition's environment, the overrides' on top, and
            ``AWS_BATCH_JOB_ID`` (as Batch sets it).
        timeout_s: attemptDurationSeconds (SubmitJob's, else the job definition's).
        attempts: The retry strategy's attempts (1 when none).
    """

    def __init__(self, job: Any) -> None:
        self._job = job
        definition = job.job_definition
        container = definition.container_properties or {}
        overrides = job.container_overrides or {}
        command = overrides.get("command") or container.get("command") or []
        self.job_id: str = job.job_id
        self.name: str = job.job_name
        self.queue: str = job.job_queue.name
        self.image: str = container.get("image", "")
        self.command = substitute(list(command), {**definition.parameters, **job.parameters})
        env = {e["name"]: str(e["value"]) for e in container.get("environment") or []}
        env.update({e["name"]: str(e["value"]) for e in overrides.get("environment") or []})
        env["AWS_BATCH_JOB_ID"] = job.job_id
        self.environment = env
        timeout = job.timeout or definition.timeout or {}
        self.timeout_s: float | None = timeout.get("attemptDurationSeconds")
        strategy = definition.retry_strategy or {}
        self.attempts = int(strategy.get("attempts", 1) or 1)

    def stop_requested(self) -> str | None:
        """TerminateJob's reason, once someone called it."""
        return self._job.job_stopped_reason if self._job.stop else None

    def running(self, attempt: int) -> None:
        import datetime

        self._job.job_started_at = datetime.datetime.now()
        self._job.status = "RUNNING"
        self._job._start_attempt()
        self.environment["AWS_BATCH_JOB_ATTEMPT"] = str(attempt)

    def finished(self, exit_code: int | None, reason: str | None) -> None:
        self._job.exit_code = exit_code
        if reason:
            self._job.job_stopped_reason = reason
        self._job._mark_stopped(success=exit_code == 0)


def substitute(command: list[str], parameters: Mapping[str, str]) -> list[str]:
    """Batch's ``Ref::name`` substitution in a command (whole words, as Batch does)."""
    out = []
    for part in command:
        for name, value in parameters.items():
            part = part.replace(f"Ref::{name}", str(value))
        out.append(part)
    return out


class Patches:
    """Installs the patches for one box; :meth:`remove` puts moto back as it was."""

    def __init__(self, lambdas: Lambdas, batch: BatchJobs) -> None:
        self.lambdas = lambdas
        self.batch = batch
        self._saved: list[tuple[Any, str, Any]] = []

    def _set(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def install(self) -> Patches:
        self._lambda()
        self._s3_notifications()
        self._event_source_mappings()
        self._dynamodb()
        self._batch()
        self._step_functions()
        return self

    def remove(self) -> None:
        while self._saved:
            owner, name, value = self._saved.pop()
            setattr(owner, name, value)

    # -- DynamoDB --------------------------------------------------------------------
    def _dynamodb(self) -> None:
        handler = _owner("moto.dynamodb.responses", "DynamoHandler")
        original = handler.call_action
        lock = threading.Lock()

        def call_action(self: Any) -> Any:
            with lock:
                return original(self)

        self._set(handler, "call_action", call_action)

    # -- Lambda ----------------------------------------------------------------------
    def _lambda(self) -> None:
        function_cls = _owner("moto.awslambda.models", "LambdaFunction")
        base = _owner("moto.awslambda.models", "LambdaBackend")
        simple = _owner("moto.awslambda_simple.models", "LambdaSimpleBackend")
        original = function_cls.invoke
        original_simple = simple.invoke
        lambdas = self.lambdas

        def invoke(fn: Any, body: Any, request_headers: Any, response_headers: Any) -> Any:
            if not lambdas.owns(fn.function_name):
                return original(fn, body, request_headers, response_headers)
            payload = body.encode("utf-8") if isinstance(body, str) else (body or b"")
            kind = _header(request_headers, "x-amz-invocation-type") or "RequestResponse"
            if kind == "DryRun":
                return b""
            if kind == "Event":
                lambdas.invoke_async(fn.function_name, payload)
                return b""
            answer = lambdas.invoke(fn.function_name, payload)
            if answer.function_error:
                response_headers["x-amz-function-error"] = answer.function_error
            response_headers["x-amz-executed-version"] = "$LATEST"
            return answer.payload

        def simple_invoke(backend: Any, function_name: str, qualifier: Any, *args: Any) -> Any:
            fn = backend.get_function(function_name, qualifier)
            if not lambdas.owns(fn.function_name):
                return original_simple(backend, function_name, qualifier, *args)
            return base.invoke(backend, function_name, qualifier, *args)

        self._set(function_cls, "invoke", invoke)
        self._set(simple, "invoke", simple_invoke)

    def _s3_notifications(self) -> None:
        notifications = _owner("moto.s3.notifications", "")
        get_backend = _owner("moto.awslambda.utils", "").get_backend
        original = notifications._invoke_awslambda

        def invoke_async(account_id: str, event_body: Any, fn_arn: str, region_name: str) -> None:
            try:
                fn = get_backend(account_id, region_name).get_function(fn_arn)
            except Exception:  # no such function: S3 drops the event (async, as on AWS)
                return
            if not self.lambdas.owns(fn.function_name):
                original(account_id, event_body, fn_arn, region_name)
                return
            fn.invoke(json.dumps(event_body), {"x-amz-invocation-type": "Event"}, {})

        self._set(notifications, "_invoke_awslambda", invoke_async)

    def _event_source_mappings(self) -> None:
        base = _owner("moto.awslambda.models", "LambdaBackend")
        sqs_backends = _owner("moto.sqs.models", "").sqs_backends
        original = base.create_event_source_mapping

        def create(backend: Any, spec: dict[str, Any]) -> Any:
            esm = original(backend, spec)
            if ":sqs:" in esm.event_source_arn:
                for queue in sqs_backends[backend.account_id][backend.region_name].queues.values():
                    if queue.queue_arn == esm.event_source_arn:
                        queue.lambda_event_source_mappings.pop(esm.function_arn, None)
            return esm

        self._set(base, "create_event_source_mapping", create)

    # -- Batch -----------------------------------------------------------------------
    def _batch(self) -> None:
        simple = _owner("moto.batch_simple.models", "BatchSimpleBackend")
        runner = self.batch

        def mark(backend: Any, include_start_attempt: bool, job: Any) -> None:
            backend.backend._jobs[job.job_id] = job
            job.log_stream_name = job._stream_name
            job.status = "RUNNABLE"
            runner.submit(MotoBatchJob(job))

        self._set(simple, "_mark_job_as_finished", mark)

    # -- Step Functions --------------------------------------------------------------
    def _step_functions(self) -> None:
        import botocore.session

        cls = _owner(_STS, "StateTaskService")
        original_parameters = cls._normalise_parameters
        original_response = cls._normalise_response
        models = botocore.session.get_session()

        def normalise_parameters(
            task: Any,
            parameters: dict[str, Any],
            boto_service_name: str | None = None,
            service_action_name: str | None = None,
        ) -> None:
            original_parameters(task, parameters, boto_service_name, service_action_name)
            operation = _operation(
                models,
                task._get_boto_service_name(boto_service_name),
                task._get_boto_service_action(service_action_name),
            )
            if operation is None:
                return
            renamed = rename_to_shape(dict(parameters), operation.input_shape)
            parameters.clear()
            parameters.update(renamed)

        def normalise_response(
            task: Any,
            response: Any,
            boto_service_name: str | None = None,
            service_action_name: str | None = None,
        ) -> None:
            original_response(task, response, boto_service_name, service_action_name)
            if not isinstance(response, dict):
                return
            operation = _operation(
                models,
                task._get_boto_service_name(boto_service_name),
                task._get_boto_service_action(service_action_name),
            )
            if operation is not None and operation.output_shape is not None:
                task._from_boto_response(response, operation.output_shape)

        self._set(cls, "_normalise_parameters", normalise_parameters)
        self._set(cls, "_normalise_response", normalise_response)


def _operation(models: Any, service: str, action: str) -> Any:
    """botocore's operation model for ``service`` and a snake_case or camelCase action."""
    try:
        model = models.get_service_model(service)
    except Exception:
        return None
    wanted = action.replace("_", "").lower()
    return next(
        (model.operation_model(n) for n in model.operation_names if n.lower() == wanted), None
    )


def rename_to_shape(value: Any, shape: Any) -> Any:
    """Rename dict keys to the botocore shape's member names (case-insensitive), recursively."""
    if shape is None:
        return value
    if shape.type_name == "structure" and isinstance(value, Mapping):
        members = {name.lower(): (name, member) for name, member in shape.members.items()}
        out = {}
        for key, item in value.items():
            name, member = members.get(key.lower(), (key, None))
            out[name] = rename_to_shape(item, member)
        return out
    if shape.type_name == "list" and isinstance(value, list):
        return [rename_to_shape(item, shape.member) for item in value]
    if shape.type_name == "map" and isinstance(value, Mapping):
        return {key: rename_to_shape(item, shape.value) for key, item in value.items()}
    return value
