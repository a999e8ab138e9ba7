"""The fan-out states: "Start children" (one child job per item) and "Fan in"."""

from __future__ import annotations

from typing import Any

from qlayer import keys
from qlayer.aws.events import StepEvent
from qlayer.aws.services import Services, batch_compute
from qlayer.aws.steps import carry_on, decision_of
from qlayer.core import transitions
from qlayer.interpreter import INLINE_MAP_LIMIT


def start_children_step(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Start children" step: the fan-out transition; the Map then runs the children.

    Returns ``{"children": [ids], "children_key": key, "count": n}`` at ``$.fanout``; past
    the inline Map limit the ids are only in ``children_key`` (the state stays small).
    """
    decision = decision_of(event)
    ids = transitions.start_children(svc.ports(), event.job_id, decision)
    children_key = keys.step_dir(event.job_id, decision.seq, "fanout") + "children.json"
    svc.store.put_json(children_key, ids)
    return {
        "children": ids if len(ids) <= INLINE_MAP_LIMIT else [],
        "children_key": children_key,
        "count": len(ids),
    }


def fan_in_step(event: StepEvent, svc: Services) -> dict[str, Any]:
    """The "Fan in" step: the children have ended; their results, in item order, go on."""
    fanout = decision_of(event)
    ports = svc.ports()
    outcome = transitions.fan_in(ports, event.job_id, fanout)
    carried = transitions.advance(ports, event.job_id, fanout.seq, "fan-in", outcome)
    return batch_compute(svc, carry_on(carried, fanout.seq)).to_json()
