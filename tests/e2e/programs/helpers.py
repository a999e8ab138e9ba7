"""Shared helpers of the end-to-end tests: real daemons, real processes, real faults."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qlayer.client import Client

PROGRAMS = Path(__file__).resolve().parent
CHAIN = PROGRAMS / "chain.py"
TRIVIAL = PROGRAMS / "trivial.py"
FAULTY = PROGRAMS / "faulty.py"


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_hard(pid: int, timeout: float = 30.0) -> None:
    """SIGKILL ``pid`` and wait until it is gone (reaping it if it is our child)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid):
        _reap(pid)
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} survived SIGKILL")
        time.sleep(0.01)
    _reap(pid)


def kill_daemon(client: Client) -> list[int]:
    """SIGKILL the client's daemon; wait until it and its workers (PDEATHSIG) are gone."""
    pid = client.daemon_pid()
    assert pid is not None, "no daemon to kill"
    workers = children_of(pid)
    kill_hard(pid)
    wait_for(lambda: not any(alive(w) for w in workers), 30, "the workers to die with the daemon")
    return workers


def local_client(home: Path, *, workers: int = 2, autostart: bool = True) -> Iterator[Client]:
    """A client with its own home; the daemon (and any stray worker) is stopped at teardown."""
    client = Client.local(home=home, workers=workers, autostart=autostart)
    seen: set[int] = set()
    try:
        yield client
    finally:
        pid = client.daemon_pid()
        if pid is not None:
            seen.update(children_of(pid))
        client.down()
        for worker in seen:
            if alive(worker):
                kill_hard(worker)
        client._conn.close()


def db(client: Client) -> sqlite3.Connection:
    """A read connection of the state database, apart from the client's."""
    conn = sqlite3.connect(str(client.home.db), timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def device_rows(client: Client, job_id: str | None = None) -> list[dict[str, Any]]:
    with db(client) as conn:
        if job_id is None:
            rows = conn.execute("SELECT * FROM device_jobs ORDER BY submitted_at").fetchall()
        else:
            rows = conn.execute("SELECT * FROM device_jobs WHERE job_id = ?", (job_id,)).fetchall()
    return [dict(row) for row in rows]


def step_rows(client: Client, job_id: str) -> list[dict[str, Any]]:
    with db(client) as conn:
        rows = conn.execute(
            "SELECT * FROM steps WHERE job_id = ? ORDER BY seq", (job_id,)
        ).fetchall()
    return [dict(row) for row in rows]


def read_side(path: Path) -> list[tuple[str, str, int, str]]:
    """The ``start``/``end`` lines the test programs wrote: (what, job, seq, stage)."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        what, job, seq, stage = line.split()
        lines.append((what, job, int(seq), stage))
    return lines


def assert_each_stage_completed_once(
    path: Path, expected: dict[str, list[tuple[int, str]]]
) -> None:
    """Every (job, seq, stage) expected ended exactly once, and nothing else ended.

    A stage killed after its ``end`` line but before the platform recorded its outcome
    (output.json) has not completed and runs again; tests kill only while every worker
    is blocked mid-stage (a marker) or running a device job, so an ``end`` is a completion.
    """
    lines = read_side(path)
    ends = Counter((job, seq, stage) for what, job, seq, stage in lines if what == "end")
    twice = {key: n for key, n in ends.items() if n > 1}
    assert not twice, f"completed stages ran again: {twice}"
    wanted = {(job, seq, stage) for job, steps in expected.items() for seq, stage in steps}
    assert set(ends) == wanted, f"ended {sorted(ends)}, expected {sorted(wanted)}"


def started_worker(job: Any, stage: str) -> int:
    """The worker pid of the latest ``started`` event of ``stage`` in the job's timeline."""
    events = [e for e in job.timeline() if e["event"] == "started" and e["stage"] == stage]
    assert events, f"{stage} never started: {job.timeline()}"
    return int(events[-1]["detail"]["worker"])


def wait_file(path: Path, what: str, timeout: float = 60.0) -> None:
    wait_for(path.exists, timeout, what)


def warm_workers(client: Client, program: Path, arguments: dict[str, Any]) -> list[str]:
    """Run ``program`` once on each of the two workers (two jobs at once, to the end): a
    worker's first stage of a program imports what it needs (seconds for a fake device's
    transpiler), which must not decide a race the test sets up. The jobs' ids."""
    jobs = [client.run(program, arguments) for _ in range(2)]
    for job in jobs:
        job.result(timeout=180)
    return [job.job_id for job in jobs]


def wait_device_running(client: Client, job_id: str, timeout: float = 60.0) -> None:
    """Wait until the job's device job is RUNNING (being simulated by a worker)."""
    wait_for(
        lambda: any(r["status"] == "RUNNING" for r in device_rows(client, job_id)),
        timeout,
        "the device job to run",
    )
