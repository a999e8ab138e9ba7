"""A Bell pair for a device: transpiled in a Batch stage for the job's backend, then counted.

The Batch stage reads the device's Target (``ctx.pass_manager``) and returns Execute to
the job's backend (an ``ibm_*`` device here), so the Batch container needs the provider's
credentials: the stack's secret.
"""

from qiskit import QuantumCircuit

from qlayer import Done, Execute, Workflow

wf = Workflow("aws_isa", params={"shots": 200, "mode": ""}, backend="ibm_brisbane")


@wf.stage(compute="batch", timeout_s=600)
def build(args, ctx):
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    isa = ctx.pass_manager(optimization_level=1).run(qc)
    ctx.log.info("transpiled for %s: %d qubits", ctx.backend, isa.num_qubits)
    mode = args["mode"] or None  # "": decided by qlayer (one request: a job)
    return Execute.sampler([isa], then="count", shots=args["shots"], state=args["shots"], mode=mode)


@wf.stage()
def count(result, ctx):
    counts = result[0].data.meas.get_counts()
    return Done({"counts": counts, "shots": ctx.state})
