"""One trivial stage, for load tests."""

from qlayer import Workflow

wf = Workflow("trivial", params={"x": 0})


@wf.stage()
def double(args):
    return {"x": args["x"], "double": args["x"] * 2}
