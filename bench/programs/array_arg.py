"""One stage that returns the sum of an array argument (for bench/array_argument.py)."""

import numpy as np

from qlayer import Done, Param, Workflow

wf = Workflow("array_arg", params={"weights": Param(np.ndarray, help="the array")})


@wf.stage()
def total(args):
    return Done({"sum": float(args["weights"].sum()), "n": int(args["weights"].size)})
