"""Sample a Bell pair on an IBM device through the runtime service of the job."""

from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import SamplerV2
from qiskit_serverless import get_arguments, get_runtime_service, save_result, update_status

arguments = get_arguments()
service = get_runtime_service()
backend = service.backend(arguments["backend_name"])

update_status("OPTIMIZING_HARDWARE")
bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
bell.measure_all()
isa = generate_preset_pass_manager(optimization_level=1, backend=backend, seed_transpiler=3).run(
    bell
)

update_status("EXECUTING_QPU")
job = SamplerV2(mode=backend).run([isa], shots=arguments.get("shots", 100))
print("runtime job", job.job_id(), flush=True)
counts = job.result()[0].data.meas.get_counts()

update_status("POST_PROCESSING")
save_result({"runtime_job": job.job_id(), "shots": sum(counts.values())})
