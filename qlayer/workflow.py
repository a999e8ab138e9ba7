"""The programming model: a Workflow is a named, ordered set of stages."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qlayer.cliargs import parse_cli_argument
from qlayer.codec import is_plain_json
from qlayer.errors import ArgumentError, WorkflowError
from qlayer.keys import check_name
from qlayer.notify import check_targets

__all__ = ["Compute", "Param", "Stage", "Workflow", "parse_cli_argument"]

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
        type: What the argument is:

            * ``int``, ``float``, ``str``, ``bool``, ``list``, ``dict``: JSON values
              (an ``int`` is accepted for a ``float``; a ``list`` may hold circuits);
            * ``numpy.ndarray``: an array of a numeric, bool or string dtype (a list is
              converted); large arrays travel as ``.npy`` sidecars;
            * ``qiskit.QuantumCircuit``: a circuit (QPY; from the CLI ``@file.qpy``);
            * ``qiskit.quantum_info.SparsePauliOp``: an observable;
            * ``object``: any value qlayer's codec can carry (JSON values, the types above,
              tuples, complex numbers, bytes, and nestings of them).
        default: The value used when the job does not give one; ``...`` makes it required.
        help: One line shown by ``qlayer describe``.
    """

    type: type
    default: Any = ...
    help: str = ""


_ALLOWED_PARAM_TYPES = (int, float, str, bool, list, dict, object)
#: Types from numpy and Qiskit a Param may name, as (module prefix, class name).
_CODEC_PARAM_TYPES = {
    ("numpy", "ndarray"),
    ("qiskit", "QuantumCircuit"),
    ("qiskit", "SparsePauliOp"),
}
ALLOWED_PARAM_TYPES_TEXT = (
    "int, float, str, bool, list, dict, numpy.ndarray, QuantumCircuit, SparsePauliOp or object"
)


def _allowed_param_type(kind: Any) -> bool:
    if kind in _ALLOWED_PARAM_TYPES:
        return True
    module = getattr(kind, "__module__", "") or ""
    return any(
        module.startswith(prefix) and getattr(kind, "__name__", "") == name
        for prefix, name in _CODEC_PARAM_TYPES
    )


