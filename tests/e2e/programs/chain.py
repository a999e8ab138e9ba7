"""A three-step chain for crash tests: prepare -> execute -> measure -> tally.

Every stage appends ``start <job> <seq> <stage>`` and ``end <job> <seq> <stage>`` to the
side file given as argument ``side``, so a test can prove that no completed stage ran
twice. A stage named in ``wait_at`` writes ``<markers>/<job>.<stage>.started`` and waits
until ``<markers>/go`` (or ``<markers>/<job>.go``) exists: a kill lands mid-stage for sure.
"""

import os
import time
from pathlib import Path

from qiskit import QuantumCircuit

from qlayer import Done, Execute, Workflow

wf = Workflow(
    "chain",
    params={"side": "", "markers": "", "wait_at": "", "qubits": 2, "layers": 1, "shots": 64},
    backend="aer_statevector",
)


def note(ctx, what):
    side = ctx.arguments["side"]
    if side:
        fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{what} {ctx.job_id} {ctx.seq} {ctx.stage}\n".encode())
        finally:
            os.close(fd)


def handshake(ctx):
    markers = ctx.arguments["markers"]
    if not markers or ctx.stage not in ctx.arguments["wait_at"].split(","):
        return
    folder = Path(markers)
    ctx.log.info("waiting for the go file")  # an attempt killed here keeps this line
    (folder / f"{ctx.job_id}.{ctx.stage}.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not ((folder / "go").exists() or (folder / f"{ctx.job_id}.go").exists()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"stage {ctx.stage} of {ctx.job_id} never got its go file")
        time.sleep(0.02)


def circuit(qubits, layers):
    qc = QuantumCircuit(qubits)
    for layer in range(layers):
        for q in range(qubits):
            qc.rx(0.1 * (q + 1) + layer, q)
        for q in range(qubits - 1):
            qc.cx(q, q + 1)
    qc.measure_all()
    return qc


@wf.stage()
def prepare(args, ctx):
    note(ctx, "start")
    handshake(ctx)
    execute = Execute.sampler(
        [circuit(args["qubits"], args["layers"])],
        then="measure",
        shots=args["shots"],
        seed=7,
        state={"shots": args["shots"]},
    )
    note(ctx, "end")
    return execute


@wf.stage()
def measure(result, ctx):
    note(ctx, "start")
    handshake(ctx)
    counts = result[0].data.meas.get_counts()
    total = sum(counts.values())
    note(ctx, "end")
    return {"total": total, "expected": ctx.state["shots"]}


@wf.stage()
def tally(data, ctx):
    note(ctx, "start")
    handshake(ctx)
    note(ctx, "end")
    return Done(
        {"ok": data["total"] == data["expected"], "total": data["total"], "job": ctx.job_id}
    )
