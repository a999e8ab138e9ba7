"""Faults confined to one job, or to the machine: the daemon survives them all.

Each test injects a real fault (a deleted artifact, a killed process, an unwritable
folder) and proves the job it belongs to ends with a reason a user can act on, while the
daemon keeps serving every other job.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers
from helpers import FAULTY, wait_for

from qlayer import keys
from qlayer.errors import JobFailed
from qlayer.status import JobStatus


@pytest.fixture
def client(tmp_path):
    yield from helpers.local_client(tmp_path / "home")


@pytest.fixture
def markers(tmp_path):
    folder = tmp_path / "markers"
    folder.mkdir()
    return folder


@pytest.mark.slow
def test_fanout_missing_items_fails_that_job_only(client, markers):
    job = client.run(FAULTY, {"mode": "fanout", "n": 4, "markers": str(markers)})
    wait_for(lambda: len(list(markers.glob("*.child.started"))) == 2, 60, "two children to wait")
    daemon = client.daemon_pid()
    items = keys.step_dir(job.job_id, 1, "fanout") + "items.json"
    assert client.store.exists(items)
    client.store.delete(items)  # a file or a row (qlayer.local.artifacts)
    (markers / "go").touch()
    with pytest.raises(JobFailed, match=r"items\.json"):
        job.result(timeout=120)
    assert job.status() == JobStatus.ERROR
    assert {s["state"] for s in helpers.step_rows(client, job.job_id)} == {"done"}
    assert client.daemon_pid() == daemon, "the daemon crashed"
    assert client.run(FAULTY, {"mode": "ok", "n": 3}).result(timeout=60) == {"n": 3}
    # ... and it stays up across a restart (recovery meets the poisoned job again).
    client.down()
    client.up()
    assert client.run(FAULTY, {"mode": "ok", "n": 4}).result(timeout=60) == {"n": 4}


BASIS = Path(__file__).resolve().parents[2] / "bench" / "programs" / "basis_state.py"


@pytest.mark.slow
def test_coalesced_leader_missing_request_fails_only_the_leader(client):
    # Warm workers first: a cold worker's first stage (9 s once, in a clean-clone run)
    # outlasted the blocker, and the three requests never queued behind it.
    helpers.warm_workers(client, BASIS, {"k": 0, "shots": 10, "seed": 2})
    blocker = client.run(BASIS, {"k": 1, "shots": 2_000_000, "seed": 1})
    helpers.wait_device_running(client, blocker.job_id)
    jobs = [client.run(BASIS, {"k": k, "shots": 300}) for k in range(3)]
    wait_for(
        lambda: len([r for r in helpers.device_rows(client) if r["status"] == "QUEUED"]) == 3,
        60,
        "three requests to queue behind the blocker",
    )
    # The oldest queued request leads the merged run; its request disappears.
    request = keys.execute_request(jobs[0].job_id, 1)
    assert client.store.exists(request)
    client.store.delete(request)  # a file or a row (qlayer.local.artifacts)
    blocker.result(timeout=180)
    with pytest.raises(JobFailed, match=r"request\.json"):
        jobs[0].result(timeout=180)
    for k, job in enumerate(jobs[1:], start=1):
        counts = job.result(timeout=180)["counts"]
        assert max(counts, key=counts.get) == format(k, "05b")


@pytest.mark.slow
def test_daemon_restarts_do_not_count_as_worker_deaths(client, markers, tmp_path):
    side = tmp_path / "side.log"
    job = client.run(
        helpers.CHAIN, {"side": str(side), "markers": str(markers), "wait_at": "measure"}
    )
    started = markers / f"{job.job_id}.measure.started"
    for _restart in range(3):
        helpers.wait_file(started, "measure to start")
        started.unlink()
        helpers.kill_daemon(client)
        client.up()
    helpers.wait_file(started, "measure to start after the restarts")
    helpers.kill_hard(helpers.started_worker(job, "measure"))
    wait_for(
        lambda: any(e["event"] == "worker died, retrying" for e in job.timeline()),
        60,
        "the daemon to retry after its worker died",
    )
    (markers / "go").touch()
    assert job.result(timeout=120)["ok"]
    [retry] = [e for e in job.timeline() if e["event"] == "worker died, retrying"]
    assert retry["detail"]["attempt"] == 4 and retry["detail"]["deaths"] == 1


SPAWNER = helpers.PROGRAMS / "spawner.py"


def forked_pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


def gone(pid: int) -> bool:
    """Neither running nor a zombie left for someone to reap."""
    return not Path(f"/proc/{pid}").exists() or not helpers.alive(pid)


@pytest.mark.slow
def test_processes_a_stage_forks_end_with_the_stage(client, tmp_path):
    pids = tmp_path / "pids"
    job = client.run(SPAWNER, {"mode": "leave", "pids": str(pids)})
    assert job.result(timeout=60) == {"spawned": True}
    forked = forked_pids(pids)
    assert len(forked) == 7
    left = [pid for pid in forked if Path(f"/proc/{pid}").exists()]
    assert not left, f"still running or zombies after DONE: {left}"


@pytest.mark.slow
def test_processes_a_stage_forks_end_when_it_is_cancelled_or_times_out(client, tmp_path, markers):
    cancelled_pids, timed_out_pids = tmp_path / "cancelled", tmp_path / "timed_out"
    job = client.run(
        SPAWNER, {"mode": "wait", "pids": str(cancelled_pids), "markers": str(markers)}
    )
    helpers.wait_file(markers / f"{job.job_id}.started", "the stage to fork")
    assert job.cancel()
    job.wait(timeout=60)
    slow = client.run(SPAWNER, {"mode": "hang", "pids": str(timed_out_pids)})
    with pytest.raises(JobFailed, match="timeout"):
        slow.result(timeout=60)
    for pid in forked_pids(cancelled_pids) + forked_pids(timed_out_pids):
        wait_for(lambda pid=pid: gone(pid), 30, f"forked process {pid} to end")


@pytest.mark.slow
def test_a_result_too_large_to_store_says_so_and_how_to_fix_it(client):
    job = client.run(FAULTY, {"mode": "bulky"})
    with pytest.raises(JobFailed) as raised:
        job.result(timeout=120)
    info = job.info()
    assert info["error_type"] == "MemoryError"
    assert "storing the output of stage 'bulky' ran out of memory" in info["message"]
    assert "memory_mb=1024" in info["message"] and "ctx.save_file" in info["message"]
    assert info["message"] in str(raised.value)


def qlayer_status(client, job_id: str) -> str:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "qlayer.cli", "status", job_id, "--home", str(client.home.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["EROFS", "ENOSPC"])
def test_unwritable_artifacts_pause_the_daemon_until_they_can_be_written(
    client, tmp_path, monkeypatch, markers, fault
):
    # Root ignores chmod, and a small tmpfs needs privileges: the artifact store's fault
    # hook (QLAYER_FAULT_FILE, read on every write) fails each write with the real errno.
    # The daemon starts at the first run, after the variable is set, and inherits it.
    fault_file = tmp_path / "fault"
    monkeypatch.setenv("QLAYER_FAULT_FILE", str(fault_file))
    words = {"EROFS": "Read-only file system", "ENOSPC": "No space left on device"}[fault]
    side = tmp_path / "side.log"
    jobs = [
        client.run(
            helpers.CHAIN, {"side": str(side), "markers": str(markers), "wait_at": "measure"}
        )
        for _ in range(2)
    ]
    wait_for(lambda: len(list(markers.glob("*.measure.started"))) == 2, 60, "two stages")
    daemon = client.daemon_pid()
    fault_file.write_text(fault)
    (markers / "go").touch()
    wait_for(lambda: words in qlayer_status(client, jobs[0].job_id), 60, "a paused daemon")
    said = qlayer_status(client, jobs[0].job_id)
    assert "paused new work" in said and "resumes by itself" in said
    assert "cannot write state" in client.home.daemon_log.read_text()
    assert [job.status() for job in jobs] == [JobStatus.RUNNING] * 2
    assert client.daemon_pid() == daemon, "the daemon died"
    fault_file.unlink()
    for job in jobs:
        assert job.result(timeout=120)["ok"]
    assert "resuming" in client.home.daemon_log.read_text()
    assert "paused" not in qlayer_status(client, jobs[0].job_id)
    assert client.daemon_pid() == daemon
