"""Benchmark program: a chain of trivial stages (per-stage overhead, throughput)."""

from qlayer import Done, Next, Workflow

wf = Workflow("bench_chain", params={"length": 10})


@wf.stage()
def step(data, ctx):
    """Pass a counter along until the chain is as long as asked."""
    count = data.get("count", 0) + 1 if isinstance(data, dict) and "count" in data else 1
    if count >= ctx.arguments["length"]:
        return Done({"count": count})
    return Next("step", {"count": count})
