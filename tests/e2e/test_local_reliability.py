"""Crash recovery of the local substrate, with real faults: SIGKILLed daemons and workers.

Each test proves that every job finishes, that no completed stage runs twice (the
programs log ``start``/``end`` lines to a side file) and that no execute request is
submitted twice (one ``device_jobs`` row per ``job_id/seq``, all DONE).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers
from helpers import CHAIN, FAULTY, wait_for

from qlayer import keys
from qlayer.errors import JobCancelled, JobFailed
from qlayer.status import JobStatus

CHAIN_STEPS = [(0, "prepare"), (2, "measure"), (3, "tally")]
SLOW_EXECUTE = {"qubits": 22, "layers": 12, "shots": 32}  # a couple of seconds of statevector


@pytest.fixture
def client(tmp_path):
    yield from helpers.local_client(tmp_path / "home")


@pytest.fixture
def side(tmp_path):
    return tmp_path / "side.log"


@pytest.fixture
def markers(tmp_path):
    folder = tmp_path / "markers"
    folder.mkdir()
    return folder


def chain_args(side: Path, markers: Path, wait_at: str = "", **extra):
    return {"side": str(side), "markers": str(markers), "wait_at": wait_at, **extra}


def assert_chain_done(client, jobs, side: Path) -> None:
    for job in jobs:
        result = job.result(timeout=120)
        assert result == {"ok": True, "total": result["total"], "job": job.job_id}
        assert job.status() == JobStatus.DONE
        rows = helpers.device_rows(client, job.job_id)
        assert [(r["idempotency_key"], r["status"]) for r in rows] == [
            (f"{job.job_id}/1", "DONE")
        ], rows
        steps = helpers.step_rows(client, job.job_id)
        assert [(s["seq"], s["kind"], s["state"]) for s in steps] == [
            (0, "stage", "done"),
            (1, "execute", "done"),
            (2, "stage", "done"),
            (3, "stage", "done"),
        ]
    helpers.assert_each_stage_completed_once(side, {job.job_id: CHAIN_STEPS for job in jobs})


def starts(side: Path, job_id: str, stage: str) -> int:
    return sum(
        1
        for what, job, _seq, name in helpers.read_side(side)
        if what == "start" and job == job_id and name == stage
    )


@pytest.mark.slow
def test_daemon_killed_mid_stage_resumes_every_job(client, side, markers):
    in_prepare = client.run(CHAIN, chain_args(side, markers, "prepare"))
    in_measure = client.run(CHAIN, chain_args(side, markers, "measure"))
    helpers.wait_file(markers / f"{in_prepare.job_id}.prepare.started", "prepare to start")
    helpers.wait_file(markers / f"{in_measure.job_id}.measure.started", "measure to start")

    helpers.kill_daemon(client)
    (markers / "go").touch()
    client.up()

    assert_chain_done(client, [in_prepare, in_measure], side)
    # The stages that had finished before the kill did not run again.
    assert starts(side, in_measure.job_id, "prepare") == 1
    # The interrupted ones ran again (start twice, end once).
    assert starts(side, in_prepare.job_id, "prepare") == 2
    assert starts(side, in_measure.job_id, "measure") == 2
    for job in (in_prepare, in_measure):
        assert any(e["event"] == "recovered after restart" for e in job.timeline())
    # Each attempt's lines stay in the log, labelled (issue 8.5): the killed attempt's too.
    logs = in_prepare.logs()
    assert logs.count("waiting for the go file") == 2, logs
    assert "stage prepare started (run 1, step 0, attempt 1)" in logs
    assert "── attempt 2 of step 0: attempt 1 was interrupted" in logs
    assert "stage prepare started (run 1, step 0, attempt 2)" in logs


@pytest.mark.slow
def test_daemon_killed_mid_execute_never_submits_twice(client, side, markers):
    # Kill only when the other worker is blocked mid-stage too: a stage between its
    # last line and its recorded outcome has not completed and may rightly run again.
    # The other job is blocked first: waiting for it after the device run had started
    # let the run (a couple of seconds) end first on a loaded machine.
    other = client.run(CHAIN, chain_args(side, markers, "measure"))
    helpers.wait_file(markers / f"{other.job_id}.measure.started", "the other job to wait")
    job = client.run(CHAIN, chain_args(side, markers, **SLOW_EXECUTE))
    helpers.wait_device_running(client, job.job_id)
    assert any(e["event"] == "device running" for e in job.timeline())
    assert helpers.device_rows(client, job.job_id)[0]["status"] == "RUNNING"

    helpers.kill_daemon(client)
    (markers / "go").touch()
    client.up()

    assert_chain_done(client, [job, other], side)
    [row] = helpers.device_rows(client, job.job_id)
    assert row["attempts"] >= 2  # it ran again after the crash, under the same key


@pytest.mark.slow
def test_daemon_killed_repeatedly_loses_nothing(client, side, markers):
    jobs = [client.run(CHAIN, chain_args(side, markers, "measure")) for _ in range(4)]
    for _round in range(2):
        # Both workers blocked mid-stage: no stage is between its end and its record.
        wait_for(
            lambda: len(list(markers.glob("*.measure.started"))) == 2, 60, "two stages to wait"
        )
        helpers.kill_daemon(client)
        for marker in markers.glob("*.started"):
            marker.unlink()
        client.up()
    (markers / "go").touch()
    assert_chain_done(client, jobs, side)


@pytest.mark.slow
def test_worker_killed_mid_stage_is_retried(client, side, markers):
    job = client.run(CHAIN, chain_args(side, markers, "measure"))
    helpers.wait_file(markers / f"{job.job_id}.measure.started", "measure to start")
    worker = helpers.started_worker(job, "measure")
    assert worker in helpers.children_of(client.daemon_pid())
    helpers.kill_hard(worker)
    wait_for(
        lambda: any(e["event"] == "worker died, retrying" for e in job.timeline()),
        60,
        "the daemon to notice the dead worker",
    )
    (markers / "go").touch()

    assert_chain_done(client, [job], side)
    assert starts(side, job.job_id, "measure") == 2
    assert starts(side, job.job_id, "prepare") == 1
    assert not helpers.alive(worker)
    # replaced: two workers again, beside the admission worker (qlayer.local.admission)
    # and the zygote that forks them (qlayer.local.zygote)
    assert len(helpers.children_of(client.daemon_pid())) == 4


@pytest.mark.slow
def test_worker_killed_mid_execute_reruns_same_device_job(client, side, markers):
    job = client.run(CHAIN, chain_args(side, markers, **SLOW_EXECUTE))
    helpers.wait_device_running(client, job.job_id)
    running = [e for e in job.timeline() if e["event"] == "device running"]
    worker = int(running[-1]["detail"]["worker"])
    helpers.kill_hard(worker)

    assert_chain_done(client, [job], side)
    [row] = helpers.device_rows(client, job.job_id)
    assert row["attempts"] == 2


@pytest.mark.slow
def test_cancel_running_stage(client, markers):
    job = client.run(FAULTY, {"mode": "wait", "markers": str(markers)})
    good = client.run(FAULTY, {"mode": "ok", "n": 5})
    helpers.wait_file(markers / f"{job.job_id}.start.started", "the stage to start")
    worker = helpers.started_worker(job, "start")
    assert job.cancel()
    with pytest.raises(JobCancelled):
        job.result(timeout=60)
    assert job.status() == JobStatus.CANCELLED
    wait_for(lambda: not helpers.alive(worker), 30, "the cancelled stage's worker to stop")
    assert good.result(timeout=60) == {"n": 5}
    assert not job.cancel()  # already ended
    # The daemon still serves.
    assert client.run(FAULTY, {"mode": "ok", "n": 6}).result(timeout=60) == {"n": 6}


@pytest.mark.slow
def test_cancel_job_waiting_on_device(client, side, markers):
    job = client.run(CHAIN, chain_args(side, markers, **SLOW_EXECUTE))
    helpers.wait_device_running(client, job.job_id)
    assert job.cancel()
    with pytest.raises(JobCancelled):
        job.result(timeout=60)
    [row] = helpers.device_rows(client, job.job_id)
    assert row["status"] == "CANCELLED"
    assert any(e["event"] == "device job cancelled" for e in job.timeline())
    # Nothing after the execute ran.
    assert starts(side, job.job_id, "measure") == 0
    good = client.run(CHAIN, chain_args(side, markers))
    assert good.result(timeout=60)["ok"]


@pytest.mark.slow
def test_daemon_restarts_while_a_stage_forked_process_lives(client, markers):
    # A stage that uses multiprocessing (a fork of the worker) and whose child outlives
    # the killed daemon must neither fail nor keep the next daemon from starting.
    job = client.run(helpers.PROGRAMS / "forker.py", {"markers": str(markers)})
    pids = markers / "grandchildren.pid"
    try:
        wait_for(
            lambda: (markers / f"{job.job_id}.started").exists() or job.status().is_final,
            60,
            "the stage to fork",
        )
        assert not job.status().is_final, job.info()
        helpers.kill_daemon(client)
        [orphan] = [int(p) for p in pids.read_text().split()]
        assert helpers.alive(orphan)
        client.up()  # DaemonError if the orphan kept the daemon's lock
        (markers / "go").touch()
        assert job.result(timeout=120) == {"run": 1}
    finally:
        for pid in (int(p) for p in pids.read_text().split()) if pids.exists() else ():
            if helpers.alive(pid):
                helpers.kill_hard(pid)


def _freeze_then_kill(client, until) -> None:
    """SIGSTOP the daemon, wait for ``until()`` (work its workers finish meanwhile),
    then SIGKILL it: the workers' results reach the disk but never the daemon."""
    import os
    import signal

    pid = client.daemon_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(until, 60, "the worker to finish while the daemon is frozen")
    finally:
        helpers.kill_daemon(client)


