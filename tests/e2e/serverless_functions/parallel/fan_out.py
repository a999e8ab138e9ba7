"""Sample GHZ states of several sizes in parallel Ray tasks (the 0.37 way to fan out)."""

import ray
from qiskit import QuantumCircuit
from qiskit.primitives import StatevectorSampler
from qiskit_serverless import get_arguments, save_result


@ray.remote
def sample(size: int, shots: int) -> dict:
    circuit = QuantumCircuit(size)
    circuit.h(0)
    for q in range(size - 1):
        circuit.cx(q, q + 1)
    circuit.measure_all()
    return (
        StatevectorSampler(seed=size).run([circuit], shots=shots).result()[0].data.meas.get_counts()
    )


arguments = get_arguments()
sizes = arguments.get("sizes", [2, 3])
counts = ray.get([sample.remote(size, arguments.get("shots", 100)) for size in sizes])
save_result({"counts": counts, "sizes": sizes})
