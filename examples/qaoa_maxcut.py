"""QAOA for max-cut: the flagship example (``make demo`` runs it).

A random graph is drawn from a seed (3-regular by default, or Erdős-Rényi), the max-cut
problem is mapped to the cost Hamiltonian ``H = 1/2 sum_{(i,j) in E} Z_i Z_j`` (the cut of a
bitstring is ``|E|/2 - <H>``), and a depth-``p`` QAOA circuit is optimised in a classical
loop that runs *as stages*:

1. ``build``   - graph, ansatz, transpilation for the backend's target, and a batched scan
   of linear-ramp starting points (one PUB, many parameter sets);
2. ``start``   - picks the best starting point;
3. ``update``  - one SPSA step per run: each request is one estimator PUB holding the
   current point and ``2 x resamplings`` perturbed points, so a whole iteration is one
   batched primitive call. The optimiser's state is plain JSON carried in ``state``;
4. ``report``  - samples the optimised circuit, takes the most likely bitstring, compares
   its cut with the exact max cut (brute force) and saves a convergence plot.

Run it:

    qlayer run examples/qaoa_maxcut.py --arg nodes=8 --wait
    qlayer run examples/qaoa_maxcut.py --arg nodes=10 --arg p=3 --arg maxiter=80 --wait
    qlayer run examples/qaoa_maxcut.py --arg graph=erdos_renyi --arg seed=3 --wait
    qlayer files <job-id>            # convergence.png, graph.json

Result: ``{"cut", "max_cut", "approximation_ratio", "bitstring", "energy_history",
"iterations", ...}`` where ``approximation_ratio`` is the cut of the most likely bitstring
over the exact max cut, and ``expected_ratio`` the QAOA state's expected cut over it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from qlayer import Done, Execute, Param, StageContext, Workflow

MAX_NODES = 16  # the exact max cut is found by brute force over 2**nodes assignments
MAX_ITERATIONS = 400

wf = Workflow(
    "qaoa_maxcut",
    params={
        "nodes": Param(int, 8, f"graph size (2..{MAX_NODES})"),
        "graph": Param(str, "regular", "'regular' (3-regular) or 'erdos_renyi'"),
        "edge_probability": Param(float, 0.5, "edge probability for erdos_renyi"),
        "seed": Param(int, 1, "seed of the graph, the optimiser and the simulator"),
        "p": Param(int, 2, "QAOA layers"),
        "maxiter": Param(int, 40, f"SPSA iterations (at most {MAX_ITERATIONS})"),
        "resamplings": Param(int, 2, "SPSA gradient samples averaged per iteration"),
        "shots": Param(int, 4000, "shots of the final sampling"),
        "optimization_level": Param(int, 3, "transpiler preset level (0-3)"),
    },
    backend="aer",
)


# -- the problem ----------------------------------------------------------------------------
def random_graph(nodes: int, kind: str, seed: int, edge_probability: float) -> list[list[int]]:
    """Draw a random graph.

    A 3-regular graph is drawn with the configuration (pairing) model, retried until it is
    simple; when ``3 * nodes`` is odd no 3-regular graph exists and an Erdős-Rényi graph is
    drawn instead.

    Args:
        nodes: Number of vertices.
        kind: ``"regular"`` or ``"erdos_renyi"``.
        seed: Random seed.
        edge_probability: Edge probability of the Erdős-Rényi model.

    Returns:
        Sorted edges ``[i, j]`` with ``i < j``; never empty.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "regular" and nodes >= 4 and (3 * nodes) % 2 == 0:
        for _ in range(1000):
            stubs = np.repeat(np.arange(nodes), 3)
            rng.shuffle(stubs)
            pairs = {tuple(sorted((int(a), int(b)))) for a, b in stubs.reshape(-1, 2)}
            if len(pairs) == len(stubs) // 2 and all(a != b for a, b in pairs):
                return [list(edge) for edge in sorted(pairs)]
    for _ in range(1000):
        edges = [
            [i, j]
            for i in range(nodes)
            for j in range(i + 1, nodes)
            if rng.random() < edge_probability
        ]
        if edges:
            return edges
    return [[0, 1]]


