"""BraketProvider: LocalSimulator offline end to end; the AWS path through stubbed boto3 clients.

The AWS clients are real botocore clients with ``botocore.stub.Stubber`` attached: every
request is checked against the Braket/S3 API models and answered locally, so no test
reaches AWS (the Stubber raises on any call it was not told to expect).
"""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("braket")
pytest.importorskip("qiskit_braket_provider")

from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.primitives import PrimitiveResult
from qiskit.quantum_info import SparsePauliOp

from qlayer.providers.base import ProviderError
from qlayer.providers.braket import BraketLocalProvider, BraketProvider, classify
from qlayer.request import ExecuteRequest

SV1 = "arn:aws:braket:::device/quantum-simulator/amazon/sv1"
TASK = "arn:aws:braket:us-east-1:123456789012:quantum-task/11111111-2222-3333-4444-555555555555"


def ghz(n=3):
    circuit = QuantumCircuit(n)
    circuit.h(0)
    for i in range(n - 1):
        circuit.cx(i, i + 1)
    return circuit


def test_local_simulator_ghz_counts():
    provider = BraketLocalProvider()
    request = ExecuteRequest(
        "sampler", [ghz().measure_all(inplace=False)], "braket_local", "n", shots=300
    )
    result = provider.run("braket_local", request)
    assert isinstance(result, PrimitiveResult)
    counts = result[0].data.meas.get_counts()
    assert set(counts) <= {"000", "111"} and sum(counts.values()) == 300
    assert min(counts.values()) > 90


def test_local_simulator_registers_parameters_and_partial_measurement():
    theta = Parameter("t")
    circuit = QuantumCircuit(2, 2)
    circuit.rx(theta, 0)
    circuit.measure(0, 1)  # qubit 0 into clbit 1; clbit 0 never written
    provider = BraketLocalProvider()
    request = ExecuteRequest(
        "sampler", [(circuit, [[0.0], [3.141592653589793]])], "braket_local", "n", shots=50
    )
    result = provider.run("braket_local", request)
    data = result[0].data.c
    assert data.shape == (2,) and data.num_shots == 50
    assert data[0].get_counts() == {"00": 50} and data[1].get_counts() == {"10": 50}


def test_local_simulator_estimator_values():
    a = Parameter("a")
    circuit = QuantumCircuit(2)
    circuit.ry(a, 0)
    circuit.cx(0, 1)
    observable = SparsePauliOp(["ZZ", "XX", "IZ", "II"], [1.0, 0.5, 1.0, 0.25])
    provider = BraketLocalProvider()
    request = ExecuteRequest(
        "estimator",
        [(circuit, observable, [[0.0], [1.5707963267948966]])],
        "braket_local",
        "n",
        precision=0.02,
    )
    result = provider.run("braket_local", request)
    evs, stds = result[0].data.evs, result[0].data.stds
    assert evs.shape == (2,)
    # |00>: <ZZ>=1 <XX>=0 <IZ>=1 -> 2.25; Bell: <ZZ>=1 <XX>=1 <IZ>=0 -> 1.75
    assert evs[0] == pytest.approx(2.25, abs=0.1) and evs[1] == pytest.approx(1.75, abs=0.1)
    assert 0 <= stds[0] < 0.05 and result[0].metadata["shots"] == 2500


# ----------------------------------------------------------------------------- AWS path


@pytest.fixture
def aws():
    import botocore.session
    from botocore.stub import Stubber

    session = botocore.session.get_session()
    session.set_credentials("AKIDEXAMPLE", "secret")
    braket = session.create_client("braket", region_name="us-east-1")
    s3 = session.create_client("s3", region_name="us-east-1")
    with Stubber(braket) as braket_stub, Stubber(s3) as s3_stub:
        yield braket, s3, braket_stub, s3_stub
        braket_stub.assert_no_pending_responses()
        s3_stub.assert_no_pending_responses()


def provider_on(aws):
    braket, s3, _, _ = aws
    return BraketProvider(braket_client=braket, s3_client=s3, s3_folder=("qlayer-results", "runs"))


