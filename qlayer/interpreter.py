"""The stage interpreter: what a job does after a stage returns.

This is the one piece of logic both substrates follow. A step (a stage run, an
execute, a fan-in) ends in a :class:`Decision` with one of five kinds, and the
local engine and the AWS state machine each route on ``kind`` alone:

========  ===================================  ====================================
kind      local engine                         Step Functions state
========  ===================================  ====================================
next      queue a stage task                   ``Choose compute``
execute   hand the request to the dispatcher   ``Execute``
fanout    start one child job per item         ``Fan out``
done      mark the job DONE                    ``Finalise``
error     mark the job ERROR with the reason   ``Fail job``
========  ===================================  ====================================

``ROUTES`` below is that table; tests hold the engine and the synthesised state
machine to it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from qlayer.outcomes import Done, Execute, FanOut, Next
from qlayer.workflow import Workflow

DecisionKind = Literal["next", "execute", "fanout", "done", "error"]
DECISION_KINDS: tuple[str, ...] = ("next", "execute", "fanout", "done", "error")

#: kind -> (local engine action, state machine state name)
ROUTES: dict[str, tuple[str, str]] = {
    "next": ("queue_stage", "Choose compute"),
    "execute": ("dispatch_execute", "Execute"),
    "fanout": ("start_children", "Fan out"),
    "done": ("finish_job", "Finalise"),
    "error": ("fail_job", "Fail job"),
}

#: Step Functions Map runs inline up to this many items, Distributed Map past it.
INLINE_MAP_LIMIT = 40

#: The most items one FanOut may have (``QLAYER_MAX_FANOUT`` changes it).
MAX_FANOUT = 100_000


def max_fanout() -> int:
    """The largest fan-out accepted: ``QLAYER_MAX_FANOUT`` or :data:`MAX_FANOUT`."""
    value = os.environ.get("QLAYER_MAX_FANOUT")
    return int(value) if value else MAX_FANOUT


@dataclass
class Decision:
    """The outcome of one step, as stored in ``output.json`` and passed between states.

    Only pointers travel; payloads live in artifacts.
    """

    kind: DecisionKind
    seq: int = 0
    stage: str | None = None  # next: the stage to run; fanout: the stage each child starts at
    then: str | None = None  # execute/fanout: the stage that receives the results
    input_key: str | None = None  # next: the next stage's input artifact
    request_key: str | None = None  # execute: the request artifact
    backend: str | None = None
    plan: dict[str, Any] | None = None  # execute: the resource planner's choice
    items_key: str | None = None  # fanout: the items artifact
    count: int = 0  # fanout: number of items
    compute: dict[str, Any] | None = None  # next: where the next stage runs
    result_key: str | None = None  # done
    error_type: str | None = None  # error
    message: str | None = None  # error
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}) or k == "kind"}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Decision:
        if raw.get("kind") not in DECISION_KINDS:
            raise ValueError(f"not a decision: kind={raw.get('kind')!r}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def failed(cls, seq: int, stage: str | None, error_type: str, message: str) -> Decision:
        return cls("error", seq=seq, stage=stage, error_type=error_type, message=message)


@dataclass(frozen=True)
class Route:
    """What to do with a stage's return value, before any artifact is written."""

    kind: DecisionKind
    stage: str | None = None
    then: str | None = None
    payload: Any = None
    state: Any = None
    message: str | None = None


def route(workflow: Workflow, stage: str, returned: Any) -> Route:
    """Interpret a stage's return value. Pure: no I/O.

    Args:
        workflow: The program's workflow.
        stage: The stage that returned.
        returned: What it returned.

    Returns:
        A :class:`Route`; an unknown stage name becomes an ``error`` route whose
        message lists the workflow's stages.
    """

    def known(name: str, role: str) -> str | None:
        if name in workflow.stages:
            return None
        return (
            f"stage {stage!r} returned {role}={name!r}), but workflow {workflow.name!r} has no "
            f"stage {name!r}; its stages are: {', '.join(workflow.stages)}"
        )

    if isinstance(returned, Done):
        return Route("done", payload=returned.result)
    if isinstance(returned, Next):
        problem = known(returned.stage, "Next(stage")
        if problem:
            return Route("error", message=problem)
        return Route("next", stage=returned.stage, payload=returned.data)
    if isinstance(returned, Execute):
        problem = known(returned.then, "Execute(then")
        if problem:
            return Route("error", message=problem)
        return Route("execute", then=returned.then, payload=returned, state=returned.state)
    if isinstance(returned, FanOut):
        problem = known(returned.stage, "FanOut(stage") or known(returned.then, "FanOut(then")
        if problem:
            return Route("error", message=problem)
        if len(returned.items) == 0:
            return Route("next", stage=returned.then, payload=[], state=returned.state)
        limit = max_fanout()
        if len(returned.items) > limit:
            return Route(
                "error",
                message=(
                    f"FanOut of {len(returned.items)} items from stage {stage!r} is over the "
                    f"maximum fan-out size of {limit} (QLAYER_MAX_FANOUT). Give each child a "
                    "chunk of items (FanOut over chunks), or raise QLAYER_MAX_FANOUT."
                ),
            )
        return Route(
            "fanout",
            stage=returned.stage,
            then=returned.then,
            payload=list(returned.items),
            state=returned.state,
        )
    following = workflow.stage_after(stage)
    if following is None:
        return Route("done", payload=returned)
    return Route("next", stage=following, payload=returned)


def over_run_limit(workflow: Workflow, stage: str, runs_before: int) -> str | None:
    """The error message if running ``stage`` again would pass its ``max_runs``."""
    limit = workflow.get_stage(stage).max_runs
    if runs_before >= limit:
        return (
            f"stage {stage!r} has already run {runs_before} times, its max_runs; the loop did "
            f"not end. Return Done(...) when converged, or raise max_runs in @wf.stage()."
        )
    return None
