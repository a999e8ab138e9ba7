"""Load: many jobs submitted at once all finish, none lost or duplicated."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers
from helpers import TRIVIAL

from qlayer.status import JobStatus

N_JOBS = 200


@pytest.fixture
def client(tmp_path):
    yield from helpers.local_client(tmp_path / "home")


@pytest.mark.slow
def test_200_jobs_at_once(client):
    jobs = [client.run(TRIVIAL, {"x": i}) for i in range(N_JOBS)]
    assert len({job.job_id for job in jobs}) == N_JOBS

    for i, job in enumerate(jobs):
        assert job.result(timeout=240) == {"x": i, "double": 2 * i}

    with helpers.db(client) as conn:
        statuses = Counter(row[0] for row in conn.execute("SELECT status FROM jobs"))
        steps = conn.execute(
            "SELECT job_id, seq, kind, state, attempts FROM steps ORDER BY job_id, seq"
        ).fetchall()
        duplicates = conn.execute(
            "SELECT job_id, seq, COUNT(*) FROM steps GROUP BY job_id, seq HAVING COUNT(*) > 1"
        ).fetchall()
        started = Counter(
            row[0] for row in conn.execute("SELECT job_id FROM events WHERE event = 'started'")
        )
        done_events = Counter(
            row[0] for row in conn.execute("SELECT job_id FROM events WHERE event = 'done'")
        )
    assert statuses == {"DONE": N_JOBS}
    assert not duplicates
    assert len(steps) == N_JOBS
    assert all(
        (s["seq"], s["kind"], s["state"], s["attempts"]) == (0, "stage", "done", 1) for s in steps
    )
    assert set(started) == {job.job_id for job in jobs} and set(started.values()) == {1}
    assert set(done_events) == {job.job_id for job in jobs} and set(done_events.values()) == {1}
    assert {job.job_id for job in client.jobs(limit=1000)} == {job.job_id for job in jobs}
    assert all(job.status() == JobStatus.DONE for job in jobs)


SUBMITTER = """
import sys
from qlayer.client import Client
client = Client.local(home=sys.argv[1], workers=2)
for i in range(int(sys.argv[2]), int(sys.argv[3])):
    print(client.run(sys.argv[4], {"x": i}).job_id, i, flush=True)
"""


@pytest.mark.slow
def test_200_jobs_from_4_processes_with_a_daemon_crash(client, tmp_path):
    import subprocess

    client.up()
    script = tmp_path / "submit.py"
    script.write_text(SUBMITTER)
    per = N_JOBS // 4
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(client.home.root),
                str(k * per),
                str((k + 1) * per),
                str(TRIVIAL),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    # Crash the daemon while the submissions pour in and jobs run.
    helpers.wait_for(lambda: client.jobs(limit=1000, status="DONE"), 60, "some jobs to finish")
    helpers.kill_daemon(client)
    at_crash = len(client.jobs(limit=1000))
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    submitted = dict(line.split() for out in outputs for line in out.splitlines())
    assert len(submitted) == N_JOBS
    print(f"{at_crash} jobs submitted when the daemon was killed")
    client.up()

    for job_id, i in submitted.items():
        assert client.job(job_id).result(timeout=240) == {"x": int(i), "double": 2 * int(i)}
    with helpers.db(client) as conn:
        statuses = Counter(row[0] for row in conn.execute("SELECT status FROM jobs"))
        duplicates = conn.execute(
            "SELECT job_id, seq, COUNT(*) FROM steps GROUP BY job_id, seq HAVING COUNT(*) > 1"
        ).fetchall()
        done_events = Counter(
            row[0] for row in conn.execute("SELECT job_id FROM events WHERE event = 'done'")
        )
        steps = conn.execute("SELECT COUNT(*) FROM steps WHERE state = 'done'").fetchone()[0]
    assert statuses == {"DONE": N_JOBS}
    assert not duplicates
    assert steps == N_JOBS
    assert set(done_events) == set(submitted) and set(done_events.values()) == {1}
