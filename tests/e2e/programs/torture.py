"""The torture workload: seeded sweeps (fan-out), QAOA-like loops, coalescable runs.

Every result is deterministic: sweeps and loops are seeded, and the ``basis`` jobs
sample a basis state on a noiseless simulator (unseeded, so that queued ones share a
device run). Each stage appends ``start``/``end <job> <seq> <stage> <epoch s>`` to the
side file ``side``: a ``start`` after the step's outcome was recorded is a completed step
run again.
"""

import math
import os
import time

from qiskit import QuantumCircuit

from qlayer import Done, Execute, FanOut, Workflow

wf = Workflow(
    "torture",
    params={"mode": "sweep", "n": 4, "seed": 1, "iters": 4, "k": 0, "side": ""},
    backend="aer",
)


def note(ctx, what):
    if what == "start":
        time.sleep(0.1)  # a window for a kill to land mid-stage
    line = f"{what} {ctx.job_id} {ctx.seq} {ctx.stage} {time.time():.6f}\n"
    fd = os.open(ctx.arguments["side"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def ansatz(theta):
    qc = QuantumCircuit(3)
    for q in range(3):
        qc.rx(theta * (q + 1), q)
    qc.cx(0, 1)
    qc.cx(1, 2)
    qc.rz(theta / 2, 2)
    qc.measure_all()
    return qc


def basis(k):
    qc = QuantumCircuit(4)
    for q in range(4):
        if k >> q & 1:
            qc.x(q)
    qc.measure_all()
    return qc


def ones_fraction(result):
    counts = result[0].data.meas.get_counts()
    return sum(n * b.count("1") for b, n in counts.items()) / (3 * sum(counts.values()))


@wf.stage()
def start(args, ctx):
    note(ctx, "start")
    mode = args["mode"]
    if mode == "sweep":
        items = [{"theta": 0.4 * i, "seed": args["seed"] + i} for i in range(args["n"])]
        out = FanOut(items, stage="point", then="gather")
    elif mode == "loop":
        out = Execute.sampler(
            [ansatz(0.2)],
            shots=512,
            seed=args["seed"],
            then="step",
            state={"i": 0, "theta": 0.2, "history": []},
        )
    else:
        out = Execute.sampler([basis(args["k"])], shots=128, then="tally")
    note(ctx, "end")
    return out


@wf.stage()
def point(item, ctx):
    note(ctx, "start")
    out = Execute.sampler(
        [ansatz(item["theta"])], shots=256, seed=item["seed"], then="measured", state=item
    )
    note(ctx, "end")
    return out


@wf.stage()
def measured(result, ctx):
    note(ctx, "start")
    out = Done({"theta": ctx.state["theta"], "ones": ones_fraction(result)})
    note(ctx, "end")
    return out


@wf.stage()
def gather(results, ctx):
    note(ctx, "start")
    out = Done(results)
    note(ctx, "end")
    return out


@wf.stage(max_runs=50)
def step(result, ctx):
    note(ctx, "start")
    state = dict(ctx.state)
    ones = ones_fraction(result)
    state["history"] = [*state["history"], ones]
    state["theta"] = state["theta"] + 0.5 * (0.5 - ones) + 0.1 * math.sin(state["i"])
    state["i"] += 1
    if state["i"] >= ctx.arguments["iters"]:
        out = Done({"theta": state["theta"], "history": state["history"]})
    else:
        out = Execute.sampler(
            [ansatz(state["theta"])],
            shots=512,
            seed=ctx.arguments["seed"] + state["i"],
            then="step",
            state=state,
        )
    note(ctx, "end")
    return out


@wf.stage()
def tally(result, ctx):
    note(ctx, "start")
    counts = result[0].data.meas.get_counts()
    out = Done({"counts": counts, "coalesced": int(result.metadata.get("coalesced", 1))})
    note(ctx, "end")
    return out
