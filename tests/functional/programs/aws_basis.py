"""The basis state |k> on a device (the job's backend: an ``ibm_*`` device here), sampled.

Transpiled on Lambda (the stage runner reads the provider secret for the device's Target);
unseeded unless ``seed`` >= 0, so small requests of several jobs may share one provider job.
"""

from qiskit import QuantumCircuit

from qlayer import Done, Execute, Workflow

wf = Workflow("aws_basis", params={"k": 0, "shots": 100, "seed": -1}, backend="ibm_brisbane")


@wf.stage()
def build(args, ctx):
    circuit = QuantumCircuit(3)
    for qubit in range(3):
        if args["k"] >> qubit & 1:
            circuit.x(qubit)
    circuit.measure_all()
    isa = ctx.pass_manager(optimization_level=1).run(circuit)
    seed = None if args["seed"] < 0 else args["seed"]
    return Execute.sampler([isa], shots=args["shots"], then="count", seed=seed)


@wf.stage()
def count(result, ctx):
    counts = result[0].data.meas.get_counts()
    return Done({"counts": counts, "coalesced": int(result.metadata.get("coalesced", 1))})
