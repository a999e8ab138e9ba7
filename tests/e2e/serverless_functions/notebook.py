"""What a user's notebook does against a gateway, with the real qiskit-serverless client.

Run with the client's own Python (qiskit-serverless 0.37 and its pins):
``python notebook.py HOST TOKEN FUNCTIONS_DIR OUT.json``. Prints nothing but errors;
writes what it saw as JSON for the test to check. ``python notebook.py --in-process
FUNCTIONS_DIR OUT.json`` runs the same functions with the library alone, no gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qiskit import QuantumCircuit
from qiskit_serverless.serializers.program_serializers import (
    QiskitObjectsDecoder,
    QiskitObjectsEncoder,
)


def ghz(n: int) -> QuantumCircuit:
    circuit = QuantumCircuit(n)
    circuit.h(0)
    for q in range(n - 1):
        circuit.cx(q, q + 1)
    circuit.measure_all()
    return circuit


#: (title, working dir, entrypoint, arguments)
RUNS = [
    ("bell", "sampling", "bell.py", {}),
    (
        "mapped",
        "arguments",
        "transpile_and_sample.py",
        {"circuit": ghz(3), "backend_name": "fake_manila", "shots": 300, "label": "ghz3"},
    ),
    ("totals", "runner", "runner.py", {"values": [1, 2, 3, 4]}),
]


def in_process(functions: Path, out: Path) -> None:
    results = {}
    for title, folder, entry, arguments in RUNS:
        with tempfile.TemporaryDirectory() as scratch:
            args_path = Path(scratch) / "arguments.json"
            args_path.write_text(json.dumps(arguments, cls=QiskitObjectsEncoder))
            results_path = Path(scratch) / "results.json"
            env = dict(
                os.environ,
                ARGUMENTS_PATH=str(args_path),
                RESULTS_PATH=str(results_path),
                DATA_PATH=str(Path(scratch) / "data"),
            )
            code = (
                "import runpy, sys\n"
                "ns = runpy.run_path(sys.argv[1], run_name='__main__')\n"
                "if ns.get('Runner') is not None:\n"
                "    from qiskit_serverless import get_arguments, save_result\n"
                "    save_result(ns['Runner']().run(get_arguments()))\n"
            )
            subprocess.run(
                [sys.executable, "-c", code, entry],
                cwd=functions / folder,
                env=env,
                check=True,
                capture_output=True,
            )
            results[title] = json.loads(results_path.read_text(), cls=QiskitObjectsDecoder)
    out.write_text(json.dumps({"results": results}))


def wait(job, limit_s: float = 240.0):
    started = time.monotonic()
    while not job.in_terminal_state():
        if time.monotonic() - started > limit_s:
            raise TimeoutError(f"{job} still {job.status()}")
        time.sleep(0.3)
    return job.status()


def against_gateway(host: str, token: str, functions: Path, out: Path) -> None:
    from qiskit_serverless import QiskitFunction, ServerlessClient

    seen: dict = {"results": {}, "statuses": {}}
    client = ServerlessClient(host=host, token=token, channel="local")
    for title, folder, entry, _ in RUNS:
        client.upload(
            QiskitFunction(title=title, entrypoint=entry, working_dir=str(functions / folder))
        )
    seen["functions"] = sorted(f.title for f in client.functions())
    jobs = {}
    for title, _, _, arguments in RUNS:
        function = client.function(title)
        jobs[title] = function.run(**arguments)
    for title, job in jobs.items():
        seen["statuses"][title] = wait(job)
        seen["results"][title] = job.result()
    mapped = jobs["mapped"]
    seen["logs"] = mapped.logs()
    seen["provider_logs"] = mapped.provider_logs()
    again = client.job(mapped.job_id)  # a past job, from its id alone
    seen["again"] = again.result()
    seen["listed"] = sorted(j.job_id for j in client.jobs(limit=50))
    seen["job_ids"] = {t: j.job_id for t, j in jobs.items()}

    # files: upload one, let a function write one, read both back
    client.upload(
        QiskitFunction(
            title="produce", entrypoint="produce.py", working_dir=str(functions / "files")
        )
    )
    client.upload(
        QiskitFunction(
            title="consume", entrypoint="consume.py", working_dir=str(functions / "files")
        )
    )
    produce, consume = client.function("produce"), client.function("consume")
    with tempfile.TemporaryDirectory() as scratch:
        notes = Path(scratch) / "notes.txt"
        notes.write_text("uploaded by the user")
        client.file_upload(str(notes), consume)
        client.file_upload(str(notes), produce)
    job = produce.run(text="written in a job")
    seen["statuses"]["produce"] = wait(job)
    seen["produce_files"] = client.files(produce)
    # consume reads the files of *its* function: copy produce's archive there through the client
    with tempfile.TemporaryDirectory() as scratch:
        name = client.file_download(
            "report.tar.gz", produce, target_name="report.tar.gz", download_location=scratch
        )
        client.file_upload(str(Path(scratch) / name), consume)
    job = consume.run()
    seen["statuses"]["consume"] = wait(job)
    seen["results"]["consume"] = job.result()
    seen["deleted"] = client.file_delete("notes.txt", consume)
    seen["consume_files"] = client.files(consume)

    # a structured error
    client.upload(
        QiskitFunction(title="fails", entrypoint="fails.py", working_dir=str(functions / "failing"))
    )
    job = client.function("fails").run(limit=2)
    seen["statuses"]["fails"] = wait(job)
    seen["error_events"] = [e.data for e in job.events()]
    try:
        job.result()
        seen["error"] = None
    except Exception as exc:  # the client raises QiskitServerlessException
        seen["error"] = f"{type(exc).__name__}: {exc}"
    # a Runner that raises: the gateway's template sends the error event for it
    job = client.function("totals").run(values=[1, "two"])
    seen["statuses"]["runner_raises"] = wait(job)
    seen["runner_events"] = [e.data for e in job.events()]
    seen["runner_job"] = job.job_id

    # an error without an event: the traceback's last line is the message
    job = client.function("mapped").run(circuit="not a circuit", backend_name="fake_manila")
    seen["statuses"]["bad_argument"] = wait(job)
    try:
        job.result()
        seen["plain_error"] = None
    except Exception as exc:
        seen["plain_error"] = f"{type(exc).__name__}: {exc}"
    out.write_text(json.dumps(seen, cls=QiskitObjectsEncoder))


def start_on_ibm(host: str, token: str, functions: Path, env_file: Path, out: Path) -> None:
    """Upload the runtime function with the IBM account in its env_vars; start one job."""
    from qiskit_serverless import QiskitFunction, ServerlessClient

    client = ServerlessClient(host=host, token=token, channel="local")
    env = json.loads(env_file.read_text())
    client.upload(
        QiskitFunction(
            title="on-ibm",
            entrypoint="sample_on_ibm.py",
            working_dir=str(functions / "runtime"),
            env_vars=env,
        )
    )
    job = client.function("on-ibm").run(backend_name="ibm_brisbane", shots=100)
    out.write_text(json.dumps({"job_id": job.job_id}))


def finish_on_ibm(host: str, token: str, job_id: str, out: Path) -> None:
    """Wait for the job from its id alone; what the client sees of it."""
    from qiskit_serverless import ServerlessClient

    client = ServerlessClient(host=host, token=token, channel="local")
    job = client.job(job_id)
    status = wait(job)
    out.write_text(
        json.dumps({"status": status, "result": job.result(), "runtime_jobs": job.runtime_jobs()})
    )


def with_ray(host: str, token: str, functions: Path, env_file: Path, out: Path) -> None:
    """Upload and run the function that fans out over Ray tasks."""
    from qiskit_serverless import QiskitFunction, ServerlessClient

    client = ServerlessClient(host=host, token=token, channel="local")
    client.upload(
        QiskitFunction(
            title="fan-out",
            entrypoint="fan_out.py",
            working_dir=str(functions / "parallel"),
            env_vars=json.loads(env_file.read_text()),
        )
    )
    job = client.function("fan-out").run(sizes=[2, 3], shots=100)
    status = wait(job, limit_s=400)
    result = job.result() if status == "DONE" else job.logs()[-3000:]
    out.write_text(json.dumps({"status": status, "result": result}))


def with_dependencies(host: str, token: str, functions: Path, out: Path) -> None:
    """A function with dependencies, run twice; then one whose dependency is refused."""
    from qiskit_serverless import QiskitFunction, ServerlessClient

    client = ServerlessClient(host=host, token=token, channel="local")
    client.upload(
        QiskitFunction(
            title="next-month",
            entrypoint="next_month.py",
            working_dir=str(functions / "dependencies"),
            dependencies=["pendulum==3.0.0"],
        )
    )
    seen: dict = {"functions": {f.title: f.dependencies for f in client.functions()}}
    function = client.function("next-month")
    first = function.run(day="2026-01-31")
    statuses = []
    while not first.in_terminal_state():
        statuses.append(first.status())
        time.sleep(0.3)
    seen["statuses"] = statuses
    seen["first"] = {"status": first.status(), "result": first.result(), "id": first.job_id}
    second = function.run(day="2026-03-31")
    seen["second"] = {"status": wait(second), "result": second.result(), "id": second.job_id}
    try:
        client.upload(
            QiskitFunction(
                title="from-url",
                entrypoint="next_month.py",
                working_dir=str(functions / "dependencies"),
                dependencies=["pendulum @ https://example.com/pendulum-3.0.0.whl"],
            )
        )
        seen["refused"] = None
    except Exception as exc:  # the client raises QiskitServerlessException
        seen["refused"] = f"{type(exc).__name__}: {exc}"
    seen["after"] = sorted(f.title for f in client.functions())
    out.write_text(json.dumps(seen))


if __name__ == "__main__":
    if sys.argv[1] == "--dependencies":
        with_dependencies(sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]))
    elif sys.argv[1] == "--ray":
        with_ray(sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]), Path(sys.argv[6]))
    elif sys.argv[1] == "--start-on-ibm":
        start_on_ibm(
            sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]), Path(sys.argv[6])
        )
    elif sys.argv[1] == "--finish-on-ibm":
        finish_on_ibm(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]))
    elif sys.argv[1] == "--in-process":
        in_process(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        against_gateway(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
