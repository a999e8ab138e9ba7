"""VQE for the H2 molecule at its equilibrium bond length (0.735 angstrom, STO-3G).

The qubit Hamiltonian is the standard 2-qubit one (parity mapping with the two-qubit
reduction). The ansatz is a hardware-efficient ``RY`` / ``CX`` circuit started from the
Hartree-Fock state. The optimiser is gradient descent with exact parameter-shift gradients:
each iteration is *one* estimator PUB holding the current point and its ``2 x n`` shifted
points, so a whole iteration is one batched primitive call. The loop runs as stages:
``prepare`` asks for the first batch, ``step`` takes one descent step per run and asks for
the next, until the gradient is below ``gtol`` (``max_runs`` bounds it); the result is
compared with the exact ground energy (``numpy.linalg.eigvalsh`` of the Hamiltonian).

Run it:

    qlayer run examples/vqe_h2.py --wait
    qlayer run examples/vqe_h2.py --arg reps=2 --arg learning_rate=0.5 --wait
    qlayer files <job-id>            # convergence.png

Result: ``{"energy", "exact_energy", "error", "hartree_fock_energy", "iterations",
"energy_history", "parameters", "converged", ...}`` (energies in hartree, nuclear repulsion
included).
"""

from __future__ import annotations

from typing import Any

from qlayer import Done, Execute, Param, StageContext, Workflow

MAX_ITERATIONS = 500

# H2 at 0.735 angstrom, STO-3G, parity mapping with two-qubit reduction: electronic
# Hamiltonian (hartree). Values from the literature (e.g. Kandala et al. 2017 / Qiskit
# textbook, and the Qiskit VQE tutorial), labels little-endian as in Qiskit.
H2_PAULI_TERMS: list[tuple[str, float]] = [
    ("II", -1.052373245772859),
    ("IZ", 0.39793742484318045),
    ("ZI", -0.39793742484318045),
    ("ZZ", -0.01128010425623538),
    ("XX", 0.18093119978423156),
]
#: Nuclear repulsion 1/R at R = 0.735 angstrom = 1.38897 bohr (same source).
NUCLEAR_REPULSION = 0.7199689944489797
#: Hartree-Fock reference in this mapping: qubit 0 set, |01> in Qiskit's order.
HARTREE_FOCK_BITS = (1, 0)

wf = Workflow(
    "vqe_h2",
    params={
        "reps": Param(int, 1, "entangling layers of the RY/CX ansatz"),
        "learning_rate": Param(float, 0.8, "gradient-descent step size"),
        "gtol": Param(float, 1e-5, "stop when the gradient norm falls below this (or its noise)"),
        "maxiter": Param(int, 200, f"iteration bound (at most {MAX_ITERATIONS})"),
        "seed": Param(int, 3, "seed of the small random offset of the starting point"),
        "precision": Param(float, 0.0, "estimator precision; 0 = exact on ideal simulators"),
    },
    backend="aer",
)


def hamiltonian() -> Any:
    """The electronic H2 Hamiltonian as a ``SparsePauliOp`` (nuclear repulsion excluded).

    Returns:
        The 2-qubit ``SparsePauliOp``.
    """
    from qiskit.quantum_info import SparsePauliOp

    return SparsePauliOp.from_list(H2_PAULI_TERMS)


def exact_ground_energy() -> float:
    """The exact ground-state energy, nuclear repulsion included.

    Returns:
        The lowest eigenvalue of the Hamiltonian matrix plus the nuclear repulsion.
    """
    import numpy as np

    return float(np.linalg.eigvalsh(hamiltonian().to_matrix())[0]) + NUCLEAR_REPULSION


def hartree_fock_energy() -> float:
    """The energy of the Hartree-Fock state, nuclear repulsion included.

    Returns:
        The Hamiltonian's diagonal element at the Hartree-Fock basis state.
    """
    index = sum(bit << qubit for qubit, bit in enumerate(HARTREE_FOCK_BITS))
    return float(hamiltonian().to_matrix()[index, index].real) + NUCLEAR_REPULSION