def cut_value(assignment: list[int], edges: list[list[int]]) -> int:
    """Number of edges whose ends lie on different sides.

    Args:
        assignment: The side (0 or 1) of each node, in node order.
        edges: The graph's edges.

    Returns:
        The cut size.
    """
    return sum(1 for i, j in edges if assignment[i] != assignment[j])


def exact_max_cut(nodes: int, edges: list[list[int]]) -> int:
    """The maximum cut by brute force over all ``2**nodes`` assignments (vectorised).

    Args:
        nodes: Number of vertices.
        edges: The graph's edges.

    Returns:
        The size of a maximum cut.
    """
    import numpy as np

    assignments = np.arange(2 ** (nodes - 1), dtype=np.int64)  # node n-1 fixed to side 0
    cuts = np.zeros(len(assignments), dtype=np.int64)
    for i, j in edges:
        cuts += ((assignments >> i) & 1) != ((assignments >> j) & 1)
    return int(cuts.max())


def bitstring_to_assignment(bitstring: str) -> list[int]:
    """Qiskit bitstrings are little-endian: character ``-1 - i`` is qubit (node) ``i``.

    Args:
        bitstring: A measured bitstring.

    Returns:
        The side of each node, in node order.
    """
    return [int(bit) for bit in reversed(bitstring)]


def cost_operator(nodes: int, edges: list[list[int]]) -> Any:
    """The cost Hamiltonian ``1/2 sum Z_i Z_j``; a bitstring's cut is ``|E|/2 - <H>``.

    Args:
        nodes: Number of qubits.
        edges: The graph's edges.

    Returns:
        A ``SparsePauliOp``.
    """
    from qiskit.quantum_info import SparsePauliOp

    return SparsePauliOp.from_sparse_list([("ZZ", [i, j], 0.5) for i, j in edges], nodes)


def qaoa_circuit(nodes: int, edges: list[list[int]], p: int) -> Any:
    """The depth-``p`` QAOA circuit with a final measurement.

    Layer k applies ``exp(-i gamma_k C)`` with ``C`` the cut operator (``RZZ(-gamma_k)`` on
    every edge, up to a global phase) and the mixer ``exp(-i beta_k sum X)``.

    Args:
        nodes: Number of qubits.
        edges: The graph's edges.
        p: Number of layers.

    Returns:
        A parametrised ``QuantumCircuit`` with parameters ``gamma[k]`` and ``beta[k]``.
    """
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector

    gamma = ParameterVector("gamma", p)
    beta = ParameterVector("beta", p)
    circuit = QuantumCircuit(nodes, name=f"qaoa_p{p}")
    circuit.h(range(nodes))
    for k in range(p):
        for i, j in edges:
            circuit.rzz(-gamma[k], i, j)
        for q in range(nodes):
            circuit.rx(2 * beta[k], q)
    circuit.measure_all()
    return circuit


def ramp_start(p: int, scale: float) -> list[float]:
    """A linear-ramp (annealing-like) starting point ``[gamma_1..p, beta_1..p]``.

    Args:
        p: Number of layers.
        scale: Overall angle scale.

    Returns:
        The parameter vector in canonical order (all gammas, then all betas).
    """
    fractions = [(k + 0.5) / p for k in range(p)]
    return [f * scale for f in fractions] + [(1 - f) * scale for f in fractions]


def circuit_order(circuit: Any, p: int) -> list[int]:
    """Where each of the circuit's parameters sits in the canonical ``[gammas, betas]``.

    Args:
        circuit: The (transpiled) circuit.
        p: Number of layers.

    Returns:
        ``order`` such that ``values[order]`` lists canonical values in circuit order.
    """
    canonical = [f"gamma[{k}]" for k in range(p)] + [f"beta[{k}]" for k in range(p)]
    return [canonical.index(param.name) for param in circuit.parameters]