@pytest.mark.slow
def test_stage_finished_while_daemon_frozen_is_not_run_again(client, side, markers):
    job = client.run(CHAIN, chain_args(side, markers, "measure"))
    helpers.wait_file(markers / f"{job.job_id}.measure.started", "measure to start")
    output = client.store.path(keys.stage_output(job.job_id, 2, "measure"))

    def finished():
        (markers / "go").touch()
        return output.exists()

    _freeze_then_kill(client, finished)
    client.up()
    assert_chain_done(client, [job], side)
    assert starts(side, job.job_id, "measure") == 1  # its recorded outcome was used


@pytest.mark.slow
def test_execute_finished_while_daemon_frozen_is_not_run_again(client, side, markers):
    job = client.run(CHAIN, chain_args(side, markers, **SLOW_EXECUTE))
    helpers.wait_device_running(client, job.job_id)
    output = client.store.path(keys.step_dir(job.job_id, 1, "execute") + "output.json")
    result = client.store.path(keys.execute_result(job.job_id, 1))
    _freeze_then_kill(client, output.exists)
    written = result.stat().st_mtime_ns
    client.up()
    assert_chain_done(client, [job], side)
    assert result.stat().st_mtime_ns == written, "the device job was simulated again"


@pytest.mark.slow
def test_daemon_killed_during_fanout(client, markers):
    job = client.run(FAULTY, {"mode": "fanout", "n": 5, "markers": str(markers)})
    wait_for(lambda: len(list(markers.glob("*.child.started"))) == 2, 60, "two children to wait")
    helpers.kill_daemon(client)
    (markers / "go").touch()
    client.up()
    assert job.result(timeout=120) == [0, 1, 4, 9, 16]
    children = job.children()
    assert [c.status() for c in children] == [JobStatus.DONE] * 5
    with helpers.db(client) as conn:
        duplicates = conn.execute(
            "SELECT job_id, seq FROM steps GROUP BY job_id, seq HAVING COUNT(*) > 1"
        ).fetchall()
        done = conn.execute(
            "SELECT job_id, COUNT(*) FROM events WHERE event = 'done' GROUP BY job_id"
        )
        done_counts = {row[0]: row[1] for row in done}
    assert not duplicates
    assert done_counts == {j.job_id: 1 for j in [job, *children]}


