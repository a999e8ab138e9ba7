"""Sample a Bell pair on the reference sampler; no arguments."""

from qiskit import QuantumCircuit
from qiskit.primitives import StatevectorSampler
from qiskit_serverless import save_result
from shapes import bell

print("sampling a Bell pair")
circuit: QuantumCircuit = bell()
counts = StatevectorSampler(seed=11).run([circuit], shots=400).result()[0].data.meas.get_counts()
save_result({"counts": counts, "qubits": circuit.num_qubits})
print("saved", sorted(counts))
