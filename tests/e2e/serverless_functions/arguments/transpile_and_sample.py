"""Take a circuit and a fake device's name, map it to the device, sample it."""

from qiskit import QuantumCircuit
from qiskit.primitives import StatevectorSampler
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime.fake_provider import FakeProviderForBackendV2
from qiskit_serverless import (
    get_arguments,
    get_logger,
    get_provider_logger,
    save_result,
    update_status,
)

log = get_logger()
private = get_provider_logger()

arguments = get_arguments()
circuit = arguments["circuit"]
if not isinstance(circuit, QuantumCircuit):
    raise ValueError("'circuit' must be a QuantumCircuit")
shots = int(arguments.get("shots", 200))

update_status("MAPPING")
backend = FakeProviderForBackendV2().backend(arguments["backend_name"])
log.info("mapping %d qubits onto %s", circuit.num_qubits, backend.name)
private.info("provider-only note: %s", backend.name)

update_status("OPTIMIZING_HARDWARE")
isa = generate_preset_pass_manager(optimization_level=1, backend=backend, seed_transpiler=5).run(
    circuit
)

update_status("EXECUTING_QPU")
counts = StatevectorSampler(seed=3).run([circuit], shots=shots).result()[0].data.meas.get_counts()

update_status("POST_PROCESSING")
save_result(
    {
        "counts": counts,
        "isa_ops": sum(isa.count_ops().values()) > 0,
        "label": arguments.get("label"),
    }
)
log.info("done")
