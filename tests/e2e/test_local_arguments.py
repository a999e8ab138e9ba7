"""Typed job arguments on the local substrate (issues 8.2, 8.3): a circuit, an array, an
operator and a list of circuits, from Python and from the CLI, through a real daemon."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.quantum_info import SparsePauliOp

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers

from qlayer import keys
from qlayer.errors import ArgumentError

ARGS_TYPED = helpers.PROGRAMS / "args_typed.py"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    yield from helpers.local_client(tmp_path_factory.mktemp("args") / "home")


def ghz(n: int) -> QuantumCircuit:
    circuit = QuantumCircuit(n)
    circuit.h(0)
    for i in range(n - 1):
        circuit.cx(i, i + 1)
    circuit.measure_all()
    return circuit


def test_a_circuit_an_array_and_an_operator_as_arguments(client):
    weights = np.linspace(0, 1, 700_000)  # 5.6 MB
    job = client.run(
        ARGS_TYPED,
        {
            "circuit": ghz(3),
            "weights": weights,
            "observable": SparsePauliOp(["ZZI", "IXX"]),
            "extra": {"more": [ghz(2), ghz(2)], "pair": (1, 2)},
        },
    )
    result = job.result(timeout=180)
    assert result["shots"] == 64 and result["qubits"] == 3
    assert result["observable"] == ["ZZI", "IXX"]
    assert isinstance(result["weights"], np.ndarray) and np.array_equal(result["weights"], weights)
    assert result["scaled_sum"] == pytest.approx(float(weights.sum() * 2))
    assert result["extra"]["pair"] == (1, 2) and result["extra"]["more"][0] == ghz(2)
    # the array is written once, as a binary sidecar, and the JSON stays small
    prefix = client.store.root / keys.job_prefix(job.job_id)
    sizes = {p.relative_to(prefix).as_posix(): p.stat().st_size for p in prefix.rglob("*")}
    assert sorted(n for n, s in sizes.items() if s >= weights.nbytes) == [
        "input-0.npy",  # the argument, once
        "result-0.npy",  # the result's array
        "stages/0001-execute/request-0.npy",  # the state from build (weights * 2)
    ]
    assert sizes["input.json"] < 50_000


def test_a_numpy_argument_to_a_workflow_without_params_is_refused_clearly(client, tmp_path):
    program = tmp_path / "noparams.py"
    program.write_text(
        "from qlayer import Done, Workflow\n"
        "wf = Workflow('noparams')\n"
        "@wf.stage()\n"
        "def only(args):\n"
        "    return Done(args)\n"
    )
    with pytest.raises(ArgumentError, match=r"'weights'.*declares no params"):
        client.run(program, {"weights": np.zeros(3)})


def test_the_cli_passes_file_arguments(client, tmp_path):
    from typer.testing import CliRunner

    from qlayer import cli

    buffer = io.BytesIO()
    qpy.dump(ghz(2), buffer)
    (tmp_path / "bell.qpy").write_bytes(buffer.getvalue())
    np.save(tmp_path / "w.npy", np.arange(5.0))
    (tmp_path / "args.json").write_text(json.dumps({"extra": {"note": "from a file"}}))
    result = CliRunner().invoke(
        cli.app,
        [
            "run",
            str(ARGS_TYPED),
            "--home",
            str(client.home.root),
            "--arg",
            f"circuit=@{tmp_path / 'bell.qpy'}",
            "--arg",
            f"weights=@{tmp_path / 'w.npy'}",
            "--arg-file",
            str(tmp_path / "args.json"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    job = client.job(json.loads(result.stdout)["job_id"])
    out = job.result(timeout=180)
    assert out["qubits"] == 2 and out["weights"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert out["extra"] == {"note": "from a file"}
