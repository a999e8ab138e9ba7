"""The resource planner: method and tier from qubits, noise and memory."""

from __future__ import annotations

import pytest
from qiskit import QuantumCircuit
from qiskit.circuit.library import QuantumVolume

from qlayer.errors import PlannerError
from qlayer.planner import Resources, memory_mb, plan, summarise
from qlayer.providers.base import BackendInfo

IDEAL = BackendInfo("aer", "aer", "simulator", None)
STATEVECTOR = BackendInfo("aer_statevector", "aer", "simulator", None, method="statevector")
DEVICE = BackendInfo("fake_brisbane", "aer", "qpu", 127, noisy=True)
CLOUD = Resources()


def ghz(n: int) -> QuantumCircuit:
    qc = QuantumCircuit(n)
    qc.h(0)
    for i in range(n - 1):
        qc.cx(i, i + 1)
    qc.measure_all()
    return qc


def qv(n: int) -> QuantumCircuit:
    return QuantumVolume(n, depth=4, seed=1).decompose()


def test_summary_counts_active_qubits_only():
    qc = QuantumCircuit(127)
    qc.h(3)
    qc.cx(3, 90)
    load = summarise([qc], 100)
    assert load.qubits == 2
    assert load.clifford is True
    assert load.shots == 100


def test_parameter_sets_count_as_executions():
    import numpy as np
    from qiskit.circuit import Parameter

    qc = QuantumCircuit(1)
    qc.ry(Parameter("t"), 0)
    load = summarise([(qc, np.zeros((7, 1)))], None)
    assert load.executions == 7
    assert load.clifford is False


def test_clifford_circuits_go_to_the_stabilizer_method():
    chosen = plan(IDEAL, summarise([ghz(200)], None), CLOUD)
    assert chosen.method == "stabilizer"
    assert chosen.tier == "lambda"


def test_small_circuits_fit_lambda_and_big_ones_go_to_batch_then_gpu():
    assert plan(IDEAL, summarise([qv(10)], None), CLOUD).tier == "lambda"
    assert plan(STATEVECTOR, summarise([qv(30)], None), CLOUD).tier == "batch-gpu"
    assert plan(STATEVECTOR, summarise([qv(33)], None), CLOUD).tier == "batch"


def test_devices_go_to_the_qpu_tier_and_width_is_checked():
    assert plan(DEVICE, summarise([ghz(5)], None), CLOUD).tier == "qpu"
    qc = QuantumCircuit(130)
    qc.h(range(130))
    with pytest.raises(PlannerError, match="uses 130 qubits but fake_brisbane has 127"):
        plan(DEVICE, summarise([qc], None), CLOUD)


def test_impossible_requests_fail_at_once_with_what_they_need():
    with pytest.raises(PlannerError, match="no tier can serve it") as info:
        plan(STATEVECTOR, summarise([qv(60)], None), CLOUD)
    assert "aer_mps" in str(info.value)


def test_local_limit_is_the_machine():
    local = Resources(local_memory_mb=4096)
    assert plan(IDEAL, summarise([qv(12)], None), local).tier == "local"
    with pytest.raises(PlannerError, match=r"this machine offers 4.0 GiB"):
        plan(STATEVECTOR, summarise([qv(30)], None), local)


def test_memory_grows_with_method():
    assert (
        memory_mb("statevector", 30)
        > memory_mb("matrix_product_state", 30)
        > memory_mb("stabilizer", 30)
    )
    assert memory_mb("density_matrix", 15) > memory_mb("statevector", 15)


def test_mps_time_estimate_is_finite_and_the_plan_says_why():
    from qlayer.planner import Workload, seconds

    load = Workload(qubits=40, depth=10, gates=400, clifford=False, executions=1, shots=1024)
    estimate = seconds("matrix_product_state", load)
    assert estimate < 1e6, estimate  # chi = 2**10 at most: chi**3 per gate, not 2**(10**3)
    chosen = plan(IDEAL, load, CLOUD)
    assert chosen.method == "matrix_product_state"
    assert "too many for a statevector" in chosen.reason


#: GPU memory per GPU (GiB) of the GPU instance types the stack deploys by default.
DEPLOYED_GPU_GIB = {"g5.xlarge (A10G)": 24, "p4d.24xlarge (A100)": 40}


@pytest.mark.parametrize(
    ("instance", "qubits", "tier"),
    [
        ("g5.xlarge (A10G)", 30, "batch-gpu"),
        ("g5.xlarge (A10G)", 31, "batch"),
        ("p4d.24xlarge (A100)", 31, "batch-gpu"),
        ("p4d.24xlarge (A100)", 32, "batch"),
    ],
)
def test_a_statevector_goes_to_the_gpu_only_where_it_fits(instance, qubits, tier):
    """31 qubits (~36 GiB with working space) fit an A100 40 GiB, not an A10G 24 GiB."""
    limits = Resources(gpu_memory_mb=DEPLOYED_GPU_GIB[instance] * 1024)
    assert plan(STATEVECTOR, summarise([qv(qubits)], None), limits).tier == tier


def test_the_default_gpu_limit_is_the_smallest_gpu_of_the_queue():
    """The default queue mixes g5 (A10G 24 GiB) and p4d (A100 40 GiB): a job may land on
    either, so a 31-qubit statevector must not be sent to the GPU queue."""
    assert Resources().gpu_memory_mb == 24 * 1024
    assert plan(STATEVECTOR, summarise([qv(31)], None), CLOUD).tier == "batch"


def test_an_environment_runs_on_lambda_while_it_fits_the_stage_runners_tmp() -> None:
    """Archive and files at once (while unpacking), beside what the runner keeps in /tmp."""
    from qlayer.planner import LAMBDA_TMP_RESERVE_MB, env_on_lambda

    default = Resources()  # stage_tmp_mb=2048
    room = default.stage_tmp_mb - LAMBDA_TMP_RESERVE_MB
    assert env_on_lambda(5, 2, default) is None  # pendulum: a few MB
    assert env_on_lambda(room - 100, 100, default) is None
    reason = env_on_lambda(room - 100, 101, default)
    assert reason is not None and "run on Batch" in reason and "stage_tmp_mb=2048" in reason
    assert env_on_lambda(3000, 900, Resources(stage_tmp_mb=10240)) is None
