"""What a stage may return.

A stage returns one of:

* plain data: it goes to the next stage in declaration order (or, from the last
  stage, becomes the job's result);
* :class:`Next`: data for a named stage;
* :class:`Execute`: PUBs to run on a simulator or QPU; the results reach ``then``;
* :class:`FanOut`: run a stage once per item, in parallel; the list of results
  reaches ``then``;
* :class:`Done`: the job's final result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

PrimitiveKind = Literal["sampler", "estimator"]
QpuMode = Literal["job", "batch", "session"]
#: How the requests of a job reach a QPU service (IBM's execution modes): ``job`` (each
#: on its own), ``batch`` (queued together, for independent requests: a fan-out) or
#: ``session`` (the device held between requests, for a loop).
QPU_MODES: tuple[str, ...] = ("job", "batch", "session")


def check_qpu_mode(mode: str | None, where: str) -> str | None:
    """``mode`` if it is one of :data:`QPU_MODES` (or None: decided per request).

    Raises:
        ValueError: Any other value, naming the choices.
    """
    if mode is not None and mode not in QPU_MODES:
        raise ValueError(
            f"{where}: mode must be one of {', '.join(QPU_MODES)} (or None), got {mode!r}"
        )
    return mode


@dataclass(frozen=True)
class Next:
    """Send ``data`` to the stage named ``stage``."""

    stage: str
    data: Any = None


@dataclass(frozen=True)
class Done:
    """End the job with ``result`` as its final result."""

    result: Any = None


@dataclass(frozen=True)
class FanOut:
    """Run ``stage`` once per item, in parallel, then send the results to ``then``.

    Each item runs as a child job starting at ``stage``; the child may itself
    execute circuits or loop. ``then`` receives the list of child results in
    item order. ``state`` reaches ``then`` as ``ctx.state``.
    """

    items: Sequence[Any]
    stage: str
    then: str
    state: Any = None


@dataclass(frozen=True)
class Execute:
    """Run primitive unified blocs (PUBs) on a backend; the result reaches ``then``.

    Build one with :meth:`sampler` or :meth:`estimator`. All PUBs of one request
    run as one batched primitive call.
    """

    primitive: PrimitiveKind
    pubs: list[Any]
    then: str
    backend: str | None = None
    shots: int | None = None
    precision: float | None = None
    seed: int | None = None
    state: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    mode: QpuMode | None = None

    @classmethod
    def sampler(
        cls,
        pubs: Sequence[Any],
        *,
        then: str,
        shots: int | None = None,
        backend: str | None = None,
        seed: int | None = None,
        state: Any = None,
        mode: QpuMode | None = None,
        options: dict[str, Any] | None = None,
    ) -> Execute:
        """Sample circuits with the sampler primitive.

        Args:
            pubs: Sampler PUBs: circuits, or ``(circuit, parameter_values[, shots])``.
            then: The stage that receives the ``PrimitiveResult``.
            shots: Shots per PUB (default 1024).
            backend: Backend name; defaults to the job's backend.
            seed: Simulator seed, for reproducible results on simulators.
            state: Any serialisable value handed to ``then`` as ``ctx.state``.
            mode: On a QPU service, ``job``, ``batch`` or ``session``; None: the
                workflow's ``qpu_mode``, else decided per request (a loop holds a
                session, a fan-out's items share a batch, anything else is a job).
            options: Provider options: ``{"ibm": {...}}`` (the IBM primitive's options,
                e.g. ``{"twirling": {"enable_gates": True}}``), ``{"braket":
                {"reservation_arn": ...}}`` (a Braket Direct reservation).
        """
        check_qpu_mode(mode, "Execute.sampler")
        return cls(
            "sampler",
            _as_pub_list(pubs),
            then,
            backend,
            shots,
            None,
            seed,
            state,
            dict(options or {}),
            mode,
        )

    @classmethod
    def estimator(
        cls,
        pubs: Sequence[Any],
        *,
        then: str,
        precision: float | None = None,
        backend: str | None = None,
        seed: int | None = None,
        state: Any = None,
        mode: QpuMode | None = None,
        options: dict[str, Any] | None = None,
    ) -> Execute:
        """Estimate expectation values with the estimator primitive.

        Args:
            pubs: Estimator PUBs: ``(circuit, observables[, parameter_values[, precision]])``.
            then: The stage that receives the ``PrimitiveResult``.
            precision: Target precision (default: exact on ideal simulators).
            backend: Backend name; defaults to the job's backend.
            seed: Simulator seed.
            state: Any serialisable value handed to ``then`` as ``ctx.state``.
            mode: As for :meth:`sampler`.
            options: As for :meth:`sampler`.
        """
        check_qpu_mode(mode, "Execute.estimator")
        return cls(
            "estimator",
            _as_pub_list(pubs),
            then,
            backend,
            None,
            precision,
            seed,
            state,
            dict(options or {}),
            mode,
        )


def _as_pub_list(pubs: Sequence[Any]) -> list[Any]:
    if not isinstance(pubs, (list, tuple)):
        raise TypeError(
            "pubs must be a list of PUBs, e.g. [circuit] or [(circuit, observable, params)]; "
            f"got {type(pubs).__name__}"
        )
    if not pubs:
        raise ValueError("an execute request needs at least one PUB")
    return list(pubs)