# -- the optimiser --------------------------------------------------------------------------
@dataclass
class SPSA:
    """Simultaneous-perturbation stochastic approximation, one ask/tell step per stage run.

    All of its state is plain JSON, so it travels between stages in ``state``. Each
    iteration evaluates the current point and ``resamplings`` pairs ``theta +/- c_k delta``
    in one batch. The first iteration uses ``calibration`` pairs instead, and their mean
    slope sets the gain so that the first step moves each parameter by about
    ``first_step`` radians (Spall's recommendation, as in Qiskit's SPSA).

    Attributes:
        theta: The current point.
        seed: Seed of the perturbation directions.
        resamplings: Gradient estimates averaged per iteration.
        calibration: Gradient estimates of the first (calibrating) iteration.
        first_step: Target size of the first step, in radians per parameter.
        perturbation: ``c`` in ``c_k = c / (k + 1) ** 0.101``.
        stability: ``A`` in ``a_k = a / (k + 1 + A) ** 0.602``.
        k: Iterations done.
        gain: ``a``, set by the calibration on the first iteration.
        history: Energy of the current point at each iteration.
        best_energy: Lowest energy seen at an evaluated current point.
        best_theta: Where it was seen.
        deltas: The perturbation directions of the pending evaluation.
    """

    theta: list[float]
    seed: int
    resamplings: int = 2
    calibration: int = 10
    first_step: float = 0.1
    perturbation: float = 0.1
    stability: float = 5.0
    k: int = 0
    gain: float | None = None
    history: list[float] = field(default_factory=list)
    best_energy: float | None = None
    best_theta: list[float] | None = None
    deltas: list[list[int]] = field(default_factory=list)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SPSA:
        """Rebuild the optimiser from its JSON state."""
        return cls(**state)

    def to_state(self) -> dict[str, Any]:
        """The optimiser's JSON state."""
        return asdict(self)

    def _c(self) -> float:
        return self.perturbation / (self.k + 1) ** 0.101

    def ask(self) -> list[list[float]]:
        """The points to evaluate next: the current point, then ``+`` and ``-`` perturbations.

        Returns:
            The current point, then the ``+`` and ``-`` points of each direction.
        """
        import numpy as np

        rng = np.random.default_rng([self.seed, self.k])
        samples = self.calibration if self.gain is None else self.resamplings
        deltas = rng.choice([-1, 1], size=(samples, len(self.theta)))
        self.deltas = deltas.tolist()
        theta = np.asarray(self.theta)
        c = self._c()
        plus = [(theta + c * d).tolist() for d in deltas]
        minus = [(theta - c * d).tolist() for d in deltas]
        return [list(self.theta), *plus, *minus]

    def tell(self, energies: list[float]) -> None:
        """Take one step from the energies of the points :meth:`ask` returned.

        Args:
            energies: Energies in the order of :meth:`ask`.
        """
        import numpy as np

        values = np.asarray(energies, dtype=float)
        deltas = np.asarray(self.deltas, dtype=float)
        r = len(deltas)
        current, plus, minus = values[0], values[1 : 1 + r], values[1 + r : 1 + 2 * r]
        c = self._c()
        slopes = (plus - minus) / (2 * c)
        gradient = np.mean(slopes[:, None] * deltas, axis=0)
        self.history.append(float(current))
        if self.best_energy is None or current < self.best_energy:
            self.best_energy = float(current)
            self.best_theta = list(self.theta)
        if self.gain is None:
            # Spall's calibration, as in Qiskit's SPSA: the mean directional slope sets the gain
            magnitude = float(np.mean(np.abs(slopes)))
            self.gain = self.first_step * (1 + self.stability) ** 0.602 / max(magnitude, 1e-9)
        step = self.gain / (self.k + 1 + self.stability) ** 0.602
        self.theta = (np.asarray(self.theta) - step * gradient).tolist()
        self.k += 1


# -- the stages -----------------------------------------------------------------------------
def _problem(args: dict[str, Any]) -> tuple[int, list[list[int]]]:
    nodes = int(args["nodes"])
    if not 2 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes must be between 2 and {MAX_NODES}, got {nodes}")
    if args["graph"] not in ("regular", "erdos_renyi"):
        raise ValueError(f"graph must be 'regular' or 'erdos_renyi', got {args['graph']!r}")
    return nodes, random_graph(nodes, args["graph"], args["seed"], args["edge_probability"])


