"""A job with something for each part of the dashboard: a plot, an execute, a fan-out.

``prepare`` saves a PNG (written by hand: matplotlib is not needed) and an SVG, then runs
one sampler call; ``spread`` fans out ``items`` children; ``gather`` sums them. A stage
named in ``wait_at`` writes ``<markers>/<job>.<stage>.started`` and waits until
``<markers>/<job>.<stage>.go`` exists, so a test can watch the timeline advance one stage
at a time, or cancel the job while a stage runs.
"""

import os
import struct
import time
import zlib
from pathlib import Path

from qiskit import QuantumCircuit

from qlayer import Done, Execute, FanOut, Workflow

wf = Workflow(
    "dashboard",
    params={"markers": "", "wait_at": "", "items": 3, "shots": 64},
    backend="aer_statevector",
)


def handshake(ctx):
    markers = ctx.arguments["markers"]
    if not markers or ctx.stage not in ctx.arguments["wait_at"].split(","):
        return
    folder = Path(markers)
    ctx.log.info(f"{ctx.stage}: waiting for {ctx.job_id}.{ctx.stage}.go")
    (folder / f"{ctx.job_id}.{ctx.stage}.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (folder / f"{ctx.job_id}.{ctx.stage}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"stage {ctx.stage} of {ctx.job_id} never got its go file")
        time.sleep(0.02)
    ctx.log.info(f"{ctx.stage}: got the go file")


def png(width, height, rgb):
    """A solid-colour PNG, byte by byte."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="60">'
    '<rect width="120" height="60" fill="#2a6"/></svg>'
)


@wf.stage()
def prepare(args, ctx):
    ctx.log.info("prepare: saving plots")
    ctx.save_file("plots/histogram.png", png(160, 90, (40, 110, 220)))
    ctx.save_file("plots/shape.svg", SVG)
    handshake(ctx)
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return Execute.sampler([qc], then="spread", shots=args["shots"], seed=7)


@wf.stage()
def spread(result, ctx):
    counts = result[0].data.meas.get_counts()
    ctx.log.info(f"spread: counts {counts}")
    handshake(ctx)
    return FanOut(list(range(ctx.arguments["items"])), stage="square", then="gather")


@wf.stage()
def square(item, ctx):
    return Done(item * item)


@wf.stage()
def gather(squares, ctx):
    handshake(ctx)
    ctx.log.info(f"gather: {squares}")
    return Done({"squares": squares, "total": sum(squares)})
