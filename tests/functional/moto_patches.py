"""Patches that let moto 5 run the job state machine in-process (the cloud-in-a-box tests).

* Lambda: moto without Docker does not run function code. ``patch_lambda_invoke`` makes
  ``LambdaFunction.invoke`` call our real handler (``functions/<name>/app.py``) in this
  process, chosen by the function's name.
* Step Functions: moto's interpreter leaves ``_normalise_parameters`` a stub, so a task
  such as ``batch:submitJob.sync`` sends ``JobName`` where botocore wants ``jobName`` and
  fails with States.Runtime. ``patch_normalise_parameters`` renames keys to the botocore
  operation's member names, recursively, case-insensitively.

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

    cls.invoke = invoke
    try:
        yield
    finally:
        cls.invoke = original


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
