"""Bell pairs for a device, fanned out: transpiled once in a Batch stage, then one child job
per circuit, each returning Execute to the job's backend (an ``ibm_*`` device here).

The items of a fan-out share one runtime batch (qlayer's default for a fan-out item), which
is closed when this job ends.
"""

from qiskit import QuantumCircuit

from qlayer import Done, Execute, FanOut, Workflow

wf = Workflow("aws_isa_fan", params={"shots": 50, "items": 2}, backend="ibm_brisbane")


@wf.stage(compute="batch", timeout_s=600)
def build(args, ctx):
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    isa = ctx.pass_manager(optimization_level=1).run(qc)
    return FanOut([isa] * args["items"], stage="run", then="gather")


@wf.stage()
def run(circuit, ctx):
    return Execute.sampler([circuit], then="count", shots=ctx.arguments["shots"])


@wf.stage()
def count(result, ctx):
    return Done(result[0].data.meas.get_counts())


@wf.stage()
def gather(results, ctx):
    return Done({"counts": results})
