"""The stage interpreter's routing table: what a job does after a stage returns."""

from __future__ import annotations

import pytest
from qiskit import QuantumCircuit

from qlayer import Done, Execute, FanOut, Next, Workflow
from qlayer.core.transitions import ROUTES
from qlayer.interpreter import DECISION_KINDS, Decision, over_run_limit, route


@pytest.fixture
def wf() -> Workflow:
    wf = Workflow("table")
    for name in ("a", "b", "c"):
        wf.stage(name=name, max_runs=3)(lambda data: data)
    return wf


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


@pytest.mark.parametrize(
    ("stage", "returned", "kind", "target"),
    [
        ("a", {"x": 1}, "next", "b"),  # plain data goes to the next declared stage
        ("c", {"x": 1}, "done", None),  # ...and from the last stage is the result
        ("a", Done(5), "done", None),
        ("a", Next("c", 1), "next", "c"),
        ("a", Execute.sampler([bell()], then="c"), "execute", "c"),
        ("a", FanOut([1, 2], stage="b", then="c"), "fanout", "b"),
        ("a", FanOut([], stage="b", then="c"), "next", "c"),  # nothing to fan out over
        ("a", Next("zzz"), "error", None),
        ("a", Execute.sampler([bell()], then="zzz"), "error", None),
        ("a", FanOut([1], stage="zzz", then="c"), "error", None),
    ],
)
def test_route_table(wf, stage, returned, kind, target):
    decided = route(wf, stage, returned)
    assert decided.kind == kind
    if kind in ("next", "fanout"):
        assert decided.stage == target
    if kind == "execute":
        assert decided.then == target


def test_unknown_stage_message_lists_known_stages(wf):
    decided = route(wf, "a", Next("zzz"))
    assert "no stage 'zzz'" in decided.message
    assert "a, b, c" in decided.message


def test_every_decision_kind_has_a_state():
    assert set(ROUTES) == set(DECISION_KINDS)
    assert len(set(ROUTES.values())) == len(ROUTES)


def test_run_limit(wf):
    assert over_run_limit(wf, "a", 2) is None
    assert "already run 3 times" in over_run_limit(wf, "a", 3)


def test_decision_json_roundtrip_drops_empty_fields():
    decision = Decision("next", seq=3, stage="b", input_key="k", compute={"kind": "lambda"})
    raw = decision.to_json()
    assert "result_key" not in raw
    assert Decision.from_json(raw) == decision
    with pytest.raises(ValueError):
        Decision.from_json({"kind": "teleport"})


def test_execute_builders_validate_pubs():
    with pytest.raises(ValueError, match="at least one PUB"):
        Execute.sampler([], then="b")
    with pytest.raises(TypeError, match="list of PUBs"):
        Execute.estimator(bell(), then="b")  # type: ignore[arg-type]


def test_the_local_engine_has_a_route_for_every_kind(tmp_path):
    """The daemon carries out each kind with its own action: the same kinds as ROUTES."""
    from qlayer.local.daemon import Daemon
    from qlayer.local.paths import Home

    daemon = Daemon(Home.resolve(tmp_path / "home"), workers=1)
    assert list(daemon.routes) == list(ROUTES)
    assert all(callable(action) for action in daemon.routes.values())
