"""Qiskit Serverless on the local substrate: the real client against ``qlayer serve``.

The functions in ``serverless_functions/`` are written as Qiskit Serverless users write
theirs; the client is ``qiskit-serverless==0.37.0`` in its own virtual environment
(``tests/support/serverless_envs.py``), talking HTTP to ``qlayer serve`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers
from serverless_envs import client_python, overlay_folder

from qlayer.client import Client

FUNCTIONS = Path(__file__).resolve().parent / "serverless_functions"
NOTEBOOK = FUNCTIONS / "notebook.py"
REPO = Path(__file__).resolve().parents[2]


class Served:
    def __init__(self, url: str, token: str, home: Path, process: subprocess.Popen[str]) -> None:
        self.url, self.token, self.home, self.process = url, token, home, process


def start_gateway(home: Path, *, port: int = 0) -> Served:
    env = dict(os.environ, QLAYER_HOME=str(home), QLAYER_SERVERLESS_OVERLAY=str(overlay_folder()))
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "qlayer.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    url = token = None
    for line in process.stdout:
        if m := re.match(r"qlayer serverless gateway: (\S+)", line):
            url = m.group(1)
        if m := re.match(r"token: (\S+)", line):
            token = m.group(1)
        if url and token:
            break
    if not (url and token):
        process.kill()
        raise AssertionError("qlayer serve did not start")
    return Served(url, token, home, process)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("qs") / "home"
    # The daemon, with its own teardown (stray workers too); the server starts jobs on it.
    clients = helpers.local_client(home, workers=2)
    client = next(clients)
    client.up()
    gateway = start_gateway(home)
    try:
        yield gateway
    finally:
        gateway.process.send_signal(signal.SIGINT)
        try:
            gateway.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
        next(clients, None)


def scratch_of(job_id: str) -> list[Path]:
    """The scratch folders a job's function attempts left behind."""
    return list(Path(tempfile.gettempdir()).glob(f"qlayer-qs-{job_id}-*"))