def ansatz(reps: int) -> Any:
    """A hardware-efficient ansatz: ``RY`` on each qubit, then ``reps`` x (CX, ``RY`` layer).

    The Hamiltonian is real, so real amplitudes suffice. Each parameter appears in one
    ``RY`` gate, so the parameter-shift rule with shifts of ``pi/2`` is exact.

    Args:
        reps: Number of entangling layers.

    Returns:
        A ``QuantumCircuit`` with parameters ``theta[0..2*(reps+1))``.
    """
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector

    theta = ParameterVector("theta", 2 * (reps + 1))
    circuit = QuantumCircuit(2, name=f"ry_ansatz_{reps}")
    for layer in range(reps + 1):
        if layer:
            circuit.cx(0, 1)
        circuit.ry(theta[2 * layer], 0)
        circuit.ry(theta[2 * layer + 1], 1)
    return circuit


def shifted_points(theta: list[float]) -> list[list[float]]:
    """The current point followed by its ``+pi/2`` and ``-pi/2`` shifts, one per parameter.

    Args:
        theta: The current point.

    Returns:
        ``1 + 2 * len(theta)`` points: ``[theta, theta + s e_0, ..., theta - s e_0, ...]``.
    """
    import math

    shift = math.pi / 2
    plus = [[t + shift * (i == k) for i, t in enumerate(theta)] for k in range(len(theta))]
    minus = [[t - shift * (i == k) for i, t in enumerate(theta)] for k in range(len(theta))]
    return [list(theta), *plus, *minus]


def gradient_from(energies: list[float]) -> list[float]:
    """The parameter-shift gradient from the energies of :func:`shifted_points`.

    Args:
        energies: Energies in the order :func:`shifted_points` returned.

    Returns:
        ``dE/dtheta_k = (E(theta + pi/2 e_k) - E(theta - pi/2 e_k)) / 2``.
    """
    n = (len(energies) - 1) // 2
    return [(energies[1 + k] - energies[1 + n + k]) / 2 for k in range(n)]


def _request(theta: list[float], state: dict[str, Any], ctx: StageContext) -> Execute:
    import numpy as np

    circuit = ansatz(int(ctx.arguments["reps"]))
    isa = ctx.pass_manager(optimization_level=1).run(circuit)
    observable = hamiltonian().apply_layout(isa.layout)
    order = [int(p.name.split("[")[1].rstrip("]")) for p in isa.parameters]
    values = np.asarray(shifted_points(theta), dtype=float)[:, order]
    precision = float(ctx.arguments["precision"]) or None
    return Execute.estimator(
        [(isa, observable, values)],
        then="step",
        precision=precision,
        seed=int(ctx.arguments["seed"]),
        state={**state, "theta": theta},
    )


@wf.stage()
def prepare(args: dict[str, Any], ctx: StageContext) -> Execute:
    """Start from the Hartree-Fock state (plus a small seeded offset) and ask for a batch.

    Args:
        args: The job's arguments.
        ctx: The stage context.

    Returns:
        The first estimator request.
    """
    import math

    import numpy as np

    reps, maxiter = int(args["reps"]), int(args["maxiter"])
    if reps < 0 or not 1 <= maxiter <= MAX_ITERATIONS:
        raise ValueError(f"need reps >= 0 and 1 <= maxiter <= {MAX_ITERATIONS}")
    n = 2 * (reps + 1)
    rng = np.random.default_rng(args["seed"])
    theta = rng.uniform(-0.05, 0.05, n)
    # RY(pi) on qubit 0 in the last layer prepares |01> = Hartree-Fock from |00>.
    theta[-2] += math.pi * HARTREE_FOCK_BITS[0]
    theta[-1] += math.pi * HARTREE_FOCK_BITS[1]
    exact = exact_ground_energy()
    ctx.log.info(
        "H2 at 0.735 A: %d Pauli terms, exact ground energy %.6f Ha; ansatz with %d parameters",
        len(H2_PAULI_TERMS),
        exact,
        n,
    )
    return _request(theta.tolist(), {"history": [], "gradient_norms": []}, ctx)


