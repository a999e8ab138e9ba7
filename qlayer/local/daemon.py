"""The local daemon: takes steps from SQLite, runs them on warm workers, records decisions.

It outlives the terminal that started it. The job transitions are
:mod:`qlayer.core.transitions` — the same functions the AWS handlers call — each applied
in one SQLite transaction; every step is idempotent (see :mod:`qlayer.steps`), so a
daemon killed at any instant picks up where it was on restart: running steps go back to
pending, a step whose outcome was already written is not run again, and a device or QPU
job is never submitted twice (its ledger is keyed by ``job_id/seq``).

The parts: the loop (here: wake-ups, recovery, cancels, deadlines, deaths), the workers
(:mod:`qlayer.local.pool`), the simulated device queue (:mod:`qlayer.local.devices`),
the remote QPU pump (:mod:`qlayer.local.remote`) and the builds of programs'
environments (:mod:`qlayer.local.envgate`).

Run it with ``qlayer up`` (or ``python -m qlayer.local.daemon``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from qlayer.core import transitions
from qlayer.core.ports import Event, Ports
from qlayer.interpreter import Decision
from qlayer.local import faults, state
from qlayer.local.admission import Admission
from qlayer.local.artifacts import HomeStore, decode_records
from qlayer.local.devices import DeviceQueue
from qlayer.local.envgate import EnvGate
from qlayer.local.health import Health, StorageFault
from qlayer.local.jobstore import SqliteJobStore
from qlayer.local.notifier import Notifier
from qlayer.local.orchestrator import LocalOrchestrator
from qlayer.local.paths import Home
from qlayer.local.pool import Assignment, WorkerHandle, WorkerPool
from qlayer.local.remote import RemoteDispatcher
from qlayer.local.retention import RetentionThread
from qlayer.local.scheduler import FanOutFeeder, Scheduler
from qlayer.local.state import insert_step, transaction
from qlayer.local.zygote import Zygote
from qlayer.planner import Resources
from qlayer.status import JobStatus
from qlayer.step_logs import note

log = logging.getLogger("qlayer.daemon")

IDLE_POLL_S = 0.25


class Daemon:
    """The engine of the local substrate."""

    def __init__(
        self,
        home: Home,
        *,
        workers: int | None = None,
        lock_fd: int | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        self.home = home
        self.zygote = zygote
        self.conn = state.connect(home.db)
        self.store = HomeStore(home.artifacts, home.db, self.conn)
        self.jobs = SqliteJobStore(self.conn)
        self.ports = Ports(self.jobs, self.store, LocalOrchestrator(self))
        self.resources = Resources.for_this_machine()
        assert self.resources.local_memory_mb is not None
        size = workers or max(2, os.cpu_count() or 2)
        self.pool = WorkerPool(home, size, self.resources.local_memory_mb, lock_fd, zygote)
        self.devices = DeviceQueue(self.conn, self.jobs, self.store, self.on_decision, workers=size)
        self.remote = RemoteDispatcher(
            self.conn, home.db, self.jobs, self.store, self.on_decision, clock=time.time
        )
        self.health = Health(home, self.store, self.conn)
        self.admission = Admission(
            self.conn, self.jobs, home, self.resources.local_memory_mb, lock_fd, zygote
        )
        self.scheduler = Scheduler(self.conn)
        self.envs = EnvGate(self.conn, self.ports, home.envs)  # program environments
        self.feeder = FanOutFeeder(self.conn, self.ports, self._guarded)
        self.stopping = False
        self.wake_socket: socket.socket | None = None
        #: Parents whose last child just ended: their fan-in runs after that child's
        #: transaction commits, as a transition of the parent's own (its fault is its own).
        self.fan_ins: list[str] = []
        #: Decision kind -> what the engine does with it (the keys are transitions.ROUTES').
        self.routes: dict[str, Callable[[str, Decision], None]] = {
            "next": self._queue_stage,
            "execute": self._queue_execute,
            "fanout": self._fan_out,
            "done": self._done,
            "error": self._error,
        }

    # -- lifecycle -------------------------------------------------------------------
    def open_wake_socket(self) -> None:
        path = str(self.home.socket)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        if len(path) >= 100:
            log.warning(
                "state path too long for a wake-up socket; polling every %.2f s", IDLE_POLL_S
            )
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        self.wake_socket = sock

    def run(self) -> None:
        try:
            self.recover()
        except Exception as exc:  # a full disk at start: paused, recovered when it resumes
            if not self.health.absorb(exc):
                raise
        self.open_wake_socket()
        self.pool.start()
        self.admission.start()
        notifier = Notifier(self.home)
        notifier.start()
        retention = RetentionThread(self.home)
        retention.start()
        log.info("daemon %d ready with %d workers", os.getpid(), len(self.pool))
        try:
            while not self.stopping:
                self.tick()
        finally:
            notifier.stop()
            retention.stop()
            self.admission.shutdown()
            self.remote.shutdown()
            self.envs.shutdown()
            self.pool.shutdown()
            if self.zygote is not None:
                self.zygote.close()
            if self.wake_socket is not None:
                self.wake_socket.close()
                try:
                    os.unlink(self.home.socket)
                except FileNotFoundError:
                    pass

    def tick(self) -> None:
        paused = self.health.paused and not self.resumed()
        self.handle_cancels()
        if not paused:
            self.admission.pump()
            self.feeder.feed()
            self.assign()
            self.remote.pump()
        workers = list(self.pool)
        waitables: list[Any] = [w.conn for w in workers] + [w.process.sentinel for w in workers]
        waitables += [self.remote.wake_r, *self.admission.waitables()]
        if self.wake_socket is not None:
            waitables.append(self.wake_socket)
        ready = wait(waitables, timeout=self.next_timeout())
        if self.wake_socket is not None and self.wake_socket in ready:
            self._drain_wake_socket()
        if self.remote.wake_r in ready:
            self.remote.drain_wake()
        if not self.health.paused:  # provider outcomes wait in their queue meanwhile
            self.remote.collect()
            self.envs.poll()
        self.admission.collect(ready)
        for worker in workers:
            if worker not in self.pool:
                continue  # replaced meanwhile (a cancel or a failure stopped its job)
            if worker.conn in ready:
                self._read_reply(worker)
            elif not worker.process.is_alive():
                self.worker_died(worker)
        self.run_fan_ins()
        self.check_deadlines()

    def resumed(self) -> bool:
        """Paused on a storage fault: once no worker is busy and a write works again,
        resume through crash recovery (what was cut short runs again; steps are idempotent)."""
        if any(w.busy for w in self.pool) or not self.health.probe(time.time()):
            return False
        try:
            self.recover()
        except Exception as exc:  # the fault came back meanwhile: still paused
            if not self.health.absorb(exc):
                raise
            return False
        return True

    def run_fan_ins(self) -> None:
        """The fan-ins that children's ends made due (each in its parent's own transaction)."""
        while self.fan_ins:
            parent = self.fan_ins.pop(0)
            self._guarded(parent, functools.partial(self._fan_in, parent))

    def next_timeout(self) -> float:
        now = time.time()
        deadlines = [w.busy.deadline - now for w in self.pool if w.busy and w.busy.deadline]
        remote = self.remote.next_timeout(now)
        if remote is not None:
            deadlines.append(remote)
        if self.feeder.pending():
            deadlines.append(0.0)
        if self.envs.pending():
            deadlines.append(0.05)  # a build's end is seen within 50 ms
        return max(0.0, min([IDLE_POLL_S, *deadlines]))

    def _drain_wake_socket(self) -> None:
        assert self.wake_socket is not None
        try:
            while self.wake_socket.recv(64):
                pass
        except (BlockingIOError, OSError):
            pass

    # -- recovery --------------------------------------------------------------------
    def recover(self) -> None:
        """After a crash: running steps go back to pending, and so do device jobs; fan-ins
        whose children all ended run; remote requests are picked up where they were."""
        with transaction(self.conn):
            rows = self.conn.execute("SELECT * FROM steps WHERE state = 'running'").fetchall()
            for row in rows:
                self.conn.execute(
                    "UPDATE steps SET state = 'pending' WHERE step_id = ?", (row["step_id"],)
                )
                self.jobs.add_event(
                    row["job_id"], Event(row["seq"], row["stage"], "recovered after restart")
                )
        self.devices.recover()
        self.envs.recover()
        self.feeder.recover()
        for row in self.conn.execute(
            "SELECT job_id FROM steps WHERE kind = 'fanin' AND state = 'waiting'"
        ).fetchall():
            self._guarded(row["job_id"], functools.partial(self._fan_in, row["job_id"]))
        for row in self.conn.execute(
            "SELECT * FROM steps WHERE kind = 'execute' AND state = 'waiting' ORDER BY step_id"
        ).fetchall():
            self._guarded(row["job_id"], functools.partial(self._track_remote, row))
        self.remote.recover(self._ended)
        if rows:
            log.info("recovered %d running steps", len(rows))

    def _track_remote(self, row: sqlite3.Row) -> None:
        decision = Decision.from_json(json.loads(row["detail"]))
        if self.remote.is_remote(decision.backend):
            self.remote.track(row["job_id"], row["seq"], decision, row["created_at"])

    def _ended(self, job_id: str) -> bool:
        job = self.jobs.find(job_id)
        return job is None or job.status.is_final

    # -- dispatch --------------------------------------------------------------------
    def assign(self) -> None:
        """Hand pending work to its device or provider, and idle workers their next step."""
        self.submit_executes()
        while (idle := list(self.pool.idle())) and self.assign_next(idle):
            pass

    def submit_executes(self) -> None:
        """Hand pending execute steps to their device or provider: once per step, by key."""
        rows = self.conn.execute(
            "SELECT * FROM steps WHERE kind = 'execute' AND state = 'pending' ORDER BY step_id"
        ).fetchall()
        for row in rows:
            self._guarded(row["job_id"], functools.partial(self._submit_execute, row))

    def _submit_execute(self, row: sqlite3.Row) -> None:
        decision = Decision.from_json(json.loads(row["detail"]))
        remote = self.remote.is_remote(decision.backend)
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE steps SET state = 'waiting' WHERE step_id = ?", (row["step_id"],)
            )
            if remote:
                self.remote.track(row["job_id"], row["seq"], decision, row["created_at"])
            else:
                self.devices.submit(row["job_id"], row["seq"], decision)

    def assign_next(self, idle: list[WorkerHandle]) -> bool:
        """Hand the next step to one of the ``idle`` workers (a stage whose environment
        is not built waits for it instead); False when nothing is pending."""
        step = self.scheduler.next_stage()  # fair between trees
        device = self.devices.next_job()
        if step is None and device is None:
            return False
        if step is not None and (device is None or step["created_at"] <= device["submitted_at"]):
            self.scheduler.served(step)
            self._guarded(step["job_id"], lambda: self.start_stage(idle, step))
        else:
            assert device is not None
            self._guarded(device["job_id"], lambda: self.devices.start(idle[0], device))
        return True

    def start_stage(self, idle: list[WorkerHandle], step: sqlite3.Row) -> None:
        job = self.jobs.get(step["job_id"])
        detail = json.loads(step["detail"] or "{}")
        compute = detail.get("compute") or {}
        memory_mb = int(compute.get("memory_mb") or 2048)
        timeout_s = int(compute.get("timeout_s") or 900)
        local_mb = self.resources.local_memory_mb
        if local_mb and memory_mb > local_mb:
            with transaction(self.conn):
                self._done_step(step["step_id"])
                transitions.fail(
                    self.ports,
                    job.job_id,
                    "PlannerError",
                    f"stage {step['stage']!r} declares memory_mb={memory_mb}; this machine "
                    f"offers {local_mb} MiB",
                    seq=step["seq"],
                    stage=step["stage"],
                )
            return
        site = self.envs.site(job, step) if job.env else None
        if job.env and site is None:
            return  # it waits for its environment's build (BUILDING)
        worker = self.pool.pick(idle, job.env)
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE steps SET state = 'running', started_at = ?, attempts = attempts + 1 "
                "WHERE step_id = ?",
                (time.time(), step["step_id"]),
            )
            self.jobs.update(
                job.job_id,
                status=JobStatus.RUNNING,
                stage=step["stage"],
                seq=step["seq"],
                event=Event(
                    step["seq"],
                    step["stage"],
                    "started",
                    {"attempt": step["attempts"] + 1, "worker": worker.process.pid}
                    | ({"env": job.env} if job.env else {}),
                ),
            )
        worker.send(
            {
                "op": "stage",
                "program_id": job.program_id,
                "seq": step["seq"],
                "stage": step["stage"],
                "memory_mb": memory_mb,
                "env": job.env,
                "env_path": site,
                "input": detail.get("input"),  # kept in the step (a fan-out's small item)
                "job": {
                    "job_id": job.job_id,
                    "arguments": job.arguments,
                    "backend": job.backend,
                    "index": job.item_index,
                    "runs": self.jobs.runs_before(job.job_id, step["seq"]),
                    "attempt": step["attempts"] + 1,
                },
            },
            Assignment(
                "stage",
                job.job_id,
                step["seq"],
                step["stage"],
                step_id=step["step_id"],
                deadline=time.time() + timeout_s,
                timeout_s=timeout_s,
                memory_mb=memory_mb,
            ),
        )
        worker.env = job.env or worker.env

    # -- replies ---------------------------------------------------------------------
    def _read_reply(self, worker: WorkerHandle) -> None:
        try:
            reply = json.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            self.worker_died(worker)
            return
        assignment, worker.busy = worker.busy, None
        if assignment is None:
            return
        if reply.get("storage"):  # it could not write: no one's fault; run again on resume
            self.health.absorb(StorageFault(reply["storage"]))
            return
        if assignment.kind == "stage":
            self._guarded(assignment.job_id, lambda: self.finish_stage(assignment, reply))
        else:
            self._guarded(assignment.job_id, lambda: self.devices.finish(assignment, reply))

    def finish_stage(self, assignment: Assignment, reply: dict[str, Any]) -> None:
        assert assignment.step_id is not None
        if not reply.get("ok"):
            decision = Decision.failed(
                assignment.seq,
                assignment.stage,
                reply.get("error_type", "InternalError"),
                f"qlayer failed running stage {assignment.stage!r}: {reply.get('message')}",
            )
            note(
                self.store,
                assignment.job_id,
                assignment.seq,
                assignment.stage or "stage",
                reply.get("traceback", ""),
            )
        else:
            decision = Decision.from_json(reply["decision"])
        with transaction(self.conn):
            # the step's small artifacts the worker held: committed with the step's end
            self.store.commit_rows(decode_records(reply.get("records")))
            self.apply(assignment.job_id, assignment.step_id, decision)

    def on_decision(self, job_id: str, seq: int, decision: Decision) -> None:
        """A device job or a provider job ended: its execute step's decision."""

        def applied() -> None:
            step = self.conn.execute(
                "SELECT step_id FROM steps WHERE job_id = ? AND seq = ?", (job_id, seq)
            ).fetchone()
            if step is not None:
                with transaction(self.conn):
                    self.apply(job_id, step["step_id"], decision)

        self._guarded(job_id, applied)

    # -- the engine (caller holds the transaction) -----------------------------------------
    def apply(self, job_id: str, step_id: int, decision: Decision) -> None:
        """Record a step's decision and carry it out: :mod:`qlayer.core.transitions`."""
        step = self.conn.execute("SELECT * FROM steps WHERE step_id = ?", (step_id,)).fetchone()
        if step is None or step["state"] == "done":
            return  # already applied (a duplicate reply)
        self._done_step(step_id)
        kind = step["kind"]
        label = step["stage"] if kind == "stage" else ("fan-in" if kind == "fanin" else kind)
        carried = transitions.advance(
            self.ports,
            job_id,
            step["seq"],
            label,
            decision,
            ran_stage=step["stage"] if kind == "stage" else None,
        )
        if carried is not None:
            self.routes[carried.kind](job_id, carried)

    def _queue_stage(self, job_id: str, decision: Decision) -> None:
        self._insert_step(job_id, decision, "stage", decision.stage, "pending")

    def _queue_execute(self, job_id: str, decision: Decision) -> None:
        self._insert_step(job_id, decision, "execute", "execute", "pending")

    def _fan_out(self, job_id: str, decision: Decision) -> None:
        self._insert_step(job_id, decision, "fanin", "fan-in", "waiting")
        self.feeder.start(job_id, decision)  # the first batch; the rest in later ticks

    def _done(self, job_id: str, decision: Decision) -> None:
        parent = transitions.finish(self.ports, job_id, decision.seq).fan_in
        if parent is not None:
            self.fan_ins.append(parent)

    def _error(self, job_id: str, decision: Decision) -> None:
        transitions.fail_with(self.ports, job_id, decision)

    def _fan_in(self, parent_id: str) -> None:
        """Every child of the parent's fan-out has ended: the parent's fan-in step runs."""
        parent = self.jobs.get(parent_id)
        if parent.status.is_final or parent.children_done < parent.children_total:
            return
        step = self.conn.execute(
            "SELECT * FROM steps WHERE job_id = ? AND kind = 'fanin' AND state = 'waiting'",
            (parent_id,),
        ).fetchone()
        if step is None:
            return
        fanout = Decision.from_json(json.loads(step["detail"]))
        with self.jobs.atomic():
            self.apply(
                parent_id, step["step_id"], transitions.fan_in(self.ports, parent_id, fanout)
            )

    def _insert_step(
        self, job_id: str, decision: Decision, kind: str, stage: str | None, step_state: str
    ) -> None:
        insert_step(
            self.conn,
            job_id,
            decision.seq,
            kind,
            stage,
            step_state,
            decision.to_json(),
            time.time(),
        )

    def _done_step(self, step_id: int | None) -> None:
        if step_id is not None:
            self.conn.execute("UPDATE steps SET state = 'done' WHERE step_id = ?", (step_id,))

    def _guarded(self, job_id: str, fn: Callable[[], None]) -> None:
        """Run one job's transition: :func:`qlayer.local.faults.guarded`."""
        faults.guarded(self, job_id, fn)

    # -- cancel, deadlines, deaths ---------------------------------------------------
    def handle_cancels(self) -> None:
        for job_id in self.jobs.cancel_flagged():
            self._guarded(job_id, functools.partial(self._cancel, job_id))

    def _cancel(self, job_id: str) -> None:
        with transaction(self.conn):
            transitions.cancel_tree(self.ports, job_id)

    def check_deadlines(self) -> None:
        faults.check_deadlines(self, time.time())

    def worker_died(self, worker: WorkerHandle) -> None:
        faults.worker_died(self, worker)


def main(argv: list[str] | None = None) -> int:
    """``python -m qlayer.local.daemon`` (kept): :func:`qlayer.local.daemon_process.main`."""
    from qlayer.local.daemon_process import main as process_main

    return process_main(argv)


if __name__ == "__main__":
    sys.exit(main())
