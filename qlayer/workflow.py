"""The programming model: a Workflow is a named, ordered set of stages."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from qlayer.errors import ArgumentError, WorkflowError
from qlayer.keys import check_name

ComputeKind = Literal["lambda", "batch", "batch-gpu"]
COMPUTE_KINDS: tuple[str, ...] = ("lambda", "batch", "batch-gpu")

#: Lambda's own ceilings; a stage asking for more must use batch.
LAMBDA_MAX_MEMORY_MB = 10240
LAMBDA_MAX_TIMEOUT_S = 900
#: AWS Batch refuses a job timeout (attemptDurationSeconds) under a minute.
BATCH_MIN_TIMEOUT_S = 60


@dataclass(frozen=True)
class Compute:
    """Where a stage runs and what it may use.

    Locally every kind runs as a worker process; ``memory_mb`` is enforced as an
    address-space limit and ``timeout_s`` by killing the worker.
    """

    kind: ComputeKind = "lambda"
    vcpus: float = 1
    memory_mb: int = 2048
    gpus: int = 0
    timeout_s: int = 900

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vcpus": self.vcpus,
            "memory_mb": self.memory_mb,
            "gpus": self.gpus,
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True)
class Stage:
    """A stage: a function and where it runs."""

    name: str
    fn: Callable[..., Any]
    compute: Compute
    max_runs: int
    takes_ctx: bool


@dataclass(frozen=True)
class Param:
    """A declared job argument.

    Args:
        type: One of ``int``, ``float``, ``str``, ``bool``, ``list``, ``dict``.
        default: The value used when the job does not give one; ``...`` makes it required.
        help: One line shown by ``qlayer describe``.
    """

    type: type
    default: Any = ...
    help: str = ""


_ALLOWED_PARAM_TYPES = (int, float, str, bool, list, dict)


@dataclass
class Workflow:
    """A quantum–classical program: stages run in order, with loops and fan-outs.

    Args:
        name: The program's name, shown in ``qlayer jobs``.
        params: Declared arguments: a mapping of name to a default value (its type
            is the argument's type) or to a :class:`Param`. Undeclared arguments
            are rejected at submit time.
        backend: The default backend for ``Execute`` requests (e.g. ``"aer"``,
            ``"fake_brisbane"``); ``qlayer run --backend`` overrides it.
        qpu_mode: How the job's requests reach a QPU service: ``"job"``, ``"batch"`` or
            ``"session"`` (an ``Execute``'s own ``mode`` wins). None: decided per request
            (a loop holds a session; a fan-out's items share a batch; else a job).

    Example:
        >>> wf = Workflow("demo", params={"n": 3})
        >>> @wf.stage()
        ... def build(args):
        ...     return Done(args["n"] * 2)
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    backend: str = "aer"
    qpu_mode: str | None = None
    stages: dict[str, Stage] = field(default_factory=dict, init=False)
    source_path: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        try:
            check_name(self.name, "workflow name")
        except ValueError as exc:
            raise WorkflowError(str(exc)) from None
        from qlayer.outcomes import check_qpu_mode

        try:
            check_qpu_mode(self.qpu_mode, f"workflow {self.name!r}")
        except ValueError as exc:
            raise WorkflowError(str(exc)) from None
        self._params: dict[str, Param] = {}
        for key, spec in dict(self.params).items():
            param = spec if isinstance(spec, Param) else Param(type(spec), spec)
            if param.type not in _ALLOWED_PARAM_TYPES:
                raise WorkflowError(
                    f"parameter {key!r} has type {param.type.__name__}; "
                    "use int, float, str, bool, list or dict"
                )
            self._params[key] = param
        frame = inspect.currentframe()
        caller = frame.f_back.f_back if frame and frame.f_back else None  # dataclass __init__
        if caller is not None:
            self.source_path = caller.f_globals.get("__file__")

    # -- declaration -------------------------------------------------------------------
    def stage(
        self,
        name: str | None = None,
        *,
        compute: ComputeKind = "lambda",
        vcpus: float = 1,
        memory_mb: int = 2048,
        gpus: int = 0,
        timeout_s: int | None = None,
        max_runs: int = 1000,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare a stage.

        Args:
            name: Stage name (default: the function's name).
            compute: ``"lambda"``, ``"batch"`` or ``"batch-gpu"``.
            vcpus: vCPUs for batch stages.
            memory_mb: Memory limit in MiB.
            gpus: GPUs, for ``batch-gpu``.
            timeout_s: Wall-clock limit (default 900 on lambda, 3600 on batch).
            max_runs: How often the stage may run in one job; a loop past it ends
                the job in ERROR instead of running forever.

        Returns:
            The decorator; the function itself is returned unchanged.
        """

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            try:
                stage_name = check_name(name or fn.__name__, "stage name")
            except ValueError as exc:
                raise WorkflowError(str(exc)) from None
            if stage_name in self.stages:
                raise WorkflowError(f"stage {stage_name!r} is declared twice in {self.name!r}")
            if stage_name == "execute":
                raise WorkflowError("'execute' is reserved for the platform's execute step")
            if compute not in COMPUTE_KINDS:
                raise WorkflowError(
                    f"stage {stage_name!r}: compute={compute!r}; use one of {COMPUTE_KINDS}"
                )
            gpu_count = 1 if compute == "batch-gpu" and gpus < 1 else gpus
            if compute != "batch-gpu" and gpus:
                raise WorkflowError(f"stage {stage_name!r}: gpus need compute='batch-gpu'")
            limit = timeout_s if timeout_s is not None else (900 if compute == "lambda" else 3600)
            if compute == "lambda" and (
                memory_mb > LAMBDA_MAX_MEMORY_MB or limit > LAMBDA_MAX_TIMEOUT_S
            ):
                raise WorkflowError(
                    f"stage {stage_name!r}: lambda allows at most {LAMBDA_MAX_MEMORY_MB} MiB "
                    f"and {LAMBDA_MAX_TIMEOUT_S} s; use compute='batch' for more"
                )
            if memory_mb < 128 or limit < 1 or max_runs < 1:
                raise WorkflowError(
                    f"stage {stage_name!r}: memory_mb ≥ 128, timeout_s ≥ 1, max_runs ≥ 1"
                )
            if compute != "lambda" and limit < BATCH_MIN_TIMEOUT_S:
                raise WorkflowError(
                    f"stage {stage_name!r}: compute={compute!r} stages need timeout_s ≥ "
                    f"{BATCH_MIN_TIMEOUT_S} (AWS Batch's shortest job timeout); got {limit}"
                )
            n_params = len(inspect.signature(fn).parameters)
            if n_params not in (1, 2):
                raise WorkflowError(
                    f"stage {stage_name!r} must take (data) or (data, ctx); "
                    f"it takes {n_params} parameters"
                )
            self.stages[stage_name] = Stage(
                name=stage_name,
                fn=fn,
                compute=Compute(compute, vcpus, memory_mb, gpu_count, limit),
                max_runs=max_runs,
                takes_ctx=n_params == 2,
            )
            return fn

        return register

    # -- queries -----------------------------------------------------------------------
    @property
    def first_stage(self) -> str:
        if not self.stages:
            raise WorkflowError(f"workflow {self.name!r} has no stages")
        return next(iter(self.stages))

    def get_stage(self, name: str) -> Stage:
        try:
            return self.stages[name]
        except KeyError:
            raise WorkflowError(
                f"workflow {self.name!r} has no stage {name!r}; "
                f"its stages are: {', '.join(self.stages) or '(none)'}"
            ) from None

    def stage_after(self, name: str) -> str | None:
        names = list(self.stages)
        index = names.index(name)
        return names[index + 1] if index + 1 < len(names) else None

    def describe(self) -> dict[str, Any]:
        """A JSON description of the stages and parameters (for ``qlayer describe``)."""
        return {
            "name": self.name,
            "backend": self.backend,
            "params": {
                k: {
                    "type": p.type.__name__,
                    "default": None if p.default is ... else p.default,
                    "required": p.default is ...,
                    "help": p.help,
                }
                for k, p in self._params.items()
            },
            "stages": [
                {"name": s.name, **s.compute.to_json(), "max_runs": s.max_runs}
                for s in self.stages.values()
            ],
        }

    def bind_arguments(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``given`` against the declared parameters and fill in defaults.

        Raises:
            ArgumentError: An unknown name, a missing required one, or a wrong type.
        """
        if not self._params:
            return dict(given)
        unknown = sorted(set(given) - set(self._params))
        if unknown:
            raise ArgumentError(
                f"unknown argument(s) {', '.join(unknown)} for {self.name!r}; "
                f"it takes: {', '.join(self._params)}"
            )
        bound: dict[str, Any] = {}
        for key, param in self._params.items():
            if key in given:
                bound[key] = _check_type(key, given[key], param.type)
            elif param.default is ...:
                raise ArgumentError(f"argument {key!r} ({param.type.__name__}) is required")
            else:
                bound[key] = param.default
        return bound

    def param_type(self, key: str) -> type | None:
        param = self._params.get(key)
        return param.type if param else None


def _check_type(key: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is not bool and isinstance(value, bool) and expected is not str:
        raise ArgumentError(f"argument {key!r} must be {expected.__name__}, got bool {value!r}")
    if not isinstance(value, expected):
        raise ArgumentError(
            f"argument {key!r} must be {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def parse_cli_argument(text: str, workflow: Workflow | None = None) -> tuple[str, Any]:
    """Parse ``key=value`` from the command line, typed by the declared parameter.

    Undeclared keys (or no workflow) are parsed as JSON when they look like JSON,
    else kept as strings.
    """
    if "=" not in text:
        raise ArgumentError(f"--arg expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    expected = workflow.param_type(key) if workflow else None
    import json

    if expected is str:
        return key, raw
    if expected in (int, float):
        try:
            return key, expected(raw)
        except ValueError:
            raise ArgumentError(
                f"argument {key!r} must be {expected.__name__}, got {raw!r}"
            ) from None
    if expected is bool:
        lowered = raw.lower()
        if lowered in {"true", "1", "yes"}:
            return key, True
        if lowered in {"false", "0", "no"}:
            return key, False
        raise ArgumentError(f"argument {key!r} must be true or false, got {raw!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        if expected in (list, dict):
            raise ArgumentError(f"argument {key!r} must be JSON {expected.__name__}") from None
        return key, raw
