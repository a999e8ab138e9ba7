"""Benchmark program: map → transpile → execute → post-process, the shape of a real job."""

from qiskit import QuantumCircuit

from qlayer import Done, Execute, Workflow

wf = Workflow("bench_four_stage", params={"qubits": 5, "circuits": 1, "shots": 1000})


def ghz(n: int) -> QuantumCircuit:
    circuit = QuantumCircuit(n)
    circuit.h(0)
    for i in range(n - 1):
        circuit.cx(i, i + 1)
    circuit.measure_all()
    return circuit


@wf.stage()
def build(args):
    """Map: one GHZ circuit per requested circuit."""
    return [ghz(args["qubits"]) for _ in range(args["circuits"])]


@wf.stage()
def optimise(circuits, ctx):
    """Transpile for the backend's target."""
    isa = ctx.pass_manager(optimization_level=1).run(circuits)
    return Execute.sampler(isa, then="count", shots=ctx.arguments["shots"], seed=11)


@wf.stage()
def count(result, ctx):
    """Post-process: the probability of the two GHZ outcomes."""
    total = good = 0
    for pub in result:
        counts = pub.data.meas.get_counts()
        n = pub.data.meas.num_bits
        total += sum(counts.values())
        good += counts.get("0" * n, 0) + counts.get("1" * n, 0)
    return Done({"p_ghz": good / total, "circuits": len(result)})
