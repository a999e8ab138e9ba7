"""The local daemon: takes steps from SQLite, runs them on warm workers, records decisions.

It outlives the terminal that started it. Every transition is one SQLite
transaction, and every step is idempotent (see :mod:`qlayer.steps`), so a daemon
killed at any instant picks up where it was on restart: running steps go back
to pending, a step whose outcome was already written is not run again, and a
device job is never submitted twice (its ledger is keyed by ``job_id/seq``).

Run it with ``qlayer up`` (or ``python -m qlayer.local.daemon``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import multiprocessing
import os
import queue
import secrets
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from qlayer import keys
from qlayer.dispatch import (
    ACTIVE_STATES,
    FINAL_STATES,
    FindsJobs,
    NotSubmitted,
    RateLimiter,
    poll_once,
    submit_once,
    with_retries,
)
from qlayer.dispatch import Limits as DispatchLimits
from qlayer.interpreter import ROUTES, Decision
from qlayer.local import state
from qlayer.local.ledger import SqliteLedger
from qlayer.local.paths import Home
from qlayer.local.state import add_event, transaction
from qlayer.local.worker import worker_main
from qlayer.planner import Limits
from qlayer.providers.base import ProviderError
from qlayer.request import decode_request
from qlayer.status import JobStatus
from qlayer.steps import child_job_id, complete_execute, fan_in
from qlayer.store.local import FolderStore

log = logging.getLogger("qlayer.daemon")

MAX_ATTEMPTS = 3
IDLE_POLL_S = 0.25


@dataclass
class Assignment:
    kind: str  # stage | device
    job_id: str
    seq: int
    stage: str | None
    step_id: int | None = None
    device_job_id: str | None = None
    deadline: float | None = None
    timeout_s: int | None = None
    memory_mb: int | None = None
    riders: list[dict[str, Any]] = field(default_factory=list)  # coalesced device jobs

    def members(self) -> list[dict[str, Any]]:
        """The device jobs this assignment runs: the leader, then its riders."""
        lead = {"device_job_id": self.device_job_id, "job_id": self.job_id, "seq": self.seq}
        return [lead, *self.riders]

    def involves(self, job_id: str) -> bool:
        return self.job_id == job_id or any(r["job_id"] == job_id for r in self.riders)


class WorkerHandle:
    """One warm worker process and what it is doing."""

    def __init__(
        self, ctx: Any, home: Home, local_memory_mb: int, lock_fd: int | None = None
    ) -> None:
        parent_conn, child_conn = multiprocessing.Pipe(duplex=True)
        self.conn: Connection = parent_conn
        self.process = ctx.Process(
            target=worker_main,
            args=(child_conn, str(home.artifacts), str(home.scratch), local_memory_mb, lock_fd),
            # Not daemonic: multiprocessing forbids daemonic processes to have children,
            # and stages may use multiprocessing themselves. Workers still never outlive
            # the daemon: it kills them on exit, and PR_SET_PDEATHSIG when it is killed.
            daemon=False,
        )
        self.process.start()
        child_conn.close()
        self.busy: Assignment | None = None
        self.message_id = 0

    def send(self, message: dict[str, Any], assignment: Assignment) -> None:
        self.message_id += 1
        message["id"] = self.message_id
        self.busy = assignment
        self.conn.send_bytes(json.dumps(message).encode())

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class Daemon:
    """The engine of the local substrate."""

    def __init__(
        self, home: Home, *, workers: int | None = None, lock_fd: int | None = None
    ) -> None:
        self.home = home
        self.lock_fd = lock_fd  # workers drop it: see worker.release_daemon_lock
        self.store = FolderStore(home.artifacts)
        self.conn = state.connect(home.db)
        self.limits = Limits.for_this_machine()
        self.n_workers = workers or max(2, os.cpu_count() or 2)
        self.workers: list[WorkerHandle] = []
        self.stopping = False
        self.wake_socket: socket.socket | None = None
        self.device_concurrency: dict[str, int] = {}
        self.remote = RemoteDispatcher(self)

    # -- lifecycle -------------------------------------------------------------------
    def start_workers(self) -> None:
        ctx = multiprocessing.get_context("fork")
        assert self.limits.local_memory_mb is not None
        self.workers = [
            WorkerHandle(ctx, self.home, self.limits.local_memory_mb, self.lock_fd)
            for _ in range(self.n_workers)
        ]
        self._ctx = ctx

    def replace_worker(self, worker: WorkerHandle) -> None:
        worker.kill()
        if worker not in self.workers:
            return  # already replaced
        index = self.workers.index(worker)
        assert self.limits.local_memory_mb is not None
        self.workers[index] = WorkerHandle(
            self._ctx, self.home, self.limits.local_memory_mb, self.lock_fd
        )

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
        self.recover()
        self.remote.recover()
        self.open_wake_socket()
        self.start_workers()
        log.info("daemon %d ready with %d workers", os.getpid(), len(self.workers))
        try:
            while not self.stopping:
                self.tick()
        finally:
            self.remote.shutdown()
            for worker in self.workers:
                worker.kill()
            if self.wake_socket is not None:
                self.wake_socket.close()
                try:
                    os.unlink(self.home.socket)
                except FileNotFoundError:
                    pass

    def tick(self) -> None:
        self.handle_cancels()
        self.dispatch()
        self.remote.pump()
        waitables: list[Any] = [w.conn for w in self.workers]
        waitables += [w.process.sentinel for w in self.workers]
        waitables.append(self.remote.wake_r)
        if self.wake_socket is not None:
            waitables.append(self.wake_socket)
        ready = wait(waitables, timeout=self.next_timeout())
        if self.wake_socket is not None and self.wake_socket in ready:
            self._drain_wake_socket()
        if self.remote.wake_r in ready:
            self.remote.drain_wake()
        self.remote.collect()
        for worker in list(self.workers):
            if worker not in self.workers:
                continue  # replaced meanwhile (a cancel or a failure stopped its job)
            if worker.conn in ready:
                self._read_reply(worker)
            elif not worker.process.is_alive():
                self.worker_died(worker)
        self.check_deadlines()

    def next_timeout(self) -> float:
        now = time.time()
        deadlines = [w.busy.deadline - now for w in self.workers if w.busy and w.busy.deadline]
        remote = self.remote.next_timeout(now)
        if remote is not None:
            deadlines.append(remote)
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
        """After a crash: steps that were running go back to pending, and so do devices."""
        with transaction(self.conn):
            rows = self.conn.execute("SELECT * FROM steps WHERE state = 'running'").fetchall()
            for row in rows:
                self.conn.execute(
                    "UPDATE steps SET state = 'pending' WHERE step_id = ?", (row["step_id"],)
                )
                add_event(
                    self.conn,
                    row["job_id"],
                    row["seq"],
                    row["stage"],
                    "recovered after restart",
                    None,
                )
            self.conn.execute("UPDATE device_jobs SET status = 'QUEUED' WHERE status = 'RUNNING'")
        waiting = self.conn.execute(
            "SELECT job_id FROM steps WHERE kind = 'fanin' AND state = 'waiting'"
        ).fetchall()
        for row in waiting:
            with transaction(self.conn):
                self._maybe_fan_in(row["job_id"])
        if rows:
            log.info("recovered %d running steps", len(rows))

    # -- dispatch --------------------------------------------------------------------
    def dispatch(self) -> None:
        self.submit_executes()
        for worker in self.workers:
            if worker.busy is not None or not worker.process.is_alive():
                continue
            if not self.assign_next(worker):
                break

    def submit_executes(self) -> None:
        """Queue pending execute steps on their device: once per step, by key."""
        rows = self.conn.execute(
            "SELECT * FROM steps WHERE kind = 'execute' AND state = 'pending' ORDER BY step_id"
        ).fetchall()
        for row in rows:
            decision = Decision.from_json(json.loads(row["detail"]))
            key = f"{row['job_id']}/{row['seq']}"
            if self.remote.is_remote(decision.backend):
                self.queue_remote(row, decision)
                continue
            with transaction(self.conn):
                existing = self.conn.execute(
                    "SELECT device_job_id FROM device_jobs WHERE idempotency_key = ?", (key,)
                ).fetchone()
                if existing is None:
                    device_job_id = "dev-" + secrets.token_hex(6)
                    self.conn.execute(
                        "INSERT INTO device_jobs (device_job_id, idempotency_key, job_id, seq, "
                        "backend,"
                        " request_key, status, submitted_at) VALUES (?,?,?,?,?,?,?,?)",
                        (
                            device_job_id,
                            key,
                            row["job_id"],
                            row["seq"],
                            decision.backend,
                            decision.request_key,
                            "QUEUED",
                            time.time(),
                        ),
                    )
                else:
                    device_job_id = existing["device_job_id"]
                self.conn.execute(
                    "UPDATE steps SET state = 'waiting' WHERE step_id = ?", (row["step_id"],)
                )
                plan = decision.plan or {}
                status = (
                    JobStatus.WAITING_FOR_QPU if plan.get("tier") == "qpu" else JobStatus.RUNNING
                )
                self._set_job(
                    row["job_id"],
                    status=status,
                    stage="execute",
                    seq=row["seq"],
                    provider_job_id=device_job_id,
                )
                add_event(
                    self.conn,
                    row["job_id"],
                    row["seq"],
                    "execute",
                    "submitted",
                    {"backend": decision.backend, "provider_job_id": device_job_id, "plan": plan},
                )
            self._log(
                row["job_id"],
                row["seq"],
                "execute",
                f"submitted to {decision.backend}: provider job {device_job_id} (key {key}); "
                f"plan {plan.get('tier')}, {plan.get('method')}, ~{plan.get('memory_mb')} MiB",
            )

    def queue_remote(self, row: sqlite3.Row, decision: Decision) -> None:
        """An execute step for a QPU service: the remote dispatcher submits it (once)."""
        assert decision.backend is not None and decision.request_key is not None
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE steps SET state = 'waiting' WHERE step_id = ?", (row["step_id"],)
            )
            self._set_job(
                row["job_id"], status=JobStatus.WAITING_FOR_QPU, stage="execute", seq=row["seq"]
            )
            add_event(
                self.conn,
                row["job_id"],
                row["seq"],
                "execute",
                "queued for provider",
                {"backend": decision.backend, "plan": decision.plan or {}},
            )
        self.remote.track(row, decision.backend, decision.request_key)

    def assign_next(self, worker: WorkerHandle) -> bool:
        step = self.conn.execute(
            "SELECT * FROM steps WHERE kind = 'stage' AND state = 'pending' ORDER BY step_id "
            "LIMIT 1"
        ).fetchone()
        device = self._next_device_job()
        if step is None and device is None:
            return False
        if step is not None and (device is None or step["created_at"] <= device["submitted_at"]):
            self.start_stage(worker, step)
        else:
            assert device is not None
            self.start_device_job(worker, device)
        return True

    def _next_device_job(self) -> sqlite3.Row | None:
        running: dict[str, int] = {}
        for row in self.conn.execute(
            "SELECT backend, COUNT(*) AS n FROM device_jobs WHERE status = 'RUNNING' GROUP BY "
            "backend"
        ):
            running[row["backend"]] = row["n"]
        for row in self.conn.execute(
            "SELECT * FROM device_jobs WHERE status = 'QUEUED' ORDER BY submitted_at LIMIT 200"
        ):
            if running.get(row["backend"], 0) < self._concurrency(row["backend"]):
                return row
        return None

    def _concurrency(self, backend: str) -> int:
        if backend not in self.device_concurrency:
            from qlayer.providers.registry import resolve

            try:
                limit = resolve(backend).max_concurrency
            except Exception:
                limit = 1
            override = os.environ.get("QLAYER_DEVICE_CONCURRENCY")
            if override and backend.startswith("fake_"):
                limit = int(override)
            self.device_concurrency[backend] = max(
                1, limit if backend.startswith("fake_") else self.n_workers
            )
        return self.device_concurrency[backend]

    def start_stage(self, worker: WorkerHandle, step: sqlite3.Row) -> None:
        job = state.get_job(self.conn, step["job_id"])
        detail = json.loads(step["detail"] or "{}")
        compute = detail.get("compute") or {}
        memory_mb = int(compute.get("memory_mb") or 2048)
        timeout_s = int(compute.get("timeout_s") or 900)
        if self.limits.local_memory_mb and memory_mb > self.limits.local_memory_mb:
            with transaction(self.conn):
                self.conn.execute(
                    "UPDATE steps SET state = 'done' WHERE step_id = ?", (step["step_id"],)
                )
                self._fail(
                    job.job_id,
                    step["seq"],
                    step["stage"],
                    "PlannerError",
                    f"stage {step['stage']!r} declares memory_mb={memory_mb}; this machine "
                    f"offers {self.limits.local_memory_mb} MiB",
                )
            return
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE steps SET state = 'running', started_at = ?, attempts = attempts + 1 "
                "WHERE step_id = ?",
                (time.time(), step["step_id"]),
            )
            self._set_job(
                job.job_id, status=JobStatus.RUNNING, stage=step["stage"], seq=step["seq"]
            )
            add_event(
                self.conn,
                job.job_id,
                step["seq"],
                step["stage"],
                "started",
                {"attempt": step["attempts"] + 1, "worker": worker.process.pid},
            )
        runs = state.stage_runs(self.conn, job.job_id)
        worker.send(
            {
                "op": "stage",
                "program_id": job.program_id,
                "seq": step["seq"],
                "stage": step["stage"],
                "memory_mb": memory_mb,
                "job": {
                    "job_id": job.job_id,
                    "arguments": job.arguments,
                    "backend": job.backend,
                    "index": job.item_index,
                    "runs": runs,
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

    def _riders_for(self, lead: sqlite3.Row) -> list[dict[str, Any]]:
        """Queued requests for the same device that can run with ``lead`` as one job."""
        from qlayer import coalesce

        if not coalesce.enabled():
            return []
        try:
            lead_raw = self.store.get_json(lead["request_key"])
            key = coalesce.compat_key(lead_raw)
        except Exception:
            return []
        if key is None:
            return []
        riders: list[dict[str, Any]] = []
        pubs = len(lead_raw["pubs"])
        for row in self.conn.execute(
            "SELECT * FROM device_jobs WHERE status = 'QUEUED' AND backend = ? "
            "AND device_job_id != ? ORDER BY submitted_at LIMIT 500",
            (lead["backend"], lead["device_job_id"]),
        ):
            try:
                raw = self.store.get_json(row["request_key"])
            except Exception:
                continue  # a corrupted request fails on its own run, not here
            if coalesce.compat_key(raw) != key or pubs + len(raw["pubs"]) > coalesce.MAX_PUBS:
                continue
            pubs += len(raw["pubs"])
            riders.append(
                {
                    "device_job_id": row["device_job_id"],
                    "job_id": row["job_id"],
                    "seq": row["seq"],
                    "request_key": row["request_key"],
                }
            )
            if len(riders) + 1 >= coalesce.MAX_MEMBERS:
                break
        return riders

    def start_device_job(self, worker: WorkerHandle, device: sqlite3.Row) -> None:
        riders = self._riders_for(device)
        lead = {
            "device_job_id": device["device_job_id"],
            "job_id": device["job_id"],
            "seq": device["seq"],
        }
        with transaction(self.conn):
            for member in [lead, *riders]:
                self.conn.execute(
                    "UPDATE device_jobs SET status = 'RUNNING', started_at = ?, "
                    "attempts = attempts + 1 WHERE device_job_id = ?",
                    (time.time(), member["device_job_id"]),
                )
                detail: dict[str, Any] = {
                    "provider_job_id": member["device_job_id"],
                    "backend": device["backend"],
                    "worker": worker.process.pid,
                }
                if riders:
                    detail["coalesced_with"] = [
                        m["device_job_id"] for m in [lead, *riders] if m is not member
                    ]
                add_event(
                    self.conn, member["job_id"], member["seq"], "execute", "device running", detail
                )
        worker.send(
            {
                "op": "device",
                "backend": device["backend"],
                "request_key": device["request_key"],
                "job_id": device["job_id"],
                "seq": device["seq"],
                "riders": riders,
            },
            Assignment(
                "device",
                device["job_id"],
                device["seq"],
                "execute",
                device_job_id=device["device_job_id"],
                riders=riders,
            ),
        )

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
        if assignment.kind == "stage":
            self.finish_stage(assignment, reply)
        else:
            self.finish_device_job(assignment, reply)

    def finish_stage(self, assignment: Assignment, reply: dict[str, Any]) -> None:
        assert assignment.step_id is not None
        if not reply.get("ok"):
            decision = Decision.failed(
                assignment.seq,
                assignment.stage,
                reply.get("error_type", "InternalError"),
                f"qlayer failed running stage {assignment.stage!r}: {reply.get('message')}",
            )
            self._log(
                assignment.job_id,
                assignment.seq,
                assignment.stage or "stage",
                reply.get("traceback", ""),
            )
        else:
            decision = Decision.from_json(reply["decision"])
        with transaction(self.conn):
            self.apply(assignment.job_id, assignment.step_id, decision)

    def finish_device_job(self, assignment: Assignment, reply: dict[str, Any]) -> None:
        riders = reply.get("riders") or {}
        for rider in assignment.riders:
            answer = riders.get(rider["device_job_id"]) or {
                "ok": False,
                "error_type": "InternalError",
                "message": "the coalesced run returned no result for this request",
            }
            self._finish_one_device_job(
                Assignment(
                    "device",
                    rider["job_id"],
                    rider["seq"],
                    "execute",
                    device_job_id=rider["device_job_id"],
                ),
                answer,
            )
        self._finish_one_device_job(assignment, reply)

    def _finish_one_device_job(self, assignment: Assignment, reply: dict[str, Any]) -> None:
        step = self.conn.execute(
            "SELECT step_id FROM steps WHERE job_id = ? AND seq = ?",
            (assignment.job_id, assignment.seq),
        ).fetchone()
        with transaction(self.conn):
            status = "DONE" if reply.get("ok") else "ERROR"
            self.conn.execute(
                "UPDATE device_jobs SET status = ?, finished_at = ?, message = ? WHERE "
                "device_job_id = ? "
                "AND status = 'RUNNING'",
                (status, time.time(), reply.get("message"), assignment.device_job_id),
            )
            if reply.get("ok"):
                decision = Decision.from_json(reply["decision"])
                self._log(
                    assignment.job_id,
                    assignment.seq,
                    "execute",
                    f"provider job {assignment.device_job_id} done",
                )
            else:
                message = f"backend job {assignment.device_job_id} failed: {reply.get('message')}"
                self._log(assignment.job_id, assignment.seq, "execute", message + "\n")
                decision = Decision.failed(
                    assignment.seq, "execute", reply.get("error_type", "BackendError"), message
                )
            if step is not None:
                self.apply(assignment.job_id, step["step_id"], decision)

    # -- transitions (caller holds the transaction) ----------------------------------
    def apply(self, job_id: str, step_id: int, decision: Decision) -> None:
        """Record a step's decision and queue what follows: the interpreter's routes."""
        step = self.conn.execute("SELECT * FROM steps WHERE step_id = ?", (step_id,)).fetchone()
        if step is None or step["state"] == "done":
            return  # already applied (a duplicate reply)
        self.conn.execute("UPDATE steps SET state = 'done' WHERE step_id = ?", (step_id,))
        job = state.get_job(self.conn, job_id)
        if job.status.is_final:
            return
        if job.cancel_requested:
            self._cancel_job(job_id)
            return
        label = step["stage"] if step["kind"] == "stage" else step["kind"]
        if decision.kind != "error":
            add_event(
                self.conn, job_id, step["seq"], label, "finished", {"decision": decision.kind}
            )
        action = ROUTES[decision.kind][0]  # the interpreter's table drives the engine
        getattr(self, "_" + action)(job, decision)

    # The five routes of qlayer.interpreter.ROUTES (caller holds the transaction).
    def _queue_stage(self, job: state.JobRow, decision: Decision) -> None:
        self._insert_step(job.job_id, decision, "stage", decision.stage, "pending")
        self._set_job(job.job_id, status=JobStatus.RUNNING, stage=decision.stage, seq=decision.seq)

    def _dispatch_execute(self, job: state.JobRow, decision: Decision) -> None:
        self._insert_step(job.job_id, decision, "execute", "execute", "pending")
        self._set_job(job.job_id, status=JobStatus.RUNNING, stage="execute", seq=decision.seq)

    def _finish_job(self, job: state.JobRow, decision: Decision) -> None:
        self._set_job(job.job_id, status=JobStatus.DONE, stage=None, finished=True)
        add_event(self.conn, job.job_id, decision.seq, None, "done", None)
        self._child_finished(job)

    def _fail_job(self, job: state.JobRow, decision: Decision) -> None:
        self._fail(
            job.job_id,
            decision.seq,
            decision.stage,
            decision.error_type or "Error",
            decision.message or "",
        )

    def _insert_step(
        self, job_id: str, decision: Decision, kind: str, stage: str | None, step_state: str
    ) -> None:
        self.conn.execute(
            "INSERT INTO steps (job_id, seq, kind, stage, state, detail, created_at) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                job_id,
                decision.seq,
                kind,
                stage,
                step_state,
                json.dumps(decision.to_json()),
                time.time(),
            ),
        )

    def _start_children(self, job: state.JobRow, decision: Decision) -> None:
        """The fan-out route: one child job per item; the parent waits in a fan-in step."""
        assert decision.items_key is not None and decision.stage is not None
        raw = self.store.get_json(decision.items_key)
        items = raw["items"]
        self._insert_step(job.job_id, decision, "fanin", "fan-in", "waiting")
        compute = self._compute_of(decision)
        for index, item in enumerate(items):
            child = child_job_id(job.job_id, decision.seq, index)
            input_key = keys.stage_input(child, 0, decision.stage)
            self.store.put_json(input_key, {"data": item, "state": None})
            state.insert_job(
                self.conn,
                job_id=child,
                program_id=job.program_id,
                workflow=job.workflow,
                arguments=job.arguments,
                backend=job.backend,
                first_stage=decision.stage,
                input_key=input_key,
                parent_id=job.job_id,
                item_index=index,
            )
            if compute:
                self.conn.execute(
                    "UPDATE steps SET detail = ? WHERE job_id = ? AND seq = 0",
                    (json.dumps({"input_key": input_key, "compute": compute}), child),
                )
        self.conn.execute(
            "UPDATE jobs SET children_total = ?, children_done = 0 WHERE job_id = ?",
            (len(items), job.job_id),
        )
        self._set_job(
            job.job_id,
            status=JobStatus.RUNNING,
            stage=f"{decision.stage} ×{len(items)}",
            seq=decision.seq,
        )
        add_event(
            self.conn,
            job.job_id,
            decision.seq,
            decision.stage,
            "fanned out",
            {"children": len(items)},
        )

    def _compute_of(self, decision: Decision) -> dict[str, Any] | None:
        return decision.compute  # a fan-out decision carries its children's first stage compute

    def _child_finished(self, child: state.JobRow) -> None:
        if child.parent_id is None:
            return
        self.conn.execute(
            "UPDATE jobs SET children_done = children_done + 1 WHERE job_id = ?", (child.parent_id,)
        )
        self._maybe_fan_in(child.parent_id)

    def _maybe_fan_in(self, parent_id: str) -> None:
        parent = state.get_job(self.conn, parent_id)
        if parent.status.is_final or parent.children_done < parent.children_total:
            return
        step = self.conn.execute(
            "SELECT * FROM steps WHERE job_id = ? AND kind = 'fanin' AND state = 'waiting'",
            (parent_id,),
        ).fetchone()
        if step is None:
            return
        fanout = Decision.from_json(json.loads(step["detail"]))
        assert fanout.items_key is not None
        items_raw = self.store.get_json(fanout.items_key)
        decision = fan_in(self.store, parent_id, step["seq"], items_raw, fanout.count)
        self.apply(parent_id, step["step_id"], decision)

    def _fail(
        self, job_id: str, seq: int, stage: str | None, error_type: str, message: str
    ) -> None:
        self.store.put_json(
            keys.job_error(job_id),
            {"error_type": error_type, "message": message, "stage": stage, "seq": seq},
        )
        self.conn.execute(
            "UPDATE jobs SET status = ?, message = ?, error_type = ?, updated_at = ?, finished_at "
            "= ? "
            "WHERE job_id = ?",
            (JobStatus.ERROR.value, message, error_type, time.time(), time.time(), job_id),
        )
        add_event(
            self.conn, job_id, seq, stage, "error", {"error_type": error_type, "message": message}
        )
        job = state.get_job(self.conn, job_id)
        if job.parent_id is not None:
            parent = state.get_job(self.conn, job.parent_id)
            if not parent.status.is_final:
                self._cancel_children(parent.job_id, except_id=job_id)
                self._fail(
                    parent.job_id,
                    parent.seq,
                    parent.stage,
                    error_type,
                    f"fan-out item {job.item_index} ({job_id}) failed: {message}",
                )
        self._cancel_children(job_id)

    def _cancel_children(self, job_id: str, except_id: str | None = None) -> None:
        rows = self.conn.execute(
            "SELECT job_id FROM jobs WHERE parent_id = ? AND status NOT IN "
            "('DONE','ERROR','CANCELLED')",
            (job_id,),
        ).fetchall()
        for row in rows:
            if row["job_id"] != except_id:
                self.conn.execute(
                    "UPDATE jobs SET cancel_requested = 1 WHERE job_id = ?", (row["job_id"],)
                )
                self._cancel_job(row["job_id"])

    def _set_job(
        self,
        job_id: str,
        *,
        status: JobStatus,
        stage: str | None = None,
        seq: int | None = None,
        provider_job_id: str | None = None,
        finished: bool = False,
    ) -> None:
        now = time.time()
        self.conn.execute(
            "UPDATE jobs SET status = ?, stage = ?, seq = COALESCE(?, seq), "
            "provider_job_id = COALESCE(?, provider_job_id), updated_at = ?, "
            "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE job_id = ?",
            (status.value, stage, seq, provider_job_id, now, finished, now, job_id),
        )

    def _log(self, job_id: str, seq: int, stage: str, text: str) -> None:
        if text:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.store.append_text(
                keys.log_key(job_id, seq, stage), f"{stamp} qlayer  {text.rstrip()}\n"
            )

    # -- cancel, deadlines, deaths ---------------------------------------------------
    def handle_cancels(self) -> None:
        rows = self.conn.execute(
            "SELECT job_id FROM jobs WHERE cancel_requested = 1 AND status NOT IN "
            "('DONE','ERROR','CANCELLED')"
        ).fetchall()
        for row in rows:
            with transaction(self.conn):
                self._cancel_job(row["job_id"])

    def _cancel_job(self, job_id: str) -> None:
        """Stop a job wherever it is: kill its worker, cancel its device jobs, mark it."""
        for worker in self.workers:
            if worker.busy is not None and worker.busy.involves(job_id):
                log.info("cancel: stopping worker %s running %s", worker.process.pid, job_id)
                busy, worker.busy = worker.busy, None
                self.replace_worker(worker)
                if busy.kind == "device":  # the others it was running wait for the device again
                    for member in busy.members():
                        if member["job_id"] != job_id:
                            self.conn.execute(
                                "UPDATE device_jobs SET status = 'QUEUED' WHERE device_job_id = ? "
                                "AND status = 'RUNNING'",
                                (member["device_job_id"],),
                            )
        cancelled = self.conn.execute(
            "UPDATE device_jobs SET status = 'CANCELLED', finished_at = ? WHERE job_id = ? "
            "AND status IN ('QUEUED','RUNNING') RETURNING device_job_id",
            (time.time(), job_id),
        ).fetchall()
        for row in cancelled:
            add_event(
                self.conn,
                job_id,
                None,
                "execute",
                "device job cancelled",
                {"provider_job_id": row["device_job_id"]},
            )
        self.remote.cancel_job(job_id)
        self.conn.execute(
            "UPDATE steps SET state = 'done' WHERE job_id = ? AND state != 'done'", (job_id,)
        )
        self._set_job(job_id, status=JobStatus.CANCELLED, stage=None, finished=True)
        add_event(self.conn, job_id, None, None, "cancelled", None)
        children = self.conn.execute(
            "SELECT job_id FROM jobs WHERE parent_id = ? AND status NOT IN "
            "('DONE','ERROR','CANCELLED')",
            (job_id,),
        ).fetchall()
        for row in children:
            self._cancel_job(row["job_id"])

    def check_deadlines(self) -> None:
        now = time.time()
        for worker in list(self.workers):
            busy = worker.busy
            if busy is None or busy.deadline is None or now < busy.deadline:
                continue
            log.warning(
                "stage %s of %s passed its timeout; killing worker", busy.stage, busy.job_id
            )
            worker.busy = None
            self.replace_worker(worker)
            message = (
                f"stage {busy.stage!r} exceeded its timeout of {busy.timeout_s} s and was stopped"
            )
            self._log(busy.job_id, busy.seq, busy.stage or "stage", message)
            with transaction(self.conn):
                if busy.step_id is not None:
                    self.conn.execute(
                        "UPDATE steps SET state = 'done' WHERE step_id = ?", (busy.step_id,)
                    )
                self._fail(busy.job_id, busy.seq, busy.stage, "Timeout", message)

    def worker_died(self, worker: WorkerHandle) -> None:
        busy, worker.busy = worker.busy, None
        code = worker.process.exitcode
        self.replace_worker(worker)
        if busy is None:
            return
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.warning("worker died (%s) running %s of %s", how, busy.stage, busy.job_id)
        with transaction(self.conn):
            if busy.kind == "stage":
                row = self.conn.execute(
                    "SELECT attempts FROM steps WHERE step_id = ?", (busy.step_id,)
                ).fetchone()
                attempts = row["attempts"] if row else MAX_ATTEMPTS
                if attempts >= MAX_ATTEMPTS:
                    message = (
                        f"the worker running stage {busy.stage!r} died ({how}) {attempts} times. "
                        f"If it ran out of memory, raise memory_mb (now {busy.memory_mb} MiB) in "
                        "@wf.stage()."
                    )
                    self._log(busy.job_id, busy.seq, busy.stage or "stage", message)
                    self.conn.execute(
                        "UPDATE steps SET state = 'done' WHERE step_id = ?", (busy.step_id,)
                    )
                    self._fail(busy.job_id, busy.seq, busy.stage, "WorkerDied", message)
                else:
                    self.conn.execute(
                        "UPDATE steps SET state = 'pending' WHERE step_id = ?", (busy.step_id,)
                    )
                    add_event(
                        self.conn,
                        busy.job_id,
                        busy.seq,
                        busy.stage,
                        "worker died, retrying",
                        {"how": how},
                    )
            else:
                for member in busy.members():
                    self._device_member_died(member, how)

    def _device_member_died(self, member: dict[str, Any], how: str) -> None:
        """A device job whose simulator died: queued again, or failed after MAX_ATTEMPTS."""
        row = self.conn.execute(
            "SELECT attempts FROM device_jobs WHERE device_job_id = ?", (member["device_job_id"],)
        ).fetchone()
        if row and row["attempts"] >= MAX_ATTEMPTS:
            self.conn.execute(
                "UPDATE device_jobs SET status = 'ERROR', message = ? WHERE device_job_id = ?",
                (f"simulator died ({how})", member["device_job_id"]),
            )
            self._fail(
                member["job_id"],
                member["seq"],
                "execute",
                "WorkerDied",
                f"the simulator running {member['device_job_id']} died ({how}) "
                f"{row['attempts']} times",
            )
        else:
            self.conn.execute(
                "UPDATE device_jobs SET status = 'QUEUED' WHERE device_job_id = ? AND "
                "status = 'RUNNING'",
                (member["device_job_id"],),
            )


# --------------------------------------------------------------------------- remote providers


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class RemoteConfig:
    """How the daemon drives QPU services (``AsyncProvider`` backends). From the environment:

    * ``QLAYER_QPU_TIMEOUT_S`` (7 days): an execute step whose provider job has not
      completed this long after the step was queued ends the job in ERROR (and the
      provider job is cancelled): a completion that never arrives is never a hang;
    * ``QLAYER_QPU_POLL_S`` (5 s): time between two polls of one provider job;
    * ``QLAYER_QPU_POLLS_PER_S`` (10): polls per second per provider (token bucket);
    * ``QLAYER_QPU_RETRIES`` (5) and ``QLAYER_QPU_RETRY_BASE_S`` (1 s): backoff of a
      retryable provider error (throttling, transient network) within one call;
    * ``QLAYER_QPU_RETRY_LATER_S`` (30 s): when a call still fails after its retries,
      try again this much later (the timeout above bounds it all);
    * ``QLAYER_PROVIDER_THREADS`` (8): threads making provider calls.
    """

    timeout_s: float = 7 * 24 * 3600.0
    poll_s: float = 5.0
    polls_per_s: float = 10.0
    retries: int = 5
    retry_base_s: float = 1.0
    retry_later_s: float = 30.0
    threads: int = 8

    @classmethod
    def from_env(cls) -> RemoteConfig:
        return cls(
            timeout_s=_env_float("QLAYER_QPU_TIMEOUT_S", cls.timeout_s),
            poll_s=_env_float("QLAYER_QPU_POLL_S", cls.poll_s),
            polls_per_s=_env_float("QLAYER_QPU_POLLS_PER_S", cls.polls_per_s),
            retries=int(_env_float("QLAYER_QPU_RETRIES", cls.retries)),
            retry_base_s=_env_float("QLAYER_QPU_RETRY_BASE_S", cls.retry_base_s),
            retry_later_s=_env_float("QLAYER_QPU_RETRY_LATER_S", cls.retry_later_s),
            threads=int(_env_float("QLAYER_PROVIDER_THREADS", cls.threads)),
        )


@dataclass
class RemoteWork:
    """One execute step waiting on a remote provider (the daemon's memory of it; the
    durable truth is the step row and the ledger entry)."""

    key: str
    job_id: str
    seq: int
    step_id: int
    backend: str
    request_key: str
    queued_at: float  # the step's creation: the timeout counts from here
    phase: str = "submit"  # submit | poll
    provider_job_id: str | None = None
    next_at: float = 0.0
    busy: bool = False  # a provider call for it is in flight on a thread
    holds_slot: bool = False  # counted against the backend's max_in_flight
    last_state: str | None = None
    cancelled: bool = False


class RemoteDispatcher:
    """Submits execute steps of remote backends exactly once, polls them, collects results.

    Provider calls are network calls: they run on a small thread pool, never on the
    daemon's loop, and never on the warm workers (which are the machine's compute for
    stages and simulations; a worker blocked for minutes on a slow API would starve
    them). The threads touch only the provider, the ledger (their own SQLite
    connection) and the artifact store; every job transition stays on the loop, in
    one transaction each. A thread reports back through a queue and wakes the loop
    with a byte on a socket pair.
    """

    def __init__(self, daemon: Daemon) -> None:
        from qlayer.providers.registry import configured_limits, plugins

        self.daemon = daemon
        self.config = RemoteConfig.from_env()
        self.ledger = SqliteLedger(daemon.home.db)
        self.owner = f"daemon-{os.getpid()}-{secrets.token_hex(4)}"
        self.works: dict[str, RemoteWork] = {}
        self.submits = RateLimiter(configured_limits())
        poll_limits = DispatchLimits(
            max_in_flight=10**9,
            submits_per_s=self.config.polls_per_s,
            burst=max(1, int(self.config.polls_per_s)),
            source="QLAYER_QPU_POLLS_PER_S",
        )
        names = {"aer", "ibm", "braket", *(p.prefix for p in plugins())}
        self.polls = RateLimiter({name: poll_limits for name in names})
        self.results: queue.SimpleQueue[tuple[str, str, Any, BaseException | None]] = (
            queue.SimpleQueue()
        )
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, self.config.threads), thread_name_prefix="provider"
        )
        self._remote_backends: dict[str, bool] = {}
        self.slots: dict[str, int] = {}  # provider jobs in flight per backend (ours)

    # -- which backends ---------------------------------------------------------------
    def is_remote(self, backend: str | None) -> bool:
        if not backend:
            return False
        if backend not in self._remote_backends:
            from qlayer.providers.registry import is_remote

            self._remote_backends[backend] = is_remote(backend)
        return self._remote_backends[backend]

    # -- loop integration ----------------------------------------------------------------
    def track(self, row: sqlite3.Row, backend: str, request_key: str) -> None:
        """An execute step of a remote backend is queued (or queued again: a duplicate
        entry goes through ``submit_once`` again and finds the recorded provider job)."""
        key = f"{row['job_id']}/{row['seq']}"
        work = self.works.get(key)
        if work is None:
            work = RemoteWork(
                key,
                row["job_id"],
                row["seq"],
                row["step_id"],
                backend,
                request_key,
                queued_at=row["created_at"],
            )
            self.works[key] = work
        elif not work.busy:
            work.phase, work.next_at = "submit", 0.0

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def next_timeout(self, now: float) -> float | None:
        times = []
        for work in self.works.values():
            times.append(work.queued_at + self.config.timeout_s)
            if not work.busy:
                times.append(work.next_at)
        return min(times) - now if times else None

    def drain_wake(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    # -- recovery ------------------------------------------------------------------------
    def recover(self) -> None:
        """Reload waiting remote steps after a restart: polled again, never resubmitted."""
        # This daemon holds the home's lock: no other dispatcher is alive, so claims
        # without a provider id were left by a killed daemon. Take them over now; the
        # next submit_once asks the provider (find_job) before submitting anything.
        self.ledger.expire_claims()
        conn = self.daemon.conn
        rows = conn.execute(
            "SELECT * FROM steps WHERE kind = 'execute' AND state = 'waiting' ORDER BY step_id"
        ).fetchall()
        for row in rows:
            decision = Decision.from_json(json.loads(row["detail"]))
            if not self.is_remote(decision.backend):
                continue
            assert decision.backend is not None and decision.request_key is not None
            self.track(row, decision.backend, decision.request_key)
            work = self.works[f"{row['job_id']}/{row['seq']}"]
            entry = self.ledger.get(work.key)
            if entry is not None and entry.provider_job_id is not None:
                work.phase, work.provider_job_id = "poll", entry.provider_job_id
                if entry.state not in FINAL_STATES:
                    self._take_slot(work)
                work.last_state = entry.state
        # Provider jobs whose qlayer job ended while the daemon was down (a cancel that
        # did not reach the provider yet): cancel them now.
        for entry in self.ledger.entries_in(ACTIVE_STATES):
            if entry.key in self.works:
                continue
            job_id = entry.key.rpartition("/")[0]
            row = conn.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None or JobStatus(row["status"]).is_final:
                self._call(entry.key, "cancel", self._cancel_call(entry.key, entry.backend))
        if self.works:
            log.info("recovered %d remote execute steps", len(self.works))

    # -- scheduling -------------------------------------------------------------------
    def pump(self) -> None:
        """Start the provider calls that are due, within each backend's limits."""
        now = time.time()
        for work in list(self.works.values()):
            if work.busy or work.cancelled:
                continue
            if now >= work.queued_at + self.config.timeout_s:
                self._timed_out(work)
                continue
            if work.next_at > now:
                continue
            if work.phase == "submit":
                if not work.holds_slot:
                    in_flight = self.slots.get(work.backend, 0)
                    wait_s = self.submits.try_acquire(work.backend, in_flight=in_flight)
                    if wait_s > 0:
                        # At the cap: woken by a release. Rate-limited: retry when a token is due.
                        work.next_at = float("inf") if wait_s == float("inf") else now + wait_s
                        continue
                    self._take_slot(work)
                work.busy = True
                self._call(work.key, "submit", self._submit_call(work))
            else:
                wait_s = self.polls.try_acquire(work.backend)
                if wait_s > 0:
                    work.next_at = now + min(wait_s, 1.0)
                    continue
                self.polls.release(work.backend)
                work.busy = True
                self._call(work.key, "poll", self._poll_call(work))

    def _take_slot(self, work: RemoteWork) -> None:
        work.holds_slot = True
        self.slots[work.backend] = self.slots.get(work.backend, 0) + 1

    def _release(self, work: RemoteWork) -> None:
        if work.holds_slot:
            work.holds_slot = False
            self.slots[work.backend] = max(0, self.slots.get(work.backend, 1) - 1)
            for other in self.works.values():  # wake those waiting for a slot
                if other.backend == work.backend and other.next_at == float("inf"):
                    other.next_at = 0.0

    def _forget(self, work: RemoteWork) -> None:
        self._release(work)
        self.works.pop(work.key, None)

    # -- provider calls (on the pool's threads) ------------------------------------------
    def _call(self, key: str, kind: str, fn: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                outcome: Any = fn()
                error: BaseException | None = None
            except BaseException as exc:  # reported to the loop, which decides
                outcome, error = None, exc
            self.results.put((key, kind, outcome, error))
            try:
                self.wake_w.send(b"!")
            except OSError:
                pass

        self.pool.submit(run)

    def _retry(self, fn: Callable[[], Any]) -> Any:
        return with_retries(fn, self.config.retries, self.config.retry_base_s, max_delay=60.0)

    def _submit_call(self, work: RemoteWork) -> Callable[[], str]:
        from qlayer.providers.registry import async_provider_for

        key, backend, request_key = work.key, work.backend, work.request_key
        store, ledger, owner = self.daemon.store, self.ledger, self.owner

        def submit() -> str:
            provider = async_provider_for(backend)
            request = decode_request(store.get_json(request_key))
            return str(
                self._retry(
                    lambda: submit_once(
                        ledger,
                        provider,
                        key,
                        backend,
                        request,
                        request_key=request_key,
                        owner=owner,
                    )
                )
            )

        return submit

    def _poll_call(self, work: RemoteWork) -> Callable[[], Any]:
        from qlayer.providers.registry import async_provider_for

        key, backend, request_key = work.key, work.backend, work.request_key
        job_id, seq = work.job_id, work.seq
        store, ledger = self.daemon.store, self.ledger

        def poll() -> tuple[Any, Decision | None]:
            provider = async_provider_for(backend)
            status = self._retry(lambda: poll_once(ledger, provider, key))
            if status.state != "DONE":
                return status, None
            recorded = keys.step_dir(job_id, seq, "execute") + "output.json"
            if store.exists(recorded):  # collected before a crash: not fetched again
                try:
                    return status, Decision.from_json(store.get_json(recorded))
                except (ValueError, TypeError, KeyError):
                    pass
            entry = ledger.get(key)
            assert entry is not None and entry.provider_job_id is not None
            provider_job_id = entry.provider_job_id
            result = self._retry(lambda: provider.result(provider_job_id))
            request_raw = store.get_json(request_key)
            return status, complete_execute(store, job_id, seq, request_raw, result)

        return poll

    def _cancel_call(self, key: str, backend: str) -> Callable[[], str | None]:
        from qlayer.providers.registry import async_provider_for

        ledger = self.ledger

        def cancel() -> str | None:
            provider = async_provider_for(backend)
            entry = ledger.get(key)
            provider_job_id = entry.provider_job_id if entry else None
            if provider_job_id is None and isinstance(provider, FindsJobs):
                # A claim whose submission may have been accepted before a crash.
                provider_job_id = self._retry(lambda: provider.find_job(backend, key))
                if provider_job_id is not None:
                    ledger.record_submission(key, provider_job_id)
            if provider_job_id is not None:
                found = provider_job_id
                self._retry(lambda: provider.cancel(found))
            if entry is not None:
                ledger.set_state(key, "CANCELLED", "cancelled by qlayer")
            return provider_job_id

        return cancel

    # -- results (on the loop) -----------------------------------------------------------
    def collect(self) -> None:
        """Apply what the provider calls returned."""
        while True:
            try:
                key, kind, outcome, error = self.results.get_nowait()
            except queue.Empty:
                return
            try:
                self._collect_one(key, kind, outcome, error)
            except Exception:  # never let one bad reply stop the daemon
                log.exception("handling the %s reply of %s failed", kind, key)

    def _collect_one(self, key: str, kind: str, outcome: Any, error: BaseException | None) -> None:
        daemon, conn = self.daemon, self.daemon.conn
        job_id = key.rpartition("/")[0]
        if kind == "cancel":
            with transaction(conn):
                if error is not None:
                    add_event(
                        conn,
                        job_id,
                        None,
                        "execute",
                        "provider cancel failed",
                        {"message": str(error)},
                    )
                else:
                    add_event(
                        conn,
                        job_id,
                        None,
                        "execute",
                        "provider job cancelled",
                        {"provider_job_id": outcome},
                    )
            return
        work = self.works.get(key)
        if work is None:
            return
        work.busy = False
        now = time.time()
        if work.cancelled:  # cancelled while the call was in flight: cancel what it made
            self._forget(work)
            self._call(key, "cancel", self._cancel_call(key, work.backend))
            return
        if error is not None:
            self._call_failed(work, kind, error, now)
            return
        if kind == "submit":
            provider_job_id = str(outcome)
            first = work.provider_job_id != provider_job_id
            work.provider_job_id, work.phase = provider_job_id, "poll"
            work.next_at = now + self.config.poll_s
            if first:
                with transaction(conn):
                    daemon._set_job(
                        job_id,
                        status=JobStatus.WAITING_FOR_QPU,
                        stage="execute",
                        seq=work.seq,
                        provider_job_id=provider_job_id,
                    )
                    add_event(
                        conn,
                        job_id,
                        work.seq,
                        "execute",
                        "submitted",
                        {
                            "backend": work.backend,
                            "provider_job_id": provider_job_id,
                            "idempotency_key": key,
                        },
                    )
                daemon._log(
                    job_id,
                    work.seq,
                    "execute",
                    f"submitted to {work.backend}: provider job {provider_job_id} (key {key})",
                )
            return
        status, decision = outcome
        if status.state != work.last_state:
            work.last_state = status.state
            detail: dict[str, Any] = {
                "provider_job_id": work.provider_job_id,
                "backend": work.backend,
                "state": status.state,
            }
            if status.queue_position is not None:
                detail["queue_position"] = status.queue_position
            if status.usage_seconds is not None:
                detail["usage_seconds"] = status.usage_seconds
            event = "device running" if status.state == "RUNNING" else "provider state"
            with transaction(conn):
                add_event(conn, job_id, work.seq, "execute", event, detail)
        if status.state in ("QUEUED", "RUNNING", "SUBMITTED"):
            work.next_at = now + self.config.poll_s
            return
        self._forget(work)
        if status.state == "DONE":
            assert decision is not None
        elif status.state == "ERROR":
            message = (
                f"provider job {work.provider_job_id} on {work.backend} failed: "
                f"{status.message or 'the provider gave no reason'}"
            )
            decision = Decision.failed(work.seq, "execute", "ProviderError", message)
        else:  # CANCELLED by someone else (the provider's console)
            message = (
                f"provider job {work.provider_job_id} on {work.backend} was cancelled "
                f"outside qlayer{': ' + status.message if status.message else ''}"
            )
            decision = Decision.failed(work.seq, "execute", "ProviderCancelled", message)
        if decision.kind == "error":
            daemon._log(job_id, work.seq, "execute", (decision.message or "") + "\n")
        with transaction(conn):
            daemon.apply(job_id, work.step_id, decision)

    def _call_failed(self, work: RemoteWork, kind: str, error: BaseException, now: float) -> None:
        daemon, conn = self.daemon, self.daemon.conn
        if isinstance(error, NotSubmitted):
            work.phase, work.next_at = "submit", now
            return
        if isinstance(error, ProviderError) and error.retryable:
            # Still failing after its backoff: try again later (the timeout bounds it).
            work.next_at = now + self.config.retry_later_s
            with transaction(conn):
                add_event(
                    conn,
                    work.job_id,
                    work.seq,
                    "execute",
                    "provider busy, retrying",
                    {"call": kind, "message": str(error), "retry_in_s": self.config.retry_later_s},
                )
            return
        self._forget(work)
        doing = "refused" if kind == "submit" else "failed"
        what = "provider job " + work.provider_job_id if work.provider_job_id else "execute request"
        message = f"{work.backend} {doing} {what} {work.key}: {error}"
        if not isinstance(error, ProviderError):
            message = f"{work.backend}: {type(error).__name__}: {error}"
        entry = self.ledger.get(work.key)
        if entry is not None and entry.state not in FINAL_STATES:
            self.ledger.set_state(work.key, "ERROR", str(error))
        daemon._log(work.job_id, work.seq, "execute", message + "\n")
        with transaction(conn):
            error_type = (
                "ProviderError" if isinstance(error, ProviderError) else type(error).__name__
            )
            daemon.apply(
                work.job_id, work.step_id, Decision.failed(work.seq, "execute", error_type, message)
            )

    def _timed_out(self, work: RemoteWork) -> None:
        daemon, conn = self.daemon, self.daemon.conn
        self._forget(work)
        waited = time.time() - work.queued_at
        what = (
            f"provider job {work.provider_job_id}"
            if work.provider_job_id
            else f"execute request {work.key}"
        )
        message = (
            f"no completion from {work.backend} for {what}"
            f" within {self.config.timeout_s:g} s (QLAYER_QPU_TIMEOUT_S; waited {waited:.0f} s, "
            f"last state {work.last_state or 'not submitted'}); the provider job was cancelled"
        )
        daemon._log(work.job_id, work.seq, "execute", message + "\n")
        with transaction(conn):
            daemon.apply(
                work.job_id, work.step_id, Decision.failed(work.seq, "execute", "Timeout", message)
            )
        self._call(work.key, "cancel", self._cancel_call(work.key, work.backend))

    def cancel_job(self, job_id: str) -> None:
        """The job is being cancelled (caller holds the transaction): cancel its provider jobs."""
        for work in [w for w in self.works.values() if w.job_id == job_id]:
            work.cancelled = True
            add_event(
                self.daemon.conn,
                job_id,
                work.seq,
                "execute",
                "provider job cancel requested",
                {"provider_job_id": work.provider_job_id, "backend": work.backend},
            )
            if work.busy:
                continue  # cancelled when its call returns (it may create the provider job)
            self._forget(work)
            # Read through the daemon's connection: this runs inside its transaction.
            claimed = self.daemon.conn.execute(
                "SELECT 1 FROM provider_ledger WHERE key = ?", (work.key,)
            ).fetchone()
            if work.provider_job_id is not None or claimed is not None:
                self._call(work.key, "cancel", self._cancel_call(work.key, work.backend))


def _preload() -> None:
    """Import what stages use, once, before forking workers."""
    import numpy  # noqa: F401
    import qiskit
    import qiskit.primitives
    import qiskit.qpy  # noqa: F401
    import qiskit_aer
    import qiskit_aer.primitives  # noqa: F401
    import scipy.optimize  # noqa: F401
    from qiskit.transpiler import generate_preset_pass_manager  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qlayer-daemon", description="the qlayer local daemon")
    parser.add_argument("--home", default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    home = Home.resolve(args.home)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("qiskit").setLevel(logging.WARNING)
    lock = open(home.lock_file, "a+")  # noqa: SIM115 - held for the daemon's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log.info("another daemon holds %s; exiting", home.lock_file)
        return 0
    _preload()
    daemon = Daemon(home, workers=args.workers or _env_int("QLAYER_WORKERS"), lock_fd=lock.fileno())

    def stop(signum: int, frame: Any) -> None:
        daemon.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    home.pid_file.write_text(str(os.getpid()))
    try:
        daemon.run()
    finally:
        try:
            if home.pid_file.read_text().strip() == str(os.getpid()):
                home.pid_file.unlink()
        except FileNotFoundError:
            pass
    log.info("daemon stopped")
    return 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


if __name__ == "__main__":
    sys.exit(main())
