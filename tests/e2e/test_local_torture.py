"""Torture: SIGKILL the daemon and its workers at random while a mixed workload runs.

The workload (seeded sweeps, QAOA-like loops, coalescable device runs, and jobs on a
FAKE QPU service that keeps its own ledger of provider jobs) runs once
undisturbed, then again under a seeded random schedule of kills. Afterwards every job
is DONE with exactly the undisturbed results, no step whose outcome had been recorded
ran again, and every execute request made exactly one device or provider job.

``make torture`` runs it; ``QLAYER_TORTURE_SEED`` and ``QLAYER_TORTURE_KILLS`` change
the schedule.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers

from qlayer import keys
from qlayer.status import JobStatus

TORTURE = helpers.PROGRAMS / "torture.py"
QPU_CHAIN = helpers.PROGRAMS / "qpu_chain.py"
FAKE_QPU = helpers.PROGRAMS / "fake_qpu.py"
QPU_RUNS = [{"executes": 4}, {"executes": 3}, {"executes": 1, "fanout": 3}]


def use_fake_qpu(monkeypatch, folder: Path) -> None:
    """The daemon started next (it inherits the environment) talks to a FAKE QPU service
    that keeps its own ledger of every provider job in ``folder``."""
    monkeypatch.setenv("QLAYER_PROVIDERS", f"fakeqpu={FAKE_QPU}:FakeQpu")
    monkeypatch.setenv("QLAYER_FAKE_QPU_DIR", str(folder))
    monkeypatch.setenv("QLAYER_QPU_POLL_S", "0.05")
    monkeypatch.setenv("QLAYER_QPU_POLLS_PER_S", "2000")
    monkeypatch.setenv("QLAYER_QPU_RETRY_BASE_S", "0.05")


def workload(side: Path) -> list[dict[str, object]]:
    jobs: list[dict[str, object]] = []
    for seed in (11, 23, 37):
        jobs.append({"mode": "sweep", "n": 8, "seed": seed})
        jobs.append({"mode": "loop", "iters": 10, "seed": seed})
    jobs += [{"mode": "basis", "k": k} for k in range(16)]
    return [{**job, "side": str(side)} for job in jobs]


def submit_all(client, side: Path) -> list:
    jobs = [client.run(TORTURE, args) for args in workload(side)]
    return jobs + [client.run(QPU_CHAIN, args) for args in QPU_RUNS]


def comparable(result):
    if isinstance(result, dict):  # how a run was shared, and a job's own id, may differ
        return {k: v for k, v in result.items() if k not in ("coalesced", "job")}
    return result


def torment(client, jobs, rng: random.Random, kills: int) -> list[str]:
    """Kill the daemon or one worker, ``kills`` times at random moments; what was done."""
    done = []
    for _ in range(kills):
        time.sleep(rng.uniform(0.3, 1.5))
        if all(job.status().is_final for job in jobs):
            break
        pid = client.daemon_pid()
        if pid is None:
            client.up()
            continue
        workers = helpers.children_of(pid)
        if rng.random() < 0.5 or not workers:
            helpers.kill_daemon(client)
            client.up()
            done.append("daemon")
        else:
            victim = rng.choice(sorted(workers))
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                continue
            done.append("worker")
    return done


def reruns_of_recorded_steps(client, side: Path) -> list[tuple[str, int, str]]:
    """Starts of a stage after its step's outcome (output.json) had been recorded."""
    found = []
    for line in side.read_text().splitlines():
        what, job, seq, stage, at = line.split()
        if what != "start":
            continue
        recorded = recorded_at(client, job, int(seq), stage)
        if recorded is not None and float(at) > recorded + 0.05:
            found.append((job, int(seq), stage))
    return found


def recorded_at(client, job: str, seq: int, stage: str) -> float | None:
    """When the step's outcome was recorded: its file's time, or, kept as a row (a quick
    step's, committed with the step's end: qlayer.local.artifacts), its end's event."""
    output = client.store.path(keys.stage_output(job, seq, stage))
    if output.exists():
        return output.stat().st_mtime
    if not client.store.exists(keys.stage_output(job, seq, stage)):
        return None
    with helpers.db(client) as conn:
        row = conn.execute(
            "SELECT MIN(at) FROM events WHERE job_id = ? AND seq = ? AND event = 'finished'",
            (job, seq),
        ).fetchone()
    return row[0]


@pytest.mark.slow
def test_random_sigkills_change_no_result(tmp_path, monkeypatch):
    # A worker killed at random may hit one step again and again: that is the test's
    # doing, not the stage's, so deaths are not limited here.
    monkeypatch.setenv("QLAYER_MAX_WORKER_DEATHS", "1000")
    seed = int(os.environ.get("QLAYER_TORTURE_SEED", "9"))
    kills = int(os.environ.get("QLAYER_TORTURE_KILLS", "14"))

    use_fake_qpu(monkeypatch, tmp_path / "calm_qpu")
    for calm in helpers.local_client(tmp_path / "calm"):
        expected = [job.result(timeout=300) for job in submit_all(calm, tmp_path / "calm.side")]
    assert any(r.get("coalesced", 1) > 1 for r in expected if isinstance(r, dict)), (
        "no device run was shared: the workload no longer exercises coalescing"
    )

    side = tmp_path / "tortured.side"
    use_fake_qpu(monkeypatch, tmp_path / "tortured_qpu")
    for client in helpers.local_client(tmp_path / "tortured"):
        jobs = submit_all(client, side)
        done = torment(client, jobs, random.Random(seed), kills)
        client.up()
        results = [job.result(timeout=300) for job in jobs]
        print(f"kills (seed {seed}): {done}")
        assert done, "the workload ended before any kill"

        assert [job.status() for job in jobs] == [JobStatus.DONE] * len(jobs)
        assert [comparable(r) for r in results] == [comparable(r) for r in expected]
        assert not reruns_of_recorded_steps(client, side)
        with helpers.db(client) as conn:
            executes = {
                (row["job_id"], row["seq"], row["workflow"])
                for row in conn.execute(
                    "SELECT s.job_id, s.seq, j.workflow FROM steps s JOIN jobs j"
                    " ON j.job_id = s.job_id WHERE s.kind = 'execute'"
                )
            }
            ledger = conn.execute("SELECT key, state FROM provider_ledger").fetchall()
            devices = conn.execute(
                "SELECT job_id, seq, status FROM device_jobs ORDER BY job_id, seq"
            ).fetchall()
            done_events = conn.execute(
                "SELECT job_id, COUNT(*) AS n FROM events WHERE event = 'done' GROUP BY job_id"
            ).fetchall()
            not_done = conn.execute("SELECT COUNT(*) FROM steps WHERE state != 'done'")
            assert not_done.fetchone()[0] == 0
        on_devices = sorted((job, seq) for job, seq, flow in executes if flow == "torture")
        on_qpu = sorted(f"{job}/{seq}" for job, seq, flow in executes if flow == "qpu_chain")
        assert sorted((r["job_id"], r["seq"]) for r in devices) == on_devices
        assert {r["status"] for r in devices} == {"DONE"}
        assert sorted(r["key"] for r in ledger) == on_qpu
        assert {r["state"] for r in ledger} == {"DONE"}
        assert {r["n"] for r in done_events} == {1}
        from fake_qpu import FakeQpu

        provider_jobs: dict[str, int] = {}
        for job in FakeQpu(tmp_path / "tortured_qpu").jobs():
            provider_jobs[job["key"]] = provider_jobs.get(job["key"], 0) + 1
        assert provider_jobs and set(provider_jobs.values()) == {1}, provider_jobs
