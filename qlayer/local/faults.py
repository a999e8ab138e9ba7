"""What the daemon's loop does when something goes wrong: a fault confined to one job,
a worker that died, a stage past its timeout.

A fault confined to one job ends that job in ERROR with the reason; the loop goes on for
everyone else (:func:`guarded`). A worker's death counts against its stage only when the
stage's own worker died; a daemon restart interrupts a stage but is never the stage's
fault (:func:`worker_died`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from qlayer.core import transitions
from qlayer.core.ports import Event
from qlayer.local.state import transaction
from qlayer.step_logs import note

if TYPE_CHECKING:
    from qlayer.local.daemon import Daemon
    from qlayer.local.pool import Assignment, WorkerHandle

log = logging.getLogger("qlayer.daemon")

#: A stage whose own worker died this many times fails (``$QLAYER_MAX_WORKER_DEATHS``).
MAX_DEATHS = 3


def max_deaths() -> int:
    """How many deaths of its own worker a stage or device job survives, less one."""
    raw = os.environ.get("QLAYER_MAX_WORKER_DEATHS")
    return max(1, int(raw)) if raw and raw.isdigit() else MAX_DEATHS


def guarded(daemon: Daemon, job_id: str, fn: Callable[[], None]) -> None:
    """Run one job's transition; a fault confined to that job ends it in ERROR with the
    reason, and none of its steps is picked up again, instead of stopping the loop."""
    try:
        fn()
    except Exception as exc:
        if daemon.health.absorb(exc):
            return  # the machine's fault, not the job's: the daemon pauses, then retries
        log.exception("a transition of job %s failed", job_id)
        fail_job(
            daemon,
            job_id,
            "InternalError",
            f"qlayer could not carry on with this job: {type(exc).__name__}: {exc}",
        )


def fail_job(daemon: Daemon, job_id: str, error_type: str, message: str) -> None:
    """Fail ``job_id`` and retire its steps (the last resort of a faulty transition)."""
    try:
        with transaction(daemon.conn):
            transitions.fail(daemon.ports, job_id, error_type, message)
            daemon.conn.execute(
                "UPDATE steps SET state = 'done' WHERE job_id = ? AND state != 'done'", (job_id,)
            )
    except Exception as exc:
        if not daemon.health.absorb(exc):
            log.exception("cannot record the failure of job %s", job_id)


def check_deadlines(daemon: Daemon, now: float) -> None:
    """Stop the stages that ran past their timeout (their worker, and all it forked)."""
    for worker in daemon.pool:
        busy = worker.busy
        if busy is None or busy.deadline is None or now < busy.deadline:
            continue
        log.warning("stage %s of %s passed its timeout; killing worker", busy.stage, busy.job_id)
        worker.busy = None
        daemon.pool.replace(worker)
        message = f"stage {busy.stage!r} exceeded its timeout of {busy.timeout_s} s and was stopped"
        note(daemon.store, busy.job_id, busy.seq, busy.stage or "stage", message)

        def timed_out(busy: Assignment = busy, message: str = message) -> None:
            with transaction(daemon.conn):
                daemon._done_step(busy.step_id)
                transitions.fail(
                    daemon.ports, busy.job_id, "Timeout", message, seq=busy.seq, stage=busy.stage
                )

        guarded(daemon, busy.job_id, timed_out)


def worker_died(daemon: Daemon, worker: WorkerHandle) -> None:
    """``worker`` died: its stage runs again, or fails after :func:`max_deaths` deaths."""
    busy, worker.busy = worker.busy, None
    code = worker.process.exitcode
    if code is None:
        # Its pipe closed before its exit status could be read: a dying process closes its
        # files a moment before its parent can reap it (seen for a single-threaded worker
        # killed by SIGKILL). Wait that moment, so the death says how it ended.
        worker.process.join(timeout=2.0)
        code = worker.process.exitcode
    daemon.pool.replace(worker)
    if busy is None:
        return
    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    log.warning("worker died (%s) running %s of %s", how, busy.stage, busy.job_id)
    if busy.kind != "stage":
        guarded(daemon, busy.job_id, lambda: daemon.devices.died(busy, how))
        return
    guarded(daemon, busy.job_id, lambda: _stage_worker_died(daemon, busy, how))


def _stage_worker_died(daemon: Daemon, busy: Assignment, how: str) -> None:
    with transaction(daemon.conn):
        row = daemon.conn.execute(
            "SELECT attempts, deaths FROM steps WHERE step_id = ?", (busy.step_id,)
        ).fetchone()
        if row is None:
            return
        deaths = [*json.loads(row["deaths"] or "[]"), {"attempt": row["attempts"], "how": how}]
        daemon.conn.execute(
            "UPDATE steps SET deaths = ? WHERE step_id = ?", (json.dumps(deaths), busy.step_id)
        )
        if len(deaths) < max_deaths():
            daemon.conn.execute(
                "UPDATE steps SET state = 'pending' WHERE step_id = ?", (busy.step_id,)
            )
            daemon.jobs.add_event(
                busy.job_id,
                Event(
                    busy.seq,
                    busy.stage,
                    "worker died, retrying",
                    {"how": how, "attempt": row["attempts"], "deaths": len(deaths)},
                ),
            )
            return
        message = deaths_message(busy.stage or "stage", row["attempts"], deaths, busy.memory_mb)
        note(daemon.store, busy.job_id, busy.seq, busy.stage or "stage", message)
        daemon._done_step(busy.step_id)
        transitions.fail(
            daemon.ports, busy.job_id, "WorkerDied", message, seq=busy.seq, stage=busy.stage
        )


def deaths_message(
    stage: str, attempts: int, deaths: list[dict[str, object]], memory_mb: int | None
) -> str:
    """Why a stage failed after its worker died: which attempts were whose."""
    died = ", ".join(f"{d['attempt']} ({d['how']})" for d in deaths)
    lost = sorted(set(range(1, attempts + 1)) - {int(str(d["attempt"])) for d in deaths})
    message = f"the worker running stage {stage!r} died {len(deaths)} times: attempts {died}."
    if lost:
        message += (
            f" Attempt{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} "
            f"{'were' if len(lost) > 1 else 'was'} interrupted by a daemon restart, which "
            "does not count."
        )
    return message + (
        f" If it ran out of memory, raise memory_mb (now {memory_mb} MiB) in @wf.stage()."
    )