def check_budget(value: Any) -> float | None:
    """A ``max_cost_usd``: None, or a positive number of dollars.

    Raises:
        WorkflowError: Anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise WorkflowError(f"max_cost_usd must be a positive number of dollars, got {value!r}")
    return float(value)


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
        notify: Where to announce each job's end: webhook URLs (a signed JSON POST)
            and/or ``"desktop"`` (see :mod:`qlayer.notify`); ``qlayer run --notify``
            adds more.
        max_cost_usd: A budget for each job, its fan-out children included: an execute
            request that would take the job's spend past it is not submitted and the
            job ends in ERROR (``BudgetExceeded``); prices are :mod:`qlayer.pricing`'s.
        qpu_mode: How the job's requests reach a QPU service: ``"job"``, ``"batch"`` or
            ``"session"`` (an ``Execute``'s own ``mode`` wins). None: decided per request
            (a loop holds a session; a fan-out's items share a batch; else a job).
        requirements: Packages the stages need beyond qiskit and qlayer, as PEP 508
            requirements on the package index (``["pendulum>=3", "tabulate==0.9.0"]``);
            a program folder's ``requirements.txt`` and ``pyproject.toml`` add theirs.
            They are resolved once into a lock and installed, once, into an environment
            of the program's own (see :mod:`qlayer.envs`); import them inside the stage
            functions (the submitting process does not have them). A requirement that
            cannot coexist with qlayer's own packages (another qiskit major) is refused
            at submit.

    Example:
        >>> wf = Workflow("demo", params={"n": 3})
        >>> @wf.stage()
        ... def build(args):
        ...     return Done(args["n"] * 2)
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    backend: str = "aer"
    notify: Sequence[str] = ()
    max_cost_usd: float | None = None
    qpu_mode: str | None = None
    requirements: Sequence[str] = ()
    stages: dict[str, Stage] = field(default_factory=dict, init=False)
    source_path: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        try:
            check_name(self.name, "workflow name")
        except ValueError as exc:
            raise WorkflowError(str(exc)) from None
        self.max_cost_usd = check_budget(self.max_cost_usd)
        from qlayer.outcomes import check_qpu_mode

        try:
            check_qpu_mode(self.qpu_mode, f"workflow {self.name!r}")
        except ValueError as exc:
            raise WorkflowError(str(exc)) from None
        try:
            self.notify = tuple(check_targets(self.notify))
        except ArgumentError as exc:
            raise WorkflowError(str(exc)) from None
        from qlayer.envs.requirements import check_requirements

        # RequirementError (a WorkflowError) naming the bad one
        self.requirements = check_requirements(
            self.requirements, f"workflow {self.name!r}: requirements"
        )
        self._params: dict[str, Param] = {}
        for key, spec in dict(self.params).items():
            param = spec if isinstance(spec, Param) else Param(type(spec), spec)
            if not _allowed_param_type(param.type):
                raise WorkflowError(
                    f"parameter {key!r} has type {getattr(param.type, '__name__', param.type)}; "
                    f"use {ALLOWED_PARAM_TYPES_TEXT}"
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
            "requirements": list(self.requirements),
            "params": {
                k: {
                    "type": p.type.__name__,
                    "default": None if p.default is ... else _describe_default(p.default),
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
            for key, value in given.items():
                if not is_plain_json(value):
                    raise ArgumentError(
                        f"argument {key!r} is a {_type_name(value)}, but workflow "
                        f"{self.name!r} declares no params, so it takes JSON values only; "
                        f"declare it, e.g. params={{{key!r}: Param({_param_hint(value)})}}"
                    )
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


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__ or ""
    return kind.__qualname__ if module == "builtins" else f"{module.split('.')[0]}.{kind.__name__}"


def _param_hint(value: Any) -> str:
    kind = type(value)
    if (kind.__module__ or "").startswith("numpy") and kind.__name__ == "ndarray":
        return "numpy.ndarray"
    if any(
        (kind.__module__ or "").startswith(prefix) and kind.__name__ == name
        for prefix, name in _CODEC_PARAM_TYPES
    ):
        return kind.__name__
    return "object"


def _describe_default(value: Any) -> Any:
    """A default as ``qlayer describe`` shows it: JSON as is, others summarised."""
    if is_plain_json(value):
        return value
    shape = getattr(value, "shape", None)
    return f"<{_type_name(value)}{f' shape {tuple(shape)}' if shape is not None else ''}>"


def _check_type(key: str, value: Any, expected: type) -> Any:
    if expected is object:
        return value
    module = getattr(expected, "__module__", "") or ""
    if module.startswith("numpy") and expected.__name__ == "ndarray":
        return _as_array(key, value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is not bool and isinstance(value, bool) and expected is not str:
        raise ArgumentError(f"argument {key!r} must be {expected.__name__}, got bool {value!r}")
    if not isinstance(value, expected):
        raise ArgumentError(
            f"argument {key!r} must be {expected.__name__}, got {_type_name(value)} "
            f"{_short_repr(value)}"
        )
    return value


def _as_array(key: str, value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, (list, tuple, int, float, complex)) and not isinstance(value, bool):
        try:
            array = np.asarray(value)
        except ValueError as exc:  # ragged lists
            raise ArgumentError(f"argument {key!r} must be an array: {exc}") from None
    else:
        raise ArgumentError(
            f"argument {key!r} must be a numpy array (or a list of numbers), got "
            f"{_type_name(value)} {_short_repr(value)}"
        )
    if array.dtype.hasobject:
        raise ArgumentError(f"argument {key!r} must be an array of numbers, not of objects")
    return array


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
