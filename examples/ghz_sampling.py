"""GHZ sampling on a simulated noisy QPU.

Prepares an n-qubit GHZ state (|0...0> + |1...1>)/sqrt(2), transpiles it for the
device's target with the optimisation-level-3 preset pass manager (noise-aware layout:
it matters a lot on a noisy device), samples it on a fake IBM device (Aer with the
device's noise model) and reports the GHZ fidelity proxy P(GHZ) = P(0...0) + P(1...1),
with a histogram of the counts.

Run it:

    qlayer run examples/ghz_sampling.py --wait
    qlayer run examples/ghz_sampling.py --arg qubits=8 --arg shots=4000 --wait
    qlayer run examples/ghz_sampling.py --backend fake_torino --wait
    qlayer files <job-id>            # histogram.png

Result: ``{"counts": {...}, "p_ghz": float, "qubits": int, "shots": int, ...}``.
"""

from __future__ import annotations

from typing import Any

from qlayer import Done, Execute, Param, StageContext, Workflow

wf = Workflow(
    "ghz_sampling",
    params={
        "qubits": Param(int, 5, "number of qubits in the GHZ state"),
        "shots": Param(int, 2000, "shots"),
        "seed": Param(int, 11, "simulator seed (reproducible counts)"),
        "optimization_level": Param(int, 3, "transpiler preset level (0-3)"),
    },
    backend="fake_brisbane",
)


def ghz_circuit(qubits: int) -> Any:
    """Build the logical GHZ circuit with a final measurement of every qubit.

    Args:
        qubits: Number of qubits (at least 2).

    Returns:
        A ``QuantumCircuit`` with a ``meas`` classical register.
    """
    from qiskit import QuantumCircuit

    circuit = QuantumCircuit(qubits, name=f"ghz{qubits}")
    circuit.h(0)
    for q in range(qubits - 1):
        circuit.cx(q, q + 1)
    circuit.measure_all()
    return circuit


def ghz_probability(counts: dict[str, int], qubits: int) -> float:
    """P(all zeros) + P(all ones) from a counts dictionary.

    Args:
        counts: Bitstring counts.
        qubits: The GHZ width (the length of each bitstring).

    Returns:
        The fraction of shots that landed on ``0...0`` or ``1...1``.
    """
    total = sum(counts.values())
    if total == 0:
        return 0.0
    good = counts.get("0" * qubits, 0) + counts.get("1" * qubits, 0)
    return good / total


@wf.stage(compute="batch", vcpus=1, memory_mb=4096)
def transpile(args: dict[str, Any], ctx: StageContext) -> Execute:
    """Build the GHZ circuit and transpile it for the device's target.

    Args:
        args: The job's arguments.
        ctx: The stage context (target, pass manager, logger).

    Returns:
        A sampler request for the ISA circuit.
    """
    qubits = int(args["qubits"])
    if qubits < 2:
        raise ValueError(f"qubits must be at least 2, got {qubits}")
    logical = ghz_circuit(qubits)
    ctx.log.info(
        "GHZ on %d qubits for %s (target has %d qubits)", qubits, ctx.backend, ctx.target.num_qubits
    )
    isa = ctx.pass_manager(optimization_level=args["optimization_level"]).run(logical)
    ops = dict(isa.count_ops())
    two_qubit = sum(n for name, n in ops.items() if name in {"ecr", "cz", "cx"})
    layout = isa.layout.final_index_layout() if isa.layout is not None else list(range(qubits))
    ctx.log.info(
        "transpiled at O%d: depth %d, %d two-qubit gates, physical qubits %s",
        args["optimization_level"],
        isa.depth(),
        two_qubit,
        layout,
    )
    return Execute.sampler(
        [isa],
        then="tally",
        shots=args["shots"],
        seed=args["seed"],
        state={"depth": isa.depth(), "two_qubit_gates": two_qubit, "layout": layout},
    )


@wf.stage()
def tally(result: Any, ctx: StageContext) -> Done:
    """Count, compute P(GHZ) and save a histogram.

    Args:
        result: The sampler's ``PrimitiveResult``.
        ctx: The stage context; ``ctx.state`` holds the transpilation summary.

    Returns:
        The job's result.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qubits = int(ctx.arguments["qubits"])
    counts: dict[str, int] = result[0].data.meas.get_counts()
    shots = sum(counts.values())
    p_ghz = ghz_probability(counts, qubits)
    ctx.log.info("P(GHZ) = %.4f over %d shots (%d distinct outcomes)", p_ghz, shots, len(counts))

    top = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:16]
    fig, ax = plt.subplots(figsize=(8, 4))
    ghz_states = {"0" * qubits, "1" * qubits}
    colours = ["tab:blue" if key in ghz_states else "tab:grey" for key, _ in top]
    ax.bar([key for key, _ in top], [n / shots for _, n in top], color=colours)
    ax.set_ylabel("probability")
    ax.set_title(f"{qubits}-qubit GHZ on {ctx.backend}: P(GHZ) = {p_ghz:.3f}")
    ax.tick_params(axis="x", rotation=90)
    ctx.save_figure("histogram.png", fig)
    plt.close(fig)

    return Done(
        {
            "counts": counts,
            "p_ghz": p_ghz,
            "qubits": qubits,
            "shots": shots,
            "backend": ctx.backend,
            **(ctx.state or {}),
        }
    )
