"""Stages that go wrong in every way a test needs, picked by argument ``mode``."""

import os
import time
from pathlib import Path

from qiskit import QuantumCircuit

from qlayer import Done, Execute, FanOut, Next, Workflow

wf = Workflow("faulty", params={"mode": "ok", "markers": "", "n": 1}, backend="aer")


def wait_for_go(ctx):
    folder = Path(ctx.arguments["markers"])
    (folder / f"{ctx.job_id}.{ctx.stage}.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not ((folder / f"{ctx.job_id}.go").exists() or (folder / "go").exists()):
        if time.monotonic() > deadline:
            raise TimeoutError("never got its go file")
        time.sleep(0.02)


class Opaque:
    """Not something the codec knows how to store."""


@wf.stage()
def start(args, ctx):
    mode = args["mode"]
    if mode == "ok":
        return Done({"n": args["n"]})
    if mode == "raise":
        raise ValueError(f"boom {args['n']} went the stage")
    if mode == "raise_empty":
        raise ValueError()
    if mode == "next_nope":
        return Next("nope", {})
    if mode == "execute_nope":
        qc = QuantumCircuit(1)
        qc.measure_all()
        return Execute.sampler([qc], then="nope")
    if mode == "unserialisable":
        return {"thing": Opaque()}
    if mode == "too_large":
        qc = QuantumCircuit(60)
        for q in range(60):
            qc.rx(0.3, q)
        for q in range(59):
            qc.cx(q, q + 1)
        qc.measure_all()
        return Execute.sampler([qc], then="after", backend="aer_statevector")
    if mode == "backend_nope":
        qc = QuantumCircuit(1)
        qc.measure_all()
        return Execute.sampler([qc], then="after", backend="nope")
    if mode == "loop":
        return Next("looping", 0)
    if mode == "sleep":
        return Next("sleepy", 0)
    if mode == "memory":
        return Next("hungry", 0)
    if mode == "bulky":
        return Next("bulky", 0)
    if mode == "crash":
        os.kill(os.getpid(), 9)  # the worker dies, as a segfaulting extension would
    if mode == "fanout":
        return FanOut(list(range(args["n"])), stage="child", then="gather")
    if mode == "fanout_fail":
        return FanOut([-1, -2, 3, 4], stage="child", then="gather")
    if mode == "wait":
        wait_for_go(ctx)
        return Done({"waited": True})
    raise AssertionError(f"unknown mode {mode}")


@wf.stage(max_runs=3)
def looping(count):
    return Next("looping", count + 1)


@wf.stage(timeout_s=2)
def sleepy(data):
    time.sleep(60)
    return Done(data)


@wf.stage(memory_mb=300)
def hungry(data):
    import numpy as np

    big = np.ones(1024 * 1024 * 1024 // 8 * 2)  # 2 GiB, far past memory_mb
    return Done(float(big[0]))


@wf.stage()
def after(result):
    return Done("should not get here")


@wf.stage()
def child(item, ctx):
    markers = ctx.arguments["markers"]
    if markers:
        wait_for_go(ctx)
    if item < 0:
        raise RuntimeError(f"child item {item} failed")
    return Done({"item": item, "square": item * item})


@wf.stage()
def gather(results):
    return Done(sorted(r["square"] for r in results))


@wf.stage(memory_mb=1024)
def bulky(data):
    return Done(bytes(500 * 1024 * 1024))  # fits memory_mb; its encoding does not
