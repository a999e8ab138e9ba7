"""Benchmark program: prepare the basis state |k> on a device and sample it."""

from qiskit import QuantumCircuit

from qlayer import Done, Execute, Workflow

wf = Workflow("basis_state", params={"k": 0, "shots": 100, "seed": -1}, backend="fake_manila_v2")


@wf.stage()
def build(args, ctx):
    """|k> on 5 qubits, transpiled for the device; seed -1 means unseeded."""
    circuit = QuantumCircuit(5)
    for qubit in range(5):
        if args["k"] >> qubit & 1:
            circuit.x(qubit)
    circuit.measure_all()
    isa = ctx.pass_manager(optimization_level=1).run(circuit)
    seed = None if args["seed"] < 0 else args["seed"]
    return Execute.sampler([isa], shots=args["shots"], then="count", seed=seed)


@wf.stage()
def count(result, ctx):
    """The counts, and how many requests shared the device run."""
    counts = result[0].data.meas.get_counts()
    return Done({"counts": counts, "coalesced": int(result.metadata.get("coalesced", 1))})
