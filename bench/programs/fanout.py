"""Benchmark program: a fan-out of N trivial children, then one collect stage."""

from qlayer import Done, FanOut, Workflow

wf = Workflow("bench_fanout", params={"n": 1000})


@wf.stage()
def spread(args, ctx):
    """One child per item."""
    return FanOut(list(range(ctx.arguments["n"])), stage="child", then="collect")


@wf.stage()
def child(item):
    """A trivial child: its item back."""
    return Done(item)


@wf.stage()
def collect(results):
    """How many children answered."""
    return Done({"children": len(results)})