def _estimator_request(state: dict[str, Any], points: list[list[float]], then: str) -> Execute:
    """One estimator PUB: the ISA circuit, the observable, a (points, params) array."""
    import numpy as np

    order = state["order"]
    values = np.asarray(points, dtype=float)[:, order]
    return Execute.estimator(
        [(state["isa"], state["observable"], values)],
        then=then,
        seed=state["seed"],
        state=state,
    )


@wf.stage()
def build(args: dict[str, Any], ctx: StageContext) -> Execute:
    """Draw the graph, build and transpile the ansatz, scan the ramp starting points.

    Args:
        args: The job's arguments.
        ctx: The stage context.

    Returns:
        An estimator request over the starting points.
    """
    p, maxiter = int(args["p"]), int(args["maxiter"])
    if p < 1 or not 1 <= maxiter <= MAX_ITERATIONS or args["resamplings"] < 1:
        raise ValueError(f"need p >= 1, 1 <= maxiter <= {MAX_ITERATIONS}, resamplings >= 1")
    nodes, edges = _problem(args)
    if args["graph"] == "regular" and (nodes < 4 or nodes % 2):
        ctx.log.info("no 3-regular graph has %d nodes: drawing an Erdős-Rényi graph", nodes)
    ctx.log.info(
        "graph: %d nodes, %d edges (%s, seed %d)", nodes, len(edges), args["graph"], args["seed"]
    )
    ctx.save_file("graph.json", json.dumps({"nodes": nodes, "edges": edges}))

    measured = ctx.pass_manager(optimization_level=args["optimization_level"]).run(
        qaoa_circuit(nodes, edges, p)
    )
    isa = measured.remove_final_measurements(inplace=False)
    observable = cost_operator(nodes, edges).apply_layout(isa.layout)
    ctx.log.info(
        "QAOA p=%d on %s: depth %d, %d parameters", p, ctx.backend, isa.depth(), isa.num_parameters
    )

    scales = [0.2 + 0.2 * i for i in range(8)]
    state = {
        "nodes": nodes,
        "edges": edges,
        "p": p,
        "seed": args["seed"],
        "isa": isa,
        "measured": measured,
        "observable": observable,
        "order": circuit_order(isa, p),
        "measured_order": circuit_order(measured, p),
        "starts": [ramp_start(p, s) for s in scales],
    }
    return _estimator_request(state, state["starts"], then="start")


@wf.stage()
def start(result: Any, ctx: StageContext) -> Execute:
    """Pick the best ramp starting point and ask for the first SPSA evaluation.

    Args:
        result: Energies of the starting points.
        ctx: The stage context; ``ctx.state`` is the problem.

    Returns:
        The first SPSA estimator request.
    """
    state = dict(ctx.state)
    energies = [float(e) for e in result[0].data.evs]
    best = min(range(len(energies)), key=energies.__getitem__)
    edges = state["edges"]
    ctx.log.info(
        "start: best of %d ramp points has energy %.4f (expected cut %.3f of %d edges)",
        len(energies),
        energies[best],
        len(edges) / 2 - energies[best],
        len(edges),
    )
    optimiser = SPSA(
        theta=state.pop("starts")[best],
        seed=state["seed"],
        resamplings=int(ctx.arguments["resamplings"]),
    )
    points = optimiser.ask()
    state["optimiser"] = optimiser.to_state()
    state["scan"] = energies
    return _estimator_request(state, points, then="update")


