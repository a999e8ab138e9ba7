"""Execute on a (fake) QPU service, for the dispatcher's tests: prepare -> execute -> measure.

Arguments: ``side`` (a file each stage appends ``start``/``end`` lines to, as in chain.py),
``executes`` (how many execute rounds, each its own provider job), ``shots``, and
``fanout`` (> 0: fan out that many children, each running one execute round).
"""

import os

from qiskit import QuantumCircuit

from qlayer import Done, Execute, FanOut, Workflow

wf = Workflow(
    "qpu_chain",
    params={"side": "", "executes": 1, "shots": 32, "fanout": 0},
    backend="fakeqpu_ok",
)


def note(ctx, what):
    side = ctx.arguments["side"]
    if side:
        fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{what} {ctx.job_id} {ctx.seq} {ctx.stage}\n".encode())
        finally:
            os.close(fd)


def bell(round_):
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.rz(0.1 * round_, 1)
    qc.measure_all()
    return qc


@wf.stage()
def prepare(args, ctx):
    note(ctx, "start")
    if ctx.arguments["fanout"] and ctx.index is None:
        note(ctx, "end")
        return FanOut(list(range(ctx.arguments["fanout"])), stage="prepare", then="gather")
    execute = Execute.sampler(
        [bell(0)],
        then="measure",
        shots=ctx.arguments["shots"],
        seed=11,
        state={"round": 0, "totals": []},
    )
    note(ctx, "end")
    return execute


@wf.stage()
def measure(result, ctx):
    note(ctx, "start")
    counts = result[0].data.meas.get_counts()
    totals = [*ctx.state["totals"], sum(counts.values())]
    assert set(counts) <= {"00", "11"}, counts  # a Bell pair: the fake ran the real circuit
    round_ = ctx.state["round"] + 1
    note(ctx, "end")
    if round_ < ctx.arguments["executes"]:
        return Execute.sampler(
            [bell(round_)],
            then="measure",
            shots=ctx.arguments["shots"],
            seed=11,
            state={"round": round_, "totals": totals},
        )
    return Done({"totals": totals, "job": ctx.job_id})


@wf.stage()
def gather(results):
    return Done({"children": len(results), "totals": [r["totals"] for r in results]})
