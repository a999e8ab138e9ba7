"""Patches that let moto 5 run the job state machine in-process (the cloud-in-a-box tests).

* Lambda: moto without Docker does not run function code. ``patch_lambda_invoke`` makes
  ``LambdaFunction.invoke`` call our real handler (``functions/<name>/app.py``) in this
  process, chosen by the function's name. With ``use_docker: False`` the Invoke API goes
  to ``LambdaSimpleBackend.invoke``, which only echoes the payload and never reaches
  ``LambdaFunction.invoke``; the patch routes it back through ``LambdaBackend.invoke``
  (S3 notifications call ``LambdaFunction.invoke`` directly).
* Batch: moto without Docker (``batch_simple``) marks every job SUCCEEDED without running
  it. ``patch_batch_run`` makes ``BatchSimpleBackend._mark_job_as_finished`` call
  ``run(job)`` (the harness runs the job definition's command in this process) and marks
  the job SUCCEEDED or FAILED (with a status reason and exit code) by its answer.
* Step Functions: moto's interpreter leaves ``_normalise_parameters`` a stub, so a task
  such as ``batch:submitJob.sync`` sends ``JobName`` where botocore wants ``jobName`` and
  fails with States.Runtime. ``patch_normalise_parameters`` renames keys to the botocore
  operation's member names, recursively, case-insensitively.
* Step Functions: ``_normalise_response`` is a stub too, so a service task's result keeps
  botocore's camelCase (``jobId``) where Step Functions gives PascalCase (``JobId``):
  ``submitJob.sync`` then fails with States.Runtime ``'JobId'`` (its own sync resolver
  reads ``JobId``), and a ``ResultSelector`` on ``$.JobId``/``$.Status`` finds nothing.
  ``patch_normalise_response`` applies moto's own (unused) ``_from_boto_response`` with
  the operation's output shape, as the LocalStack original does.

Every patched attribute is listed in ``PATCHED`` and checked by
``test_moto_internals.py``: if moto moves them, that test fails loudly first.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aws_fixtures import Context

#: (module, class, attribute) of every moto internal these patches replace.
PATCHED: tuple[tuple[str, str, str], ...] = (
    ("moto.awslambda.models", "LambdaFunction", "invoke"),
    (
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service",
        "StateTaskService",
        "_normalise_parameters",
    ),
    (
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service",
        "StateTaskService",
        "_normalise_response",
    ),
    (
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service",
        "StateTaskService",
        "_from_boto_response",
    ),
    ("moto.batch_simple.models", "BatchSimpleBackend", "_mark_job_as_finished"),
    ("moto.awslambda_simple.models", "LambdaSimpleBackend", "invoke"),
    ("moto.awslambda.models", "LambdaBackend", "invoke"),
    ("moto.batch.models", "Job", "_add_parameters_to_command"),
    ("moto.batch.models", "Job", "_mark_stopped"),
)


def _attr(module: str, cls: str) -> Any:
    return getattr(importlib.import_module(module), cls)


@contextmanager
def patch_lambda_invoke(
    handler_for: Callable[[str], Callable[[Any, Any], Any] | None],
) -> Iterator[None]:
    """Run ``handler_for(function_name)(event, context)`` for each Lambda invoke."""
    cls = _attr(PATCHED[0][0], PATCHED[0][1])
    original = cls.invoke

    def invoke(self: Any, body: Any, request_headers: Any, response_headers: Any) -> bytes:
        handler = handler_for(self.function_name)
        if handler is None:
            return original(self, body, request_headers, response_headers)  # type: ignore[no-any-return]
        event = json.loads(body) if body else {}
        try:
            result = handler(event, Context())
        except Exception as exc:  # what Lambda reports for an unhandled error
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorMessage": str(exc), "errorType": type(exc).__name__}).encode()
        return json.dumps(result).encode()

    simple = _attr("moto.awslambda_simple.models", "LambdaSimpleBackend")
    base = _attr("moto.awslambda.models", "LambdaBackend")
    original_simple = simple.invoke

    def simple_invoke(self: Any, function_name: str, qualifier: Any, *args: Any) -> Any:
        if handler_for(self.get_function(function_name, qualifier).function_name) is None:
            return original_simple(self, function_name, qualifier, *args)
        return base.invoke(self, function_name, qualifier, *args)

    cls.invoke = invoke
    simple.invoke = simple_invoke
    try:
        yield
    finally:
        cls.invoke = original
        simple.invoke = original_simple


def _rename(value: Any, shape: Any) -> Any:
    """Rename dict keys to the botocore shape's member names (case-insensitive), recursively."""
    if shape is None:
        return value
    if shape.type_name == "structure" and isinstance(value, Mapping):
        members = {name.lower(): (name, member) for name, member in shape.members.items()}
        out = {}
        for key, item in value.items():
            name, member = members.get(key.lower(), (key, None))
            out[name] = _rename(item, member)
        return out
    if shape.type_name == "list" and isinstance(value, list):
        return [_rename(item, shape.member) for item in value]
    if shape.type_name == "map" and isinstance(value, Mapping):
        return {key: _rename(item, shape.value) for key, item in value.items()}
    return value


