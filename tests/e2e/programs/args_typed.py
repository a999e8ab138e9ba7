"""Typed arguments: a circuit, an array and an observable reach the stages intact, and a
stage's array output comes back as an array."""

import numpy as np
from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from qlayer import Done, Execute, Param, Workflow

wf = Workflow(
    "args_typed",
    params={
        "circuit": Param(QuantumCircuit, help="a circuit with measurements"),
        "weights": Param(np.ndarray, help="an array"),
        "observable": Param(SparsePauliOp, SparsePauliOp("ZZ"), "an observable"),
        "extra": Param(object, None, "anything the codec carries"),
    },
    backend="aer",
)


@wf.stage()
def build(args, ctx):
    weights = args["weights"]
    assert isinstance(weights, np.ndarray) and np.array_equal(ctx.arguments["weights"], weights)
    scaled = weights * 2  # a stage output holding an array
    return Execute.sampler(
        [args["circuit"]],
        shots=64,
        then="count",
        state={
            "scaled": scaled,
            "qubits": args["circuit"].num_qubits,
            "observable": args["observable"].paulis.to_labels(),
        },
    )


@wf.stage()
def count(result, ctx):
    counts = result[0].data.meas.get_counts()
    scaled = ctx.state["scaled"]
    return Done(
        {
            "shots": sum(counts.values()),
            "qubits": ctx.state["qubits"],
            "observable": ctx.state["observable"],
            "weights": ctx.arguments["weights"],
            "scaled_sum": float(scaled.sum()),
            "extra": ctx.arguments["extra"],
        }
    )