def task(status, **extra):
    return {
        "quantumTaskArn": TASK,
        "status": status,
        "deviceArn": SV1,
        "deviceParameters": "{}",
        "shots": 100,
        "outputS3Bucket": "qlayer-results",
        "outputS3Directory": "runs/tasks/t1",
        "createdAt": "2026-01-01T00:00:00Z",
        **extra,
    }


def manifest_key(key):
    return f"runs/manifests/{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"


def test_aws_submit_uses_client_token_tags_and_manifest(aws):
    from botocore.stub import ANY

    _, _, braket_stub, s3_stub = aws
    key = "job-9/2"
    s3_stub.add_client_error(
        "get_object",
        "NoSuchKey",
        http_status_code=404,
        expected_params={"Bucket": "qlayer-results", "Key": manifest_key(key)},
    )
    braket_stub.add_response(
        "create_quantum_task",
        {"quantumTaskArn": TASK},
        {
            "action": ANY,
            "clientToken": hashlib.sha256(f"{key}#0".encode()).hexdigest(),
            "deviceArn": SV1,
            "outputS3Bucket": "qlayer-results",
            "outputS3KeyPrefix": "runs/tasks",
            "shots": 100,
            "tags": {"qlayer-key": key, "qlayer-run": "0"},
        },
    )
    s3_stub.add_response(
        "put_object",
        {},
        {
            "Bucket": "qlayer-results",
            "Key": manifest_key(key),
            "Body": ANY,
            "ContentType": "application/json",
        },
    )
    provider = provider_on(aws)
    request = ExecuteRequest(
        "sampler", [ghz().measure_all(inplace=False)], "braket_sv1", "n", shots=100
    )
    job_id = provider.submit("braket_sv1", request, idempotency_key=key)
    assert job_id == f"s3://qlayer-results/{manifest_key(key)}"
    # Same key again: found, nothing created.
    assert provider.submit("braket_sv1", request, idempotency_key=key) == job_id


def _manifest_body(key):
    from qlayer.providers.braket import expand

    _, _, recipe = expand(
        ExecuteRequest("sampler", [ghz().measure_all(inplace=False)], "braket_sv1", "n", shots=2)
    )
    body = {
        "key": key,
        "backend": "braket_sv1",
        "device_arn": SV1,
        "tasks": [TASK],
        "recipe": recipe,
    }
    return json.dumps(body).encode()


def _stream(data: bytes):
    import io

    from botocore.response import StreamingBody

    return StreamingBody(io.BytesIO(data), len(data))


def test_aws_redelivery_in_a_fresh_process_finds_the_manifest(aws):
    _, _, _braket_stub, s3_stub = aws
    key = "job-9/2"
    s3_stub.add_response(
        "get_object",
        {"Body": _stream(_manifest_body(key))},
        {"Bucket": "qlayer-results", "Key": manifest_key(key)},
    )
    request = ExecuteRequest(
        "sampler", [ghz().measure_all(inplace=False)], "braket_sv1", "n", shots=2
    )
    job_id = provider_on(aws).submit("braket_sv1", request, idempotency_key=key)
    assert job_id.endswith(manifest_key(key))  # no create_quantum_task was stubbed: none happened


def test_aws_status_result_and_cancel(aws):
    _, _, braket_stub, s3_stub = aws
    key = "job-9/2"
    job_id = f"s3://qlayer-results/{manifest_key(key)}"
    s3_stub.add_response(
        "get_object",
        {"Body": _stream(_manifest_body(key))},
        {"Bucket": "qlayer-results", "Key": manifest_key(key)},
    )
    braket_stub.add_response(
        "get_quantum_task",
        task("QUEUED", queueInfo={"queue": "QUANTUM_TASKS_QUEUE", "position": "4"}),
        {"quantumTaskArn": TASK, "additionalAttributeNames": ["QueueInfo"]},
    )
    braket_stub.add_response("get_quantum_task", task("QUEUED"), {"quantumTaskArn": TASK})
    braket_stub.add_response(
        "cancel_quantum_task",
        {"quantumTaskArn": TASK, "cancellationStatus": "CANCELLING"},
        {
            "quantumTaskArn": TASK,
            "clientToken": hashlib.sha256(f"cancel#{TASK}".encode()).hexdigest(),
        },
    )
    braket_stub.add_response("get_quantum_task", task("COMPLETED"), {"quantumTaskArn": TASK})
    results = {
        "braketSchemaHeader": {"name": "braket.task_result.gate_model_task_result", "version": "1"},
        "measurements": [[0, 0, 0], [1, 1, 1]],
        "measuredQubits": [0, 1, 2],
        "taskMetadata": {
            "braketSchemaHeader": {"name": "braket.task_result.task_metadata", "version": "1"},
            "id": TASK,
            "shots": 2,
            "deviceId": SV1,
        },
        "additionalMetadata": {
            "action": {
                "braketSchemaHeader": {"name": "braket.ir.openqasm.program", "version": "1"},
                "source": "OPENQASM 3.0;",
            }
        },
    }
    s3_stub.add_response(
        "get_object",
        {"Body": _stream(json.dumps(results).encode())},
        {"Bucket": "qlayer-results", "Key": "runs/tasks/t1/results.json"},
    )
    provider = provider_on(aws)
    status = provider.status(job_id)
    assert status.state == "QUEUED" and status.queue_position == 4
    provider.cancel(job_id)
    result = provider.result(job_id)
    assert result[0].data.meas.get_counts() == {"000": 1, "111": 1}