@wf.stage(max_runs=MAX_ITERATIONS + 1)
def update(result: Any, ctx: StageContext) -> Execute:
    """One SPSA step; loops until ``maxiter``, then samples the best point found.

    Args:
        result: Energies of the points the optimiser asked for.
        ctx: The stage context; ``ctx.state`` is the problem and the optimiser.

    Returns:
        The next estimator request, or the final sampler request.
    """
    state = dict(ctx.state)
    optimiser = SPSA.from_state(state["optimiser"])
    optimiser.tell([float(e) for e in result[0].data.evs])
    edges = state["edges"]
    if optimiser.k % 5 == 0 or optimiser.k == 1:
        ctx.log.info(
            "iteration %d: energy %.4f, expected cut %.3f (best %.4f)",
            optimiser.k,
            optimiser.history[-1],
            len(edges) / 2 - optimiser.history[-1],
            optimiser.best_energy,
        )
    if optimiser.k < int(ctx.arguments["maxiter"]):
        points = optimiser.ask()
        state["optimiser"] = optimiser.to_state()
        return _estimator_request(state, points, then="update")

    import numpy as np

    best = optimiser.best_theta or optimiser.theta
    ctx.log.info(
        "SPSA done after %d iterations: best energy %.4f at gamma=%s beta=%s",
        optimiser.k,
        optimiser.best_energy,
        np.round(best[: state["p"]], 4).tolist(),
        np.round(best[state["p"] :], 4).tolist(),
    )
    values = np.asarray(best, dtype=float)[state["measured_order"]]
    summary = {key: state[key] for key in ("nodes", "edges", "p", "scan")} | {
        "optimiser": optimiser.to_state()
    }
    return Execute.sampler(
        [(state["measured"], values)],
        then="report",
        shots=int(ctx.arguments["shots"]),
        seed=state["seed"],
        state=summary,
    )


@wf.stage()
def report(result: Any, ctx: StageContext) -> Done:
    """Read the best cut off the samples, compare with the exact max cut, plot.

    Args:
        result: Samples of the optimised QAOA state.
        ctx: The stage context; ``ctx.state`` holds the graph and optimiser.

    Returns:
        The job's result.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    state = ctx.state
    nodes, edges = state["nodes"], state["edges"]
    optimiser = SPSA.from_state(state["optimiser"])
    counts: dict[str, int] = result[0].data.meas.get_counts()
    shots = sum(counts.values())
    max_cut = exact_max_cut(nodes, edges)

    bitstring = max(counts, key=lambda b: (counts[b], b))
    assignment = bitstring_to_assignment(bitstring)
    cut = cut_value(assignment, edges)
    optimal_shots = sum(
        n for b, n in counts.items() if cut_value(bitstring_to_assignment(b), edges) == max_cut
    )
    sampled_mean_cut = (
        sum(n * cut_value(bitstring_to_assignment(b), edges) for b, n in counts.items()) / shots
    )
    best_energy = float(optimiser.best_energy if optimiser.best_energy is not None else math.nan)
    expected_cut = len(edges) / 2 - best_energy
    ctx.log.info(
        "most likely bitstring %s cuts %d of %d edges; max cut %d; ratio %.3f",
        bitstring,
        cut,
        len(edges),
        max_cut,
        cut / max_cut,
    )
    ctx.log.info(
        "expected cut %.3f (ratio %.3f); P(optimal cut) = %.3f",
        expected_cut,
        expected_cut / max_cut,
        optimal_shots / shots,
    )

    history = optimiser.history
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        range(1, len(history) + 1),
        [len(edges) / 2 - e for e in history],
        marker=".",
        label="expected cut of the QAOA state",
    )
    ax.axhline(max_cut, color="tab:green", linestyle="--", label=f"max cut = {max_cut}")
    ax.axhline(len(edges) / 2, color="tab:grey", linestyle=":", label="random assignment")
    ax.set_xlabel("SPSA iteration")
    ax.set_ylabel("cut")
    ax.set_title(f"QAOA p={state['p']} max-cut, {nodes} nodes, {len(edges)} edges")
    ax.legend(loc="lower right")
    ctx.save_figure("convergence.png", fig)
    plt.close(fig)

    p = state["p"]
    best = optimiser.best_theta or optimiser.theta
    return Done(
        {
            "nodes": nodes,
            "edges": edges,
            "p": p,
            "cut": cut,
            "max_cut": max_cut,
            "approximation_ratio": cut / max_cut,
            "bitstring": bitstring,
            "partition": assignment,
            "expected_cut": expected_cut,
            "expected_ratio": expected_cut / max_cut,
            "sampled_mean_cut": sampled_mean_cut,
            "p_optimal": optimal_shots / shots,
            "energy_history": history,
            "iterations": optimiser.k,
            "gamma": best[:p],
            "beta": best[p:],
        }
    )