@contextmanager
def patch_normalise_parameters() -> Iterator[None]:
    """Give moto's service tasks the parameter names botocore expects."""
    import botocore.session

    cls = _attr(PATCHED[1][0], PATCHED[1][1])
    original = cls._normalise_parameters
    loader = botocore.session.get_session()

    def normalise(
        self: Any,
        parameters: dict,
        boto_service_name: str | None = None,
        service_action_name: str | None = None,
    ) -> None:
        original(self, parameters, boto_service_name, service_action_name)
        service = self._get_boto_service_name(boto_service_name)
        action = self._get_boto_service_action(service_action_name)
        try:
            model = loader.get_service_model(service)
            operation = next(
                model.operation_model(name)
                for name in model.operation_names
                if name.lower() == action.replace("_", "").lower()
            )
        except Exception:
            return
        renamed = _rename(dict(parameters), operation.input_shape)
        parameters.clear()
        parameters.update(renamed)

    cls._normalise_parameters = normalise
    try:
        yield
    finally:
        cls._normalise_parameters = original


@contextmanager
def patch_batch_run(run: Callable[[Any], tuple[bool, str | None]]) -> Iterator[None]:
    """Run each submitted Batch job with ``run(job) -> (succeeded, reason)``, synchronously.

    ``job`` is moto's ``moto.batch.models.Job``: ``job.job_name``,
    ``job._add_parameters_to_command(job.job_definition.container_properties["command"])``.
    Array jobs are not supported (qlayer submits none).
    """
    import datetime

    cls = _attr("moto.batch_simple.models", "BatchSimpleBackend")
    original = cls._mark_job_as_finished

    def mark(self: Any, include_start_attempt: bool, job: Any) -> None:
        self.backend._jobs[job.job_id] = job
        job.job_started_at = datetime.datetime.now()
        job.log_stream_name = job._stream_name
        if include_start_attempt:
            job._start_attempt()
        ok, reason = run(job)
        if not ok:
            job.exit_code = 1
            job.job_stopped_reason = reason
        else:
            job.exit_code = 0
        job._mark_stopped(success=ok)

    cls._mark_job_as_finished = mark
    try:
        yield
    finally:
        cls._mark_job_as_finished = original


def _operation(service: str, action: str) -> Any:
    """botocore's operation model for ``service`` and a snake_case or camelCase action."""
    import botocore.session

    model = botocore.session.get_session().get_service_model(service)
    wanted = action.replace("_", "").lower()
    return next(model.operation_model(n) for n in model.operation_names if n.lower() == wanted)


@contextmanager
def patch_normalise_response() -> Iterator[None]:
    """Give service task results Step Functions' PascalCase member names."""
    cls = _attr(PATCHED[2][0], PATCHED[2][1])
    original = cls._normalise_response

    def normalise(
        self: Any,
        response: Any,
        boto_service_name: str | None = None,
        service_action_name: str | None = None,
    ) -> None:
        original(self, response, boto_service_name, service_action_name)
        if not isinstance(response, dict):
            return
        try:
            operation = _operation(
                self._get_boto_service_name(boto_service_name),
                self._get_boto_service_action(service_action_name),
            )
        except Exception:
            return
        if operation.output_shape is not None:
            self._from_boto_response(response, operation.output_shape)

    cls._normalise_response = normalise
    try:
        yield
    finally:
        cls._normalise_response = original