def test_aws_errors_are_classified(aws):
    braket, _, braket_stub, _ = aws
    braket_stub.add_client_error("get_quantum_task", "ThrottlingException", "Rate exceeded", 429)
    braket_stub.add_client_error(
        "get_quantum_task", "ValidationException", "shots must be <= 100000", 400
    )
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as first:
        braket.get_quantum_task(quantumTaskArn=TASK)
    assert classify(first.value, "poll").retryable
    with pytest.raises(ClientError) as second:
        braket.get_quantum_task(quantumTaskArn=TASK)
    error = classify(second.value, "submit")
    assert not error.retryable and "shots must be <= 100000" in str(error)
    from botocore.exceptions import EndpointConnectionError

    assert classify(EndpointConnectionError(endpoint_url="https://x"), "submit").retryable


def test_missing_s3_folder_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("QLAYER_BRAKET_S3", raising=False)
    with pytest.raises(ProviderError, match="QLAYER_BRAKET_S3"):
        BraketProvider(braket_client=object(), s3_client=object()).find_job("braket_sv1", "k")


def test_registry_routes_braket_names():
    from qlayer.providers import registry

    info = registry.resolve("braket_local")
    assert (info.provider, info.kind) == ("braket", "simulator")
    assert registry.resolve("braket_ionq_aria").kind == "qpu"
    assert registry.resolve(SV1).provider == "braket"
    listed = {b.name: b.to_json() for b in registry.known_backends()}
    assert (
        listed["braket_sv1"]["max_concurrency"] == 35 and listed["braket_sv1"]["reachable"] is None
    )
    assert not registry.is_remote("braket_local")  # Braket's simulator on our own compute
    assert registry.is_remote("braket_sv1")
    result = registry.sync_provider("braket_local").run(
        "braket_local",
        ExecuteRequest(
            "sampler", [ghz(2).measure_all(inplace=False)], "braket_local", "n", shots=20
        ),
    )
    assert sum(result[0].data.meas.get_counts().values()) == 20


def _create_params(key, index, **extra):
    from botocore.stub import ANY

    return {
        "action": ANY,
        "clientToken": hashlib.sha256(f"{key}#{index}".encode()).hexdigest(),
        "deviceArn": SV1,
        "outputS3Bucket": "qlayer-results",
        "outputS3KeyPrefix": "runs/tasks",
        "shots": 100,
        "tags": {"qlayer-key": key, "qlayer-run": str(index)},
        **extra,
    }


def _no_manifest(s3_stub, key):
    s3_stub.add_client_error(
        "get_object",
        "NoSuchKey",
        http_status_code=404,
        expected_params={"Bucket": "qlayer-results", "Key": manifest_key(key)},
    )


def _put_manifest(s3_stub, key):
    from botocore.stub import ANY

    s3_stub.add_response(
        "put_object",
        {},
        {"Bucket": "qlayer-results", "Key": manifest_key(key), "Body": ANY, "ContentType": ANY},
    )


