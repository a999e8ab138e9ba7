"""Declaring workflows and binding arguments."""

from __future__ import annotations

import pytest

from qlayer import Done, Param, Workflow
from qlayer.errors import ArgumentError, WorkflowError
from qlayer.workflow import parse_cli_argument


def make() -> Workflow:
    wf = Workflow("demo", params={"n": 3, "name": Param(str, ..., "who"), "x": 0.5})

    @wf.stage()
    def first(args):
        return args

    @wf.stage(compute="batch", vcpus=4, memory_mb=16384, timeout_s=7200)
    def second(data, ctx):
        return Done(data)

    return wf


def test_stages_keep_declaration_order_and_compute():
    wf = make()
    assert list(wf.stages) == ["first", "second"]
    assert wf.first_stage == "first"
    assert wf.stage_after("first") == "second"
    assert wf.stage_after("second") is None
    assert wf.stages["second"].compute.kind == "batch"
    assert wf.stages["second"].compute.memory_mb == 16384
    assert wf.stages["first"].takes_ctx is False
    assert wf.stages["second"].takes_ctx is True


def test_source_path_is_the_defining_file():
    assert make().source_path == __file__


def test_bind_fills_defaults_and_checks_types():
    wf = make()
    assert wf.bind_arguments({"name": "a"}) == {"n": 3, "name": "a", "x": 0.5}
    assert wf.bind_arguments({"name": "a", "x": 2}) == {"n": 3, "name": "a", "x": 2.0}
    with pytest.raises(ArgumentError, match="'n' must be int, got str"):
        wf.bind_arguments({"name": "a", "n": "3"})
    with pytest.raises(ArgumentError, match="'n' must be int, got bool"):
        wf.bind_arguments({"name": "a", "n": True})
    with pytest.raises(ArgumentError, match=r"'name' .* is required"):
        wf.bind_arguments({})
    with pytest.raises(ArgumentError, match=r"unknown argument.*nodes.*it takes: n, name, x"):
        wf.bind_arguments({"name": "a", "nodes": 4})


def test_cli_arguments_are_typed_by_declaration():
    wf = make()
    assert parse_cli_argument("n=8", wf) == ("n", 8)
    assert parse_cli_argument("x=0.25", wf) == ("x", 0.25)
    assert parse_cli_argument("name=007", wf) == ("name", "007")
    assert parse_cli_argument("other=[1,2]", None) == ("other", [1, 2])
    with pytest.raises(ArgumentError, match="must be int"):
        parse_cli_argument("n=eight", wf)
    with pytest.raises(ArgumentError, match="key=value"):
        parse_cli_argument("n", wf)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compute": "gpu"}, "compute='gpu'"),
        ({"compute": "lambda", "memory_mb": 20000}, "lambda allows at most"),
        ({"compute": "lambda", "timeout_s": 3600}, "lambda allows at most"),
        ({"gpus": 1}, "gpus need compute='batch-gpu'"),
        ({"max_runs": 0}, "max_runs"),
    ],
)
def test_bad_stage_declarations_are_refused(kwargs, message):
    wf = Workflow("bad")
    with pytest.raises(WorkflowError, match=message):
        wf.stage(name="s", **kwargs)(lambda data: data)


def test_duplicate_reserved_and_bad_signatures_are_refused():
    wf = Workflow("bad")
    wf.stage(name="a")(lambda data: data)
    with pytest.raises(WorkflowError, match="declared twice"):
        wf.stage(name="a")(lambda data: data)
    with pytest.raises(WorkflowError, match="reserved"):
        wf.stage(name="execute")(lambda data: data)
    with pytest.raises(WorkflowError, match="takes 3 parameters"):
        wf.stage(name="c")(lambda a, b, c: a)
    with pytest.raises(WorkflowError, match="invalid stage name"):
        wf.stage(name="../x")(lambda data: data)


def test_batch_gpu_gets_one_gpu_by_default():
    wf = Workflow("gpu")
    wf.stage(name="sim", compute="batch-gpu")(lambda data: data)
    assert wf.stages["sim"].compute.gpus == 1


def test_describe_lists_params_and_stages():
    info = make().describe()
    assert info["params"]["name"]["required"] is True
    assert info["params"]["n"]["default"] == 3
    assert [s["name"] for s in info["stages"]] == ["first", "second"]