@pytest.mark.slow
def test_two_fanout_children_fail_at_once(client, markers):
    # Both workers reply in the same daemon tick: the first failure cancels the
    # sibling (replacing its worker) whose reply is still to be read.
    import os
    import signal

    job = client.run(FAULTY, {"mode": "fanout_fail", "markers": str(markers)})
    wait_for(lambda: len(list(markers.glob("*.child.started"))) == 2, 60, "two children to wait")
    daemon = client.daemon_pid()
    os.kill(daemon, signal.SIGSTOP)
    try:
        (markers / "go").touch()
        logs = [client.store.path(keys.log_key(f"{job.job_id}_1_{i}", 0, "child")) for i in (0, 1)]
        wait_for(
            lambda: (
                all("raised RuntimeError" in p.read_text() for p in logs if p.exists())
                and all(p.exists() for p in logs)
            ),
            60,
            "both children to fail",
        )
    finally:
        os.kill(daemon, signal.SIGCONT)
    with pytest.raises(JobFailed, match=r"child item -[12] failed"):
        job.result(timeout=60)
    assert client.daemon_pid() == daemon, "the daemon crashed"
    assert client.run(FAULTY, {"mode": "ok", "n": 2}).result(timeout=60) == {"n": 2}
    assert client.daemon_pid() == daemon
