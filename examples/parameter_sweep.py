"""A parameter sweep fanned out over many points: a Rabi-like RY(theta) scan.

``sweep`` fans out one child job per angle; each child builds ``RY(theta)|0>``, transpiles
it for the backend's target, samples it (``Execute.sampler``) and turns its counts into
``<Z> = P(0) - P(1)``. ``collect`` receives the children's results in item order, fits the
curve ``A cos(theta) + B``, compares every point with the exact ``<Z> = cos(theta)`` (the
error should be shot noise, ``sqrt(sin^2(theta) / shots)``), and saves a plot.

Run it:

    qlayer run examples/parameter_sweep.py --wait
    qlayer run examples/parameter_sweep.py --arg points=101 --arg shots=4000 --wait
    qlayer run examples/parameter_sweep.py --backend fake_manila_v2 --wait   # with noise
    qlayer files <job-id>            # sweep.png

Result: ``{"points", "thetas", "values", "exact", "max_abs_error_vs_exact",
"max_error_in_sigmas", "fit", ...}``.
"""

from __future__ import annotations

import math
from typing import Any

from qlayer import Done, Execute, FanOut, Param, StageContext, Workflow

wf = Workflow(
    "parameter_sweep",
    params={
        "points": Param(int, 61, "number of angles from theta_min to theta_max"),
        "theta_min": Param(float, 0.0, "first angle (radians)"),
        "theta_max": Param(float, 2 * math.pi, "last angle (radians)"),
        "shots": Param(int, 2000, "shots per point"),
        "seed": Param(int, 5, "simulator seed of the first point (point i uses seed + i)"),
    },
    backend="aer",
)


def rabi_circuit(theta: float) -> Any:
    """``RY(theta)`` on one qubit, then a measurement: ``<Z> = cos(theta)``.

    Args:
        theta: The rotation angle in radians.

    Returns:
        A ``QuantumCircuit`` with a ``meas`` register.
    """
    from qiskit import QuantumCircuit

    circuit = QuantumCircuit(1, name="rabi")
    circuit.ry(theta, 0)
    circuit.measure_all()
    return circuit


def z_expectation(counts: dict[str, int]) -> float:
    """``<Z> = P(0) - P(1)`` of a one-bit counts dictionary.

    Args:
        counts: Counts with keys ``"0"`` and ``"1"``.

    Returns:
        The estimated expectation value.
    """
    shots = sum(counts.values())
    return (counts.get("0", 0) - counts.get("1", 0)) / shots


def fit_cosine(thetas: list[float], values: list[float]) -> dict[str, float]:
    """Least-squares fit of ``A cos(theta) + B``.

    Args:
        thetas: Angles.
        values: Measured expectation values.

    Returns:
        ``{"amplitude": A, "offset": B}``.
    """
    import numpy as np

    design = np.column_stack([np.cos(thetas), np.ones(len(thetas))])
    (amplitude, offset), *_ = np.linalg.lstsq(design, np.asarray(values), rcond=None)
    return {"amplitude": float(amplitude), "offset": float(offset)}


@wf.stage()
def sweep(args: dict[str, Any], ctx: StageContext) -> FanOut:
    """Fan out one child job per angle.

    Args:
        args: The job's arguments.
        ctx: The stage context.

    Returns:
        The fan-out over the angles.
    """
    n = int(args["points"])
    if n < 2:
        raise ValueError(f"points must be at least 2, got {n}")
    lo, hi = float(args["theta_min"]), float(args["theta_max"])
    thetas = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    ctx.log.info("sweeping %d angles from %.4f to %.4f on %s", n, lo, hi, ctx.backend)
    return FanOut([{"theta": theta} for theta in thetas], stage="evaluate", then="collect")