def test_a_reservation_arn_reaches_every_task(aws):
    """Braket Direct: ``options["braket"]["reservation_arn"]`` goes with each task."""
    _, _, braket_stub, s3_stub = aws
    key, reservation = "job-r/1", "arn:aws:braket:us-east-1:123456789012:reservation/abc"
    _no_manifest(s3_stub, key)
    association = [{"arn": reservation, "type": "RESERVATION_TIME_WINDOW_ARN"}]
    braket_stub.add_response(
        "create_quantum_task",
        {"quantumTaskArn": TASK},
        _create_params(key, 0, associations=association),
    )
    _put_manifest(s3_stub, key)
    request = ExecuteRequest(
        "sampler",
        [ghz().measure_all(inplace=False)],
        "braket_sv1",
        "n",
        shots=100,
        options={"braket": {"reservation_arn": reservation}},
    )
    provider_on(aws).submit("braket_sv1", request, idempotency_key=key)


def test_a_takeover_finds_the_tasks_by_tag_when_the_manifest_is_missing(aws):
    """The submitter died after CreateQuantumTask and before writing the manifest: the
    next claim's find_job finds the task by its qlayer-key tag, and submit writes the
    manifest around it instead of creating another task."""
    from botocore.stub import ANY

    _, _, braket_stub, s3_stub = aws
    key = "job-t/1"
    _no_manifest(s3_stub, key)  # find_job: no manifest...
    summary = {k: v for k, v in task("QUEUED").items() if k != "deviceParameters"}
    braket_stub.add_response(  # ...so the device's recent tasks, by tag
        "search_quantum_tasks",
        {
            "quantumTasks": [
                {**summary, "quantumTaskArn": TASK.replace("1111", "9999"), "tags": {}},
                {**summary, "tags": {"qlayer-key": key, "qlayer-run": "0"}},
            ]
        },
        {"filters": ANY, "maxResults": 100},
    )
    _no_manifest(s3_stub, key)  # submit: still no manifest
    _put_manifest(s3_stub, key)  # written around the found task; no create_quantum_task
    provider = provider_on(aws)
    request = ExecuteRequest(
        "sampler", [ghz().measure_all(inplace=False)], "braket_sv1", "n", shots=100
    )
    assert provider.find_job("braket_sv1", key) is None
    job_id = provider.submit("braket_sv1", request, idempotency_key=key)
    assert provider._read_manifest(job_id)["tasks"] == [TASK]  # type: ignore[index]


class _Recording:
    """Braket's LocalSimulator, noting what each ``run`` was given."""

    def __init__(self):
        from braket.devices import LocalSimulator

        self.simulator = LocalSimulator()
        self.properties = self.simulator.properties
        self.runs = []

    def run(self, program, shots):
        self.runs.append((type(program).__name__, shots))
        return self.simulator.run(program, shots=shots)


def test_several_circuits_run_as_one_program_set_where_the_device_has_them():
    """A request of three circuits (a PUB with two parameter sets, and a GHZ) with equal
    shots is one program-set task on the LocalSimulator, and its results come back apart."""
    theta = Parameter("t")
    flip = QuantumCircuit(1)
    flip.rx(theta, 0)
    flip.measure_all()
    simulator = _Recording()
    request = ExecuteRequest(
        "sampler",
        [(flip, [[0.0], [3.141592653589793]]), ghz().measure_all(inplace=False)],
        "braket_local",
        "n",
        shots=40,
    )
    result = BraketLocalProvider(simulator=simulator).run("braket_local", request)
    assert simulator.runs == [("ProgramSet", 120)]
    flips = result[0].data.meas
    assert flips.shape == (2,) and flips[0].get_counts() == {"0": 40}
    assert flips[1].get_counts() == {"1": 40}
    assert set(result[1].data.meas.get_counts()) <= {"000", "111"}


def test_unequal_shots_run_circuit_by_circuit():
    simulator = _Recording()
    request = ExecuteRequest(
        "sampler",
        [(ghz().measure_all(inplace=False), None, 30), ghz(2).measure_all(inplace=False)],
        "braket_local",
        "n",
        shots=20,
    )
    result = BraketLocalProvider(simulator=simulator).run("braket_local", request)
    assert [shots for _, shots in simulator.runs] == [30, 20]
    assert result[0].data.meas.num_shots == 30 and result[1].data.meas.num_shots == 20
