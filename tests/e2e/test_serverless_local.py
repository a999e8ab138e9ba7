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

    # the same jobs in qlayer's own terms: sub-statuses became stages in the timeline
    client = Client.local(served.home, autostart=False)
    mapped = client.job(seen["job_ids"]["mapped"])
    stages = [e["stage"] for e in mapped.timeline() if e["event"] == "sub-status"]
    assert stages == ["MAPPING", "OPTIMIZING_FOR_HARDWARE", "EXECUTING_QPU", "POST_PROCESSING"]
    assert mapped.info()["status"] == "DONE"
