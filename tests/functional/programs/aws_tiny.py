"""A tiny program for the AWS handler tests: build -> execute (Bell, sampler) -> tally.

``fan`` > 0 fans out ``square`` over ``range(fan)`` first; ``fail_at`` names a stage
that raises. ``compute`` puts ``tally`` on another tier (``batch``).
"""

from qiskit import QuantumCircuit

from qlayer import Done, Execute, FanOut, Workflow

wf = Workflow("aws_tiny", params={"shots": 64, "fan": 0, "fail_at": ""}, backend="aer")


@wf.stage()
def build(args, ctx):
    if args["fail_at"] == "build":
        raise ValueError("build failed on purpose")
    ctx.log.info("building a Bell pair")
    print("hello from build")
    ctx.save_file("note.txt", "a saved file")
    if args["fan"]:
        return FanOut(list(range(args["fan"])), stage="square", then="gather")
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return Execute.sampler(
        [qc], then="tally", shots=args["shots"], seed=7, state={"shots": args["shots"]}
    )


@wf.stage()
def square(item, ctx):
    if ctx.arguments["fail_at"] == "square" and item == 1:
        raise RuntimeError(f"item {item} failed on purpose")
    return Done(item * item)


@wf.stage()
def gather(results, ctx):
    return Done({"squares": results})


@wf.stage(compute="lambda")
def tally(result, ctx):
    counts = result[0].data.meas.get_counts()
    return Done({"counts": counts, "shots": ctx.state["shots"], "run": ctx.run})
