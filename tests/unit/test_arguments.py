"""Circuits, operators and arrays as job arguments (issues 8.2, 8.3): declared as Params,
encoded by their values at submit, arrays written once as .npy sidecars, from Python and
from the command line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.quantum_info import SparsePauliOp

from qlayer import Done, Param, Workflow, codec, keys
from qlayer.cliargs import parse_cli_argument, read_arguments_file
from qlayer.errors import ArgumentError, WorkflowError
from qlayer.steps import decode_arguments, load_input
from qlayer.store.local import FolderStore
from qlayer.submit import encode_arguments, prepare_job

PROGRAM = Path(__file__).resolve().parents[1] / "e2e" / "programs" / "args_typed.py"


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


def test_params_may_be_arrays_circuits_operators_and_object():
    wf = Workflow(
        "typed",
        params={
            "c": Param(QuantumCircuit),
            "w": Param(np.ndarray),
            "h": Param(SparsePauliOp),
            "o": Param(object, None),
            "d": np.zeros(2),  # a default's type is the param's type
        },
    )
    bound = wf.bind_arguments(
        {"c": bell(), "w": [1.0, 2.0], "h": SparsePauliOp("XX"), "o": (1, 2j)}
    )
    assert isinstance(bound["w"], np.ndarray) and bound["w"].tolist() == [1.0, 2.0]
    assert bound["o"] == (1, 2j) and bound["d"].shape == (2,)
    with pytest.raises(ArgumentError, match="'c' must be QuantumCircuit"):
        wf.bind_arguments({"c": "bell", "w": [1], "h": SparsePauliOp("XX")})
    with pytest.raises(ArgumentError, match="'w' must be a numpy array"):
        wf.bind_arguments({"c": bell(), "w": "x", "h": SparsePauliOp("XX")})
    described = wf.describe()["params"]
    assert (
        described["w"]["type"] == "ndarray"
        and described["d"]["default"] == "<numpy.ndarray shape (2,)>"
    )
    json.dumps(wf.describe())


def test_other_param_types_are_refused_with_the_allowed_list():
    with pytest.raises(
        WorkflowError, match=r"numpy\.ndarray, QuantumCircuit, SparsePauliOp or object"
    ):
        Workflow("bad", params={"s": Param(set)})


def test_a_job_with_a_circuit_and_a_large_array_writes_the_array_once(tmp_path):
    store = FolderStore(tmp_path)
    weights = np.arange(200_000, dtype=np.float64)  # 1.6 MB
    circuits = [bell(), bell()]
    job = prepare_job(
        store, PROGRAM, {"circuit": bell(), "weights": weights, "extra": {"cs": circuits}}
    )
    root = tmp_path / "jobs" / job.job_id
    files = {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }
    big = [name for name, size in files.items() if size >= weights.nbytes]
    assert big == ["input-0.npy"], files  # once, as a sidecar of input.json
    assert files["input.json"] < 20_000 and files["stages/0000-build/input.json"] < 20_000
    record = job.record()
    json.dumps(record.arguments)  # what the job stores hold is plain JSON
    assert record.arguments["weights"] == {
        "$q": "ndarray",
        "file": f"jobs/{job.job_id}/input-0.npy",
    }
    args = decode_arguments(store, record.arguments)
    assert np.array_equal(args["weights"], weights) and args["circuit"] == bell()
    assert args["extra"]["cs"] == circuits
    assert args["observable"] == SparsePauliOp("ZZ")  # the default
    data, _ = load_input(store, keys.stage_input(job.job_id, 0, "build"))
    assert np.array_equal(data["weights"], weights)


def test_argument_encoding_needs_no_program(tmp_path):
    store = FolderStore(tmp_path)
    encoded = encode_arguments(store, "j1", {"w": np.ones(3), "n": 2, "c": bell()})
    assert encoded["n"] == 2 and encoded["w"]["$q"] == "ndarray" and encoded["c"]["$q"] == "circuit"
    with pytest.raises(ArgumentError, match=r"argument .bad.*builtins\.object"):
        encode_arguments(store, "j1", {"bad": object()})


def test_a_stage_output_array_goes_to_a_sidecar(tmp_path):
    store = FolderStore(tmp_path)
    store.put_value("jobs/j/result.json", {"a": np.zeros(10_000)}, where="result")
    assert store.exists("jobs/j/result-0.npy")
    assert len(store.get_bytes("jobs/j/result.json")) < 200
    assert store.get_value("jobs/j/result.json")["a"].shape == (10_000,)


# -- the command line --------------------------------------------------------------------
def typed_workflow() -> Workflow:
    wf = Workflow(
        "cli",
        params={"c": Param(QuantumCircuit), "cs": Param(list), "w": Param(np.ndarray), "n": 1},
    )

    @wf.stage()
    def only(args):
        return Done(None)

    return wf


def test_cli_arguments_from_files(tmp_path):
    wf = typed_workflow()
    buffer = io.BytesIO()
    qpy.dump(bell(), buffer)
    (tmp_path / "bell.qpy").write_bytes(buffer.getvalue())
    np.save(tmp_path / "w.npy", np.arange(6).reshape(2, 3))
    key, circuit = parse_cli_argument(f"c=@{tmp_path / 'bell.qpy'}", wf)
    assert key == "c" and circuit == bell()
    assert parse_cli_argument(f"cs=@{tmp_path / 'bell.qpy'}", wf) == ("cs", [bell()])
    _, array = parse_cli_argument(f"w=@{tmp_path / 'w.npy'}", wf)
    assert array.shape == (2, 3)
    assert parse_cli_argument("w=[1, 2]", wf) == ("w", [1, 2])  # bound to an array later
    with pytest.raises(ArgumentError, match=r"=@FILE\.qpy"):
        parse_cli_argument("c=bell", wf)
    with pytest.raises(ArgumentError, match="does not exist"):
        parse_cli_argument(f"c=@{tmp_path / 'missing.qpy'}", wf)
    with pytest.raises(ArgumentError, match=r"not a \.qpy, \.npy, \.json file"):
        parse_cli_argument(f"c=@{tmp_path / 'bell.txt'}", wf)
    (tmp_path / "bad.qpy").write_bytes(b"QISKIT garbage")
    with pytest.raises(ArgumentError, match=r"bad\.qpy"):
        parse_cli_argument(f"c=@{tmp_path / 'bad.qpy'}", wf)


def test_an_argument_file_holds_json_and_typed_encodings(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"n": 3, "c": codec.encode(bell())}))
    args = read_arguments_file(path)
    assert args["n"] == 3 and args["c"] == bell()
    path.write_text("[1, 2]")
    with pytest.raises(ArgumentError, match="JSON object"):
        read_arguments_file(path)
    path.write_text(json.dumps({"w": {"$q": "ndarray", "file": "jobs/x/input-0.npy"}}))
    with pytest.raises(ArgumentError, match="refers to a file"):
        read_arguments_file(path)


def test_the_cli_run_command_reads_arg_file_and_file_arguments(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qlayer import cli_app, keys
    from qlayer.steps import load_input

    buffer = io.BytesIO()
    qpy.dump(bell(), buffer)
    (tmp_path / "bell.qpy").write_bytes(buffer.getvalue())
    np.save(tmp_path / "w.npy", np.ones(4))
    (tmp_path / "args.json").write_text(json.dumps({"extra": [1, 2]}))
    from qlayer.local.client import LocalClient

    # The real local client, with no daemon: the job is recorded, QUEUED, not run.
    client = LocalClient(tmp_path / "home", autostart=False)
    monkeypatch.setattr(cli_app, "_client", lambda home: client)
    runner = CliRunner()
    result = runner.invoke(
        cli_app.app,
        [
            "run",
            str(PROGRAM),
            "--arg-file",
            str(tmp_path / "args.json"),
            "--arg",
            f"circuit=@{tmp_path / 'bell.qpy'}",
            "--arg",
            f"weights=@{tmp_path / 'w.npy'}",
        ],
    )
    assert result.exit_code == 0, result.output
    [job] = client.jobs()
    assert job.status().value == "QUEUED"
    first = job.timeline()[0]
    seen, _state = load_input(client.store, keys.stage_input(job.job_id, 0, first["stage"]))
    assert seen["circuit"] == bell() and seen["weights"].tolist() == [1, 1, 1, 1]
    assert seen["extra"] == [1, 2]


def test_a_numpy_argument_to_a_workflow_without_params_names_it():
    wf = Workflow("noparams")

    @wf.stage()
    def only(args):
        return Done(args)

    with pytest.raises(ArgumentError) as caught:
        wf.bind_arguments({"weights": np.zeros(3)})
    message = str(caught.value)
    assert "'weights'" in message
    assert "declares no params" in message
    assert "numpy.ndarray" in message


def test_plain_json_arguments_to_a_workflow_without_params_still_pass():
    wf = Workflow("noparams2")
    assert wf.bind_arguments({"n": 3, "xs": [1.5, {"a": None}]}) == {
        "n": 3,
        "xs": [1.5, {"a": None}],
    }