def notebook(*args: str, tmp_path: Path) -> dict:
    out = tmp_path / "seen.json"
    done = subprocess.run(
        [str(client_python()), str(NOTEBOOK), *args, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QLAYER_HOME")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_real_client_runs_functions_unchanged_and_matches_in_process(served, tmp_path):
    seen = notebook(served.url, served.token, str(FUNCTIONS), tmp_path=tmp_path)
    alone = notebook("--in-process", str(FUNCTIONS), tmp_path=tmp_path)

    assert seen["statuses"] == {
        "bell": "DONE",
        "mapped": "DONE",
        "totals": "DONE",
        "produce": "DONE",
        "consume": "DONE",
        "fails": "ERROR",
        "bad_argument": "ERROR",
        "runner_raises": "ERROR",
    }
    for title in ("bell", "mapped", "totals"):
        assert seen["results"][title] == alone["results"][title], title
    assert seen["results"]["bell"]["qubits"] == 2
    assert seen["results"]["totals"] == {"total": 10, "count": 4}
    assert seen["again"] == seen["results"]["mapped"]
    assert set(seen["job_ids"].values()) <= set(seen["listed"])
    assert {"bell", "mapped", "totals"} <= set(seen["functions"])
    # public and private log streams
    assert "mapping 3 qubits onto fake_manila" in seen["logs"]
    assert "provider-only note" not in seen["logs"]
    assert "provider-only note" in seen["provider_logs"]
    # DATA_PATH: a job's file is kept; the user's uploads reach the job; delete works
    assert "report.tar.gz" in seen["produce_files"]
    assert seen["results"]["consume"] == {
        "text": "written in a job",
        "notes": "uploaded by the user",
    }
    assert seen["consume_files"] == ["report.tar.gz"]
    # a structured error: the event, and the client's exception names it
    assert seen["error_events"][0]["code"] == "E_LIMIT"
    assert "limit 2 is below the minimum of 5" in seen["error"]
    assert seen["error"].startswith("QiskitServerlessException")
    assert "'circuit' must be a QuantumCircuit" in seen["plain_error"]
    assert [e["exception"] for e in seen["runner_events"]] == ["TypeError"]

    # the same jobs in qlayer's own terms: sub-statuses became stages in the timeline
    client = Client.local(served.home, autostart=False)
    mapped = client.job(seen["job_ids"]["mapped"])
    stages = [e["stage"] for e in mapped.timeline() if e["event"] == "sub-status"]
    assert stages == ["MAPPING", "OPTIMIZING_FOR_HARDWARE", "EXECUTING_QPU", "POST_PROCESSING"]
    assert mapped.info()["status"] == "DONE"
    # error events became the job's structured error
    failed = client.jobstore.get(seen["runner_job"])
    assert failed.error_type == "TypeError"
    assert "unsupported operand" in (failed.message or "")


@pytest.mark.slow
def test_serve_binds_loopback_by_default_and_refuses_other_tokens(served):
    import urllib.error
    import urllib.request

    assert served.url.startswith("http://127.0.0.1:")
    for token in ("wrong", served.token + "x", ""):
        request = urllib.request.Request(
            served.url + "/api/v1/programs/", headers={"Authorization": f"Bearer {token}"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401
    request = urllib.request.Request(
        served.url + "/api/v1/programs/", headers={"Authorization": f"Bearer {served.token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


@pytest.mark.slow
def test_a_killed_and_resumed_function_submits_one_runtime_job_per_call(served, tmp_path):
    from tests.fakes.ibm_runtime import serve_in_process

    client = Client.local(served.home, autostart=False)
    with serve_in_process(tmp_path / "ibm") as fake:
        account = fake.credentials()
        env = {
            **fake.client_env(),
            "QISKIT_IBM_CHANNEL": account["channel"],
            "QISKIT_IBM_INSTANCE": account["instance"],
            "QISKIT_IBM_TOKEN": account["token"],
            "QISKIT_IBM_URL": account["url"],
        }
        (tmp_path / "env.json").write_text(json.dumps(env))
        fake.hold_next("Queued")  # the first run waits on its job; it is killed meanwhile
        started = notebook(
            "--start-on-ibm",
            served.url,
            served.token,
            str(FUNCTIONS),
            str(tmp_path / "env.json"),
            tmp_path=tmp_path,
        )
        job_id = started["job_id"]
        helpers.wait_for(lambda: fake.job_creations() == 1, 180, "the function to submit")
        held = fake.store.jobs()[0][0]["id"]
        helpers.wait_for(
            lambda: held in client.jobstore.get(job_id).provider_job_ids,
            60,
            "the runtime job to be registered",
        )
        daemon = client.daemon_pid()
        assert daemon is not None
        helpers.kill_hard(daemon)  # the worker and the function's process die with it
        helpers.wait_for(lambda: not helpers.alive(daemon), 30, "the daemon to die")
        client.up()
        fake.release(held)
        seen = notebook("--finish-on-ibm", served.url, served.token, job_id, tmp_path=tmp_path)

    assert seen["status"] == "DONE", seen
    assert seen["result"] == {"runtime_job": held, "shots": 100}
    assert fake.job_creations() == 1
    assert seen["runtime_jobs"] == [held]
    events = [e["event"] for e in client.job(job_id).timeline()]
    assert "recovered after restart" in events
    assert client.jobstore.get(job_id).provider_job_ids == [held]
    assert not scratch_of(job_id), "an attempt left its scratch folder"


@pytest.mark.slow
def test_cancel_reaches_the_functions_runtime_jobs(served, tmp_path):
    from tests.fakes.ibm_runtime import serve_in_process

    client = Client.local(served.home, autostart=False)
    with serve_in_process(tmp_path / "ibm") as fake:
        account = fake.credentials()
        env = {
            **fake.client_env(),
            "QISKIT_IBM_CHANNEL": account["channel"],
            "QISKIT_IBM_INSTANCE": account["instance"],
            "QISKIT_IBM_TOKEN": account["token"],
            "QISKIT_IBM_URL": account["url"],
        }
        (tmp_path / "env.json").write_text(json.dumps(env))
        fake.hold_next("Running")
        started = notebook(
            "--start-on-ibm",
            served.url,
            served.token,
            str(FUNCTIONS),
            str(tmp_path / "env.json"),
            tmp_path=tmp_path,
        )
        job_id = started["job_id"]
        helpers.wait_for(lambda: fake.job_creations() == 1, 180, "the function to submit")
        held = fake.store.jobs()[0][0]["id"]
        helpers.wait_for(
            lambda: held in client.jobstore.get(job_id).provider_job_ids,
            60,
            "the runtime job to be registered",
        )
        assert client.job(job_id).cancel()  # what `qlayer cancel` does
        helpers.wait_for(
            lambda: fake.store.job(held)["status"] == "Cancelled",
            60,
            "the runtime job to be cancelled",
        )
    assert client.job(job_id).status().value == "CANCELLED"
    assert fake.job_creations() == 1
    helpers.wait_for(lambda: not scratch_of(job_id), 30, "the function's scratch to go")


@pytest.mark.slow
def test_a_function_with_ray_tasks_runs_on_a_local_ray(served, tmp_path):
    from serverless_envs import ray_folder

    (tmp_path / "ray.json").write_text(json.dumps({"PYTHONPATH": str(ray_folder())}))
    seen = notebook(
        "--ray",
        served.url,
        served.token,
        str(FUNCTIONS),
        str(tmp_path / "ray.json"),
        tmp_path=tmp_path,
    )
    assert seen["status"] == "DONE", seen
    assert seen["result"]["sizes"] == [2, 3]
    two, three = seen["result"]["counts"]
    assert set(two) <= {"00", "11"} and sum(two.values()) == 100
    assert set(three) <= {"000", "111"} and sum(three.values()) == 100


@pytest.mark.slow
def test_a_function_with_dependencies_gets_its_environment_built_once(served, tmp_path):
    seen = notebook("--dependencies", served.url, served.token, str(FUNCTIONS), tmp_path=tmp_path)
    assert seen["functions"]["next-month"] == ["pendulum==3.0.0"]
    first, second = seen["first"], seen["second"]
    assert first["status"] == "DONE", first
    assert first["result"]["day"] == "2026-02-28" and first["result"]["version"] == "3.0.0"
    assert second["status"] == "DONE" and second["result"]["day"] == "2026-04-30"
    # imported from the function's environment, under the home, not qlayer's own
    client = Client.local(served.home, autostart=False)
    env = client.jobstore.get(first["id"]).env
    assert env and first["result"]["file"].startswith(str(served.home / "envs" / env / "site"))
    assert client.jobstore.get(second["id"]).env == env
    timeline = lambda job_id: [e["event"] for e in client.job(job_id).timeline()]  # noqa: E731
    assert "building environment" in timeline(first["id"])
    assert "building environment" not in timeline(second["id"])  # built once
    # while it builds the client sees INITIALIZING (PENDING), never a failed request
    assert set(seen["statuses"]) <= {"QUEUED", "INITIALIZING", "RUNNING", "DONE"}
    # a dependency the environments refuse: the upload fails with the reason
    assert seen["refused"].startswith("QiskitServerlessException")
    assert "direct reference" in seen["refused"]
    assert "from-url" not in seen["after"]
