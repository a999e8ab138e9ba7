"""Benchmark program: imports qiskit at top level (submit latency)."""

import qiskit  # noqa: F401

from qlayer import Done, Workflow

wf = Workflow("bench_qiskit_top", params={"x": 0})


@wf.stage()
def only(args):
    """Its argument back."""
    return Done(args["x"])
