"""A notebook's calls against a deployed stack's gateway, with the real qiskit-serverless client.

Run with the client's own Python (qiskit-serverless 0.37 and its pins):
``python serverless_notebook.py HOST TOKEN FUNCTIONS_DIR OUT.json`` (or ``--in-process
FUNCTIONS_DIR OUT.json``: the function by the library alone). The same calls a user
makes against any Qiskit Serverless gateway; only ``host`` (the stack's ``GatewayUrl``)
and ``token`` (its secret) say it is qlayer on AWS. Writes what it saw as JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from qiskit import QuantumCircuit
from qiskit_serverless import QiskitFunction, ServerlessClient
from qiskit_serverless.serializers.program_serializers import QiskitObjectsEncoder


def ghz(n: int) -> QuantumCircuit:
    circuit = QuantumCircuit(n)
    circuit.h(0)
    for q in range(n - 1):
        circuit.cx(q, q + 1)
    circuit.measure_all()
    return circuit


#: The arguments of the "mapped" function (tests/e2e/serverless_functions/arguments).
MAPPED_ARGUMENTS = {"circuit": ghz(3), "backend_name": "fake_manila", "shots": 300, "label": "ghz3"}


def wait(job, limit_s: float = 300.0) -> str:
    started = time.monotonic()
    while not job.in_terminal_state():
        if time.monotonic() - started > limit_s:
            raise TimeoutError(f"{job} still {job.status()}")
        time.sleep(0.5)
    return str(job.status())


def main(host: str, token: str, functions: Path, out: Path) -> None:
    seen: dict = {}
    client = ServerlessClient(host=host, token=token, channel="local")
    client.upload(
        QiskitFunction(
            title="mapped",
            entrypoint="transpile_and_sample.py",
            working_dir=str(functions / "arguments"),
        )
    )
    seen["functions"] = sorted(f.title for f in client.functions())
    job = client.function("mapped").run(**MAPPED_ARGUMENTS)
    seen["status"] = wait(job)
    seen["result"] = job.result()
    seen["logs"] = job.logs()
    seen["provider_logs"] = job.provider_logs()
    seen["again"] = client.job(job.job_id).result()  # a past job, from its id alone
    seen["listed"] = [j.job_id for j in client.jobs(limit=20)]
    seen["job_id"] = job.job_id

    # files: a user's upload, listed, downloaded byte for byte, deleted
    mapped = client.function("mapped")
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "weights.bin"
        data.write_bytes(bytes(range(256)) * 64)
        client.file_upload(str(data), mapped)
        seen["files"] = client.files(mapped)
        back = Path(scratch) / "back"
        back.mkdir()
        name = client.file_download("weights.bin", mapped, download_location=str(back))
        seen["same_bytes"] = (back / name).read_bytes() == data.read_bytes()
    seen["deleted"] = client.file_delete("weights.bin", mapped)
    seen["files_after"] = client.files(mapped)

    # a structured error, sent from inside the job through the API
    client.upload(
        QiskitFunction(title="fails", entrypoint="fails.py", working_dir=str(functions / "failing"))
    )
    failing = client.function("fails").run(limit=2)
    seen["fails_status"] = wait(failing)
    seen["error_events"] = [e.data for e in failing.events()]
    try:
        failing.result()
        seen["error"] = None
    except Exception as exc:  # the client raises QiskitServerlessException
        seen["error"] = f"{type(exc).__name__}: {exc}"

    # stop a running job: the client's stop() reaches the job's execution
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "slow.py").write_text(SLOW)
        client.upload(QiskitFunction(title="slow", entrypoint="slow.py", working_dir=scratch))
    slow = client.function("slow").run()
    started = time.monotonic()
    while slow.status() != "RUNNING: MAPPING":
        if time.monotonic() - started > 240 or slow.in_terminal_state():
            raise TimeoutError(f"slow job: {slow.status()}")
        time.sleep(0.5)
    while "programs with a job token" not in slow.logs():  # the job's lines reach its logs
        if time.monotonic() - started > 240:
            raise TimeoutError(f"slow job logs: {slow.logs()}")
        time.sleep(0.5)
    # The request the client's stop() sends. With channel="local", 0.37's stop() itself
    # fails before sending it: it json-encodes a QiskitRuntimeLocalService, which its
    # encoder cannot (TypeError), so the call is made here as the client would make it.
    import requests
    from qiskit_serverless.utils.http import get_headers

    answer = requests.post(
        f"{host.rstrip('/')}/api/v1/jobs/{slow.job_id}/stop/",
        json={"service": "null"},
        headers=get_headers(token=token, channel="local"),
        timeout=30,
    )
    answer.raise_for_status()
    seen["stop"] = answer.json()["message"]
    seen["stopped_status"] = wait(slow, 60)
    seen["slow_logs"] = slow.logs()
    seen["slow_job_id"] = slow.job_id
    out.write_text(json.dumps(seen, cls=QiskitObjectsEncoder))


#: A function that reads its own job with its job token (what the cancel wind-down asks),
#: tries a user route with it, reports MAPPING, then runs until it is stopped.
SLOW = """
import os, time, requests
from qiskit_serverless import update_status
host, job = os.environ["ENV_JOB_GATEWAY_HOST"], os.environ["ENV_JOB_ID_GATEWAY"]
auth = {"Authorization": "Bearer " + os.environ["ENV_JOB_GATEWAY_TOKEN"]}
me = requests.get(f"{host}/api/v1/jobs/{job}/", headers=auth, timeout=30)
print("own status", me.status_code, me.json().get("status"), me.json().get("cancel_requested"))
user = requests.get(f"{host}/api/v1/programs/", headers=auth, timeout=30)
print("programs with a job token", user.status_code, flush=True)
update_status("MAPPING")
for second in range(300):  # on S3, printed lines reach the logs when the next one comes
    print("still mapping", second, flush=True)
    time.sleep(1)
"""


def in_process(functions: Path, out: Path) -> None:
    """The same function run by the library alone (no gateway): its saved result."""
    import os
    import runpy

    with tempfile.TemporaryDirectory() as scratch:
        arguments, results = Path(scratch) / "arguments.json", Path(scratch) / "results.json"
        arguments.write_text(json.dumps(MAPPED_ARGUMENTS, cls=QiskitObjectsEncoder))
        os.environ.update(ARGUMENTS_PATH=str(arguments), RESULTS_PATH=str(results))
        os.chdir(functions / "arguments")
        sys.path.insert(0, str(functions / "arguments"))
        runpy.run_path("transpile_and_sample.py", run_name="__main__")
        out.write_text(json.dumps({"result": json.loads(results.read_text())}))


if __name__ == "__main__":
    if sys.argv[1] == "--in-process":
        in_process(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
