"""The IBM primitives qlayer uses, and their client-side preparation on stage compute.

qiskit-ibm-runtime 0.50 deprecated ``SamplerV2`` / ``EstimatorV2`` (server-side
preparation) for the client-side primitives ``qiskit_ibm_runtime.executor_sampler.Sampler``
and ``qiskit_ibm_runtime.executor_estimator.Estimator``: the same ``BaseSamplerV2`` /
``BaseEstimatorV2`` interface (PUBs in, ``PrimitiveResult`` out), but ``run`` first turns
the PUBs into a ``QuantumProgram`` on the client (coercion, twirling, dynamical decoupling,
the post-processing recipe), then submits it to the runtime's ``executor`` program; the
job's ``result()`` post-processes the executor's output back into a ``PrimitiveResult``.

That preparation can be heavy, so qlayer does it where the stage ran
(:func:`prepare`, called by :mod:`qlayer.steps` on the local worker, the AWS stage runner
or Batch) and stores the program, encoded with the runtime's own schema, in the execute
request. The dispatcher (the local remote pump, or the AWS dispatcher function with its
120 s) only decodes it and hands it to ``Executor.run`` (:func:`run_prepared`).

A request without a prepared program (recorded before this existed, merged from several,
or asking for dynamical decoupling, which needs the device's ``Target``) is prepared at
submission by the client-side primitive itself. On a runtime without the client-side
primitives the deprecated ``SamplerV2`` / ``EstimatorV2`` are used (pyproject pins the
tested range, where the client-side ones exist).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qlayer.request import ExecuteRequest

#: The schema version of the executor's inputs qlayer writes (the runtime's own).
SCHEMA_VERSION = "v2.0"
#: What the client-side primitives set as the program's semantic role (its post-processor).
SEMANTIC_ROLES = {"sampler": "sampler_v2", "estimator": "estimator_v2"}
#: Option sections that belong to the submission, not to the program.
SUBMISSION_OPTIONS = ("environment", "max_execution_time", "simulator")


def client_side_available() -> bool:
    """Whether the installed qiskit-ibm-runtime has the client-side primitives."""
    try:
        import qiskit_ibm_runtime.executor_estimator
        import qiskit_ibm_runtime.executor_sampler  # noqa: F401
    except ImportError:
        return False
    return True


def primitive_class(kind: str) -> Any:
    """The primitive class for ``kind`` (``sampler``/``estimator``): client-side if present."""
    if client_side_available():
        if kind == "sampler":
            from qiskit_ibm_runtime.executor_sampler import Sampler

            return Sampler
        from qiskit_ibm_runtime.executor_estimator import Estimator

        return Estimator
    import qiskit_ibm_runtime as runtime  # pragma: no cover - runtime < 0.50

    return runtime.SamplerV2 if kind == "sampler" else runtime.EstimatorV2  # pragma: no cover


def program_options(request: ExecuteRequest) -> dict[str, Any]:
    """The primitive options that shape the program: ``options["ibm"]``, shots, precision."""
    opts = dict(request.options or {})
    options = {
        key: value
        for key, value in dict(opts.get("ibm") or {}).items()
        if key not in SUBMISSION_OPTIONS
    }
    if request.primitive == "sampler":
        if request.shots is not None:
            options["default_shots"] = int(request.shots)
    elif request.precision is not None:
        options["default_precision"] = float(request.precision)
    return options


def prepare(request: ExecuteRequest) -> dict[str, Any] | None:
    """The request's executor program, prepared client-side (runs on stage compute).

    Returns:
        ``{"schema": ..., "primitive": ..., "params": ...}`` (JSON), or None when the
        program cannot be prepared without the device (dynamical decoupling) or the
        runtime has no client-side primitives: then submission prepares it.

    Raises:
        ValueError: The PUBs or options are not valid for the primitive (the runtime's
            ``IBMInputValueError`` and pydantic's ``ValidationError`` are ``ValueError``).
    """
    if not client_side_available():
        return None  # pragma: no cover - runtime < 0.50
    from qiskit_ibm_runtime.quantum_program.params_converters import (
        QUANTUM_PROGRAM_PARAMS_CONVERTERS,
    )

    options = program_options(request)
    if request.primitive == "sampler":
        from qiskit_ibm_runtime.executor_sampler.prepare import prepare as prepare_sampler
        from qiskit_ibm_runtime.options_models import SamplerOptions

        sampler_options = SamplerOptions(**options)
        if sampler_options.dynamical_decoupling.enable:
            return None
        program, executor_options = prepare_sampler(request.pubs, sampler_options)
    else:
        from qiskit_ibm_runtime.executor_estimator.prepare import prepare as prepare_estimator
        from qiskit_ibm_runtime.options_models import EstimatorOptions

        estimator_options = EstimatorOptions(**options)
        if estimator_options.dynamical_decoupling.enable:
            return None
        program, executor_options = prepare_estimator(request.pubs, estimator_options)
    # As the client-side primitives do before submitting: the result's post-processor.
    program._semantic_role = SEMANTIC_ROLES[request.primitive]
    converter = QUANTUM_PROGRAM_PARAMS_CONVERTERS[SCHEMA_VERSION]
    params = converter.encoder(program, executor_options).model_dump(mode="json")
    return {"schema": SCHEMA_VERSION, "primitive": request.primitive, "params": params}


def run_prepared(mode: Any, prepared: dict[str, Any], submission: dict[str, Any]) -> Any:
    """Submit a prepared program to the runtime's executor; the runtime job.

    Args:
        mode: The device (job mode), or the ``Session`` / ``Batch`` the job joins.
        prepared: What :func:`prepare` returned.
        submission: ``environment`` (job tags), ``max_execution_time``, ``simulator``.
    """
    from qiskit_ibm_runtime import Executor
    from qiskit_ibm_runtime.quantum_program.params_converters import (
        QUANTUM_PROGRAM_PARAMS_CONVERTERS,
    )

    converter = QUANTUM_PROGRAM_PARAMS_CONVERTERS[prepared["schema"]]
    program, executor_options = converter.decoder(
        converter.model.model_validate(prepared["params"])
    )
    merged = {
        **executor_options.model_dump(),
        **{k: submission[k] for k in SUBMISSION_OPTIONS if k in submission},
    }
    return Executor(mode=mode, options=type(executor_options)(**merged)).run(program)
