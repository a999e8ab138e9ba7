"""Notifications of job ends: one signed webhook call per finished job, across a daemon kill.

A webhook receiver on 127.0.0.1 records every call; the receiver can be told to fail
(503) to exercise the retries.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers
from helpers import CHAIN, FAULTY, TRIVIAL, wait_for

from qlayer import notify
from qlayer.errors import JobFailed
from qlayer.status import JobStatus


class Receiver:
    """A webhook receiver on 127.0.0.1: every call kept; ``failing`` answers 503."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.failing = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = not receiver.failing
                receiver.calls.append(
                    {
                        "body": body,
                        "json": json.loads(body),
                        "signature": self.headers["X-Qlayer-Signature"],
                        "delivery": self.headers["X-Qlayer-Delivery"],
                        "answered": 200 if ok else 503,
                    }
                )
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?key=s3cret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self, job_id: str) -> list[dict]:
        return [c for c in self.calls if c["json"]["job_id"] == job_id and c["answered"] == 200]


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.server.shutdown()


@pytest.fixture
def client(tmp_path):
    yield from helpers.local_client(tmp_path / "home")


def test_each_end_is_notified_once_signed(client, receiver):
    done = client.run(TRIVIAL, {"x": 2}, notify=[receiver.url])
    failed = client.run(FAULTY, {"mode": "raise", "n": 1}, notify=receiver.url)
    assert done.result(timeout=120) == {"x": 2, "double": 4}
    with pytest.raises(JobFailed):
        failed.result(timeout=120)
    for job in (done, failed):
        wait_for(lambda job=job: receiver.delivered(job.job_id), what=f"{job.job_id} notified")
    token = client.home.token()
    for job, status in ((done, "DONE"), (failed, "ERROR")):
        [call] = receiver.delivered(job.job_id)
        assert call["json"]["status"] == status
        assert call["delivery"] == f"{job.job_id}:{status}"
        assert notify.verify(token, call["body"], call["signature"])
        events = [e for e in job.timeline() if e["event"] == "notified"]
        assert events and "s3cret" not in json.dumps(events)  # the URL's query never shown
    assert len(receiver.calls) == 2
    assert (client.home.token_file.stat().st_mode & 0o777) == 0o600


def test_a_failing_receiver_is_retried_without_holding_the_job(client, receiver):
    receiver.failing = True
    job = client.run(TRIVIAL, {"x": 1}, notify=[receiver.url])
    assert job.result(timeout=120) == {"x": 1, "double": 2}  # the job ends regardless
    wait_for(lambda: len(receiver.calls) >= 2, what="two failed tries")
    receiver.failing = False
    wait_for(lambda: receiver.delivered(job.job_id), timeout=60, what="a delivery after retries")
    assert len(receiver.delivered(job.job_id)) == 1
    assert job.status() == JobStatus.DONE


@pytest.mark.slow
def test_exactly_one_call_per_finished_job_across_a_daemon_kill(client, receiver, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    side = tmp_path / "side.log"
    args = {"side": str(side), "markers": str(markers), "wait_at": "measure"}
    # The quick jobs first: once both chains hold the two workers in "measure" (waiting
    # for the go file), a quick job still queued could not run until the kill.
    quick = [client.run(TRIVIAL, {"x": i}, notify=[receiver.url]) for i in range(3)]
    for job in quick:
        job.result(timeout=120)
    # Two workers: two stages held mid-run when the daemon dies.
    jobs = [client.run(CHAIN, args, notify=[receiver.url]) for _ in range(2)]
    for job in jobs:
        helpers.wait_file(markers / f"{job.job_id}.measure.started", "measure to start")
    # The quick jobs' notifications may or may not have gone out when the daemon dies.
    helpers.kill_daemon(client)
    (markers / "go").touch()
    client.up()
    for job in jobs:
        assert job.result(timeout=120)["ok"] is True
    for job in [*jobs, *quick]:
        wait_for(lambda job=job: receiver.delivered(job.job_id), what=f"{job.job_id} notified")
    # Every outbox row delivered (a duplicate would come before its row is marked).
    helpers.wait_for(
        lambda: all(
            row[0] == "delivered"
            for row in helpers.db(client).execute("SELECT state FROM notifications")
        ),
        what="the outbox drained",
    )
    for job in [*jobs, *quick]:
        assert len(receiver.delivered(job.job_id)) == 1, job.job_id