@wf.stage()
def evaluate(item: dict[str, Any], ctx: StageContext) -> Execute:
    """A child: build and transpile the circuit for one angle and sample it.

    Args:
        item: ``{"theta": angle}``.
        ctx: The stage context (``ctx.index`` is the item's index).

    Returns:
        The sampler request.
    """
    theta = float(item["theta"])
    isa = ctx.pass_manager(optimization_level=1).run(rabi_circuit(theta))
    index = ctx.index or 0
    ctx.log.info("point %d: theta = %.4f", index, theta)
    return Execute.sampler(
        [isa],
        then="measured",
        shots=int(ctx.arguments["shots"]),
        seed=int(ctx.arguments["seed"]) + index,
        state={"theta": theta, "index": index},
    )


@wf.stage()
def measured(result: Any, ctx: StageContext) -> Done:
    """A child: turn its counts into ``<Z>``; this is the child's result.

    Args:
        result: The sampler's ``PrimitiveResult``.
        ctx: The stage context; ``ctx.state`` holds the angle.

    Returns:
        The child's result.
    """
    counts: dict[str, int] = result[0].data.meas.get_counts()
    value = z_expectation(counts)
    return Done({**ctx.state, "z": value, "shots": sum(counts.values())})


@wf.stage()
def collect(results: list[dict[str, Any]], ctx: StageContext) -> Done:
    """Check the children's values against ``cos(theta)``, fit the curve and plot it.

    Args:
        results: The children's results, in item order.
        ctx: The stage context.

    Returns:
        The job's result.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    indices = [r["index"] for r in results]
    if indices != list(range(len(results))):
        raise RuntimeError(f"fan-in out of order: {indices[:10]}...")
    thetas = np.array([r["theta"] for r in results])
    values = np.array([r["z"] for r in results])
    shots = np.array([r["shots"] for r in results])
    exact = np.cos(thetas)
    errors = np.abs(values - exact)
    # binomial shot noise of P(0) - P(1); floored so that theta = 0 or pi is not 0
    sigma = np.sqrt(np.maximum(1 - exact**2, 1 / shots) / shots)
    in_sigmas = errors / sigma
    fit = fit_cosine(thetas.tolist(), values.tolist())
    ctx.log.info(
        "collected %d points: max |<Z> - cos(theta)| = %.4f (%.2f sigma), rms %.4f",
        len(results),
        errors.max(),
        in_sigmas.max(),
        math.sqrt(float(np.mean(errors**2))),
    )
    ctx.log.info("fit: <Z> = %.4f cos(theta) + %.4f", fit["amplitude"], fit["offset"])

    fig, ax = plt.subplots(figsize=(7, 4))
    grid = np.linspace(thetas.min(), thetas.max(), 400)
    ax.plot(grid, np.cos(grid), color="tab:grey", label="exact cos(θ)")
    ax.plot(
        grid,
        fit["amplitude"] * np.cos(grid) + fit["offset"],
        color="tab:orange",
        linestyle="--",
        label=f"fit {fit['amplitude']:.3f} cos(θ) + {fit['offset']:.3f}",
    )
    ax.errorbar(
        thetas,
        values,
        yerr=sigma,
        fmt=".",
        color="tab:blue",
        label=f"measured ({int(shots[0])} shots)",
    )
    ax.set_xlabel("θ (rad)")
    ax.set_ylabel("⟨Z⟩")
    ax.set_title(f"RY(θ) sweep on {ctx.backend}: {len(results)} points")
    ax.legend(loc="lower left")
    ctx.save_figure("sweep.png", fig)
    plt.close(fig)

    return Done(
        {
            "points": len(results),
            "thetas": thetas.tolist(),
            "values": values.tolist(),
            "exact": exact.tolist(),
            "max_abs_error_vs_exact": float(errors.max()),
            "rms_error_vs_exact": math.sqrt(float(np.mean(errors**2))),
            "max_error_in_sigmas": float(in_sigmas.max()),
            "shots": int(shots[0]),
            "fit": fit,
        }
    )