@wf.stage(max_runs=MAX_ITERATIONS + 1)
def step(result: Any, ctx: StageContext) -> Execute | Done:
    """One gradient-descent step; ends when the gradient is small or at ``maxiter``.

    Args:
        result: Energies of the current point and its parameter shifts.
        ctx: The stage context; ``ctx.state`` holds the point and the history.

    Returns:
        The next estimator request, or the job's result.
    """
    import math

    energies = [float(e) for e in result[0].data.evs]
    state = dict(ctx.state)
    theta: list[float] = state["theta"]
    gradient = gradient_from(energies)
    norm = math.sqrt(sum(g * g for g in gradient))
    energy = energies[0] + NUCLEAR_REPULSION
    history = [*state["history"], energy]
    norms = [*state["gradient_norms"], norm]
    iteration = len(history)
    if iteration == 1 or iteration % 10 == 0:
        ctx.log.info("iteration %d: E = %.8f Ha, |grad| = %.2e", iteration, energy, norm)
    # With a finite estimator precision s, each gradient component carries noise s/sqrt(2):
    # a gradient norm below twice that noise is as small as it can be measured.
    noise_floor = 2 * float(ctx.arguments["precision"]) * math.sqrt(len(gradient) / 2)
    converged = norm < max(float(ctx.arguments["gtol"]), noise_floor)
    if not converged and iteration < int(ctx.arguments["maxiter"]):
        rate = float(ctx.arguments["learning_rate"])
        next_theta = [t - rate * g for t, g in zip(theta, gradient, strict=True)]
        return _request(next_theta, {"history": history, "gradient_norms": norms}, ctx)
    return _finish(theta, history, norms, converged, ctx)


def _finish(
    theta: list[float],
    history: list[float],
    norms: list[float],
    converged: bool,
    ctx: StageContext,
) -> Done:
    """Compare with the exact energy, plot the convergence and build the result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exact = exact_ground_energy()
    energy = history[-1]
    hartree_fock = hartree_fock_energy()
    error = energy - exact
    if hartree_fock != exact:
        ctx.log.info(
            "correlation energy recovered: %.2f%%",
            100 * (hartree_fock - energy) / (hartree_fock - exact),
        )
    ctx.log.info(
        "%s after %d iterations: E = %.8f Ha, exact %.8f Ha, error %.2e Ha (%.4f mHa)",
        "converged" if converged else "stopped at maxiter",
        len(history),
        energy,
        exact,
        error,
        error * 1e3,
    )
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    iterations = range(1, len(history) + 1)
    top.plot(iterations, history, marker=".", label="VQE energy")
    top.axhline(exact, color="tab:green", linestyle="--", label=f"exact {exact:.6f} Ha")
    top.set_ylabel("energy (Ha)")
    top.legend()
    top.set_title("VQE for H2 at 0.735 Å")
    bottom.semilogy(iterations, [max(e - exact, 1e-12) for e in history], label="E - E_exact")
    bottom.semilogy(iterations, norms, label="|gradient|")
    bottom.axhline(1.6e-3, color="tab:red", linestyle=":", label="chemical accuracy")
    bottom.set_xlabel("iteration")
    bottom.legend()
    ctx.save_figure("convergence.png", fig)
    plt.close(fig)
    return Done(
        {
            "energy": energy,
            "exact_energy": exact,
            "error": error,
            "hartree_fock_energy": hartree_fock,
            "nuclear_repulsion": NUCLEAR_REPULSION,
            "iterations": len(history),
            "converged": converged,
            "energy_history": history,
            "parameters": theta,
        }
    )
