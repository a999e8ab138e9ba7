"""The simulated device queue: execute requests for backends that run on this machine.

Simulators (``aer*``) and simulated QPUs (``fake_*``, a real device's noise and target) run
on the daemon's workers, but like a device: each request becomes a device job in
``device_jobs``, keyed by its idempotency key ``<job-id>/<seq>`` (never run twice), queued
per backend within its concurrency (one at a time for a ``fake_*`` device by default:
``QLAYER_DEVICE_CONCURRENCY``), and a job waiting for a simulated QPU shows WAITING_FOR_QPU.

When a device takes its next job, compatible requests queued behind it ride along
(:mod:`qlayer.dispatch.coalesce`): one device run, the result split back per request.

The queue talks to the job store and reports each request's decision through
``on_decision``; it never reaches into the daemon.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from qlayer.core.ports import Event, JobStore
from qlayer.dispatch import coalesce
from qlayer.interpreter import Decision
from qlayer.local.faults import max_deaths
from qlayer.local.pool import Assignment, WorkerHandle
from qlayer.local.state import joined
from qlayer.status import JobStatus
from qlayer.step_logs import note
from qlayer.store.base import ArtifactStore

log = logging.getLogger("qlayer.daemon")


OnDecision = Callable[[str, int, Decision], None]


class DeviceQueue:
    """Device jobs of the backends this machine runs.

    Args:
        conn: The daemon's state connection (``device_jobs``).
        jobs: The job store.
        store: The artifact store (requests, logs).
        on_decision: ``(job_id, seq, decision)``: a request's step ended.
        workers: How many workers the daemon has (the concurrency of ideal simulators).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        jobs: JobStore,
        store: ArtifactStore,
        on_decision: OnDecision,
        *,
        workers: int,
    ) -> None:
        self.conn = conn
        self.jobs = jobs
        self.store = store
        self.on_decision = on_decision
        self.workers = workers
        self._concurrency: dict[str, int] = {}

    # -- queueing ---------------------------------------------------------------------
    def submit(self, job_id: str, seq: int, decision: Decision) -> str:
        """Queue execute step ``seq`` of ``job_id`` (once per key); its device job id."""
        key = f"{job_id}/{seq}"
        plan = decision.plan or {}
        with joined(self.conn):
            existing = self.conn.execute(
                "SELECT device_job_id FROM device_jobs WHERE idempotency_key = ?", (key,)
            ).fetchone()
            if existing is None:
                device_job_id = "dev-" + secrets.token_hex(6)
                self.conn.execute(
                    "INSERT INTO device_jobs (device_job_id, idempotency_key, job_id, seq,"
                    " backend, request_key, status, submitted_at) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        device_job_id,
                        key,
                        job_id,
                        seq,
                        decision.backend,
                        decision.request_key,
                        "QUEUED",
                        time.time(),
                    ),
                )
            else:
                device_job_id = existing["device_job_id"]
            qpu = plan.get("tier") == "qpu"
            self.jobs.update(
                job_id,
                status=JobStatus.WAITING_FOR_QPU if qpu else JobStatus.RUNNING,
                stage="execute",
                seq=seq,
                provider_job_id=device_job_id,
                event=Event(
                    seq,
                    "execute",
                    "submitted",
                    {"backend": decision.backend, "provider_job_id": device_job_id, "plan": plan},
                ),
            )
        note(
            self.store,
            job_id,
            seq,
            "execute",
            f"submitted to {decision.backend}: provider job {device_job_id} (key {key}); "
            f"plan {plan.get('tier')}, {plan.get('method')}, ~{plan.get('memory_mb')} MiB, "
            f"~{plan.get('seconds')} s ({plan.get('reason')})",
        )
        return device_job_id

    def concurrency(self, backend: str) -> int:
        if backend not in self._concurrency:
            from qlayer.providers.registry import resolve

            try:
                limit = resolve(backend).max_concurrency
            except Exception:
                limit = 1
            override = os.environ.get("QLAYER_DEVICE_CONCURRENCY")
            if override and backend.startswith("fake_"):
                limit = int(override)
            self._concurrency[backend] = max(
                1, limit if backend.startswith("fake_") else self.workers
            )
        return self._concurrency[backend]

    def next_job(self) -> sqlite3.Row | None:
        """The oldest queued device job whose backend has room, or None."""
        running: dict[str, int] = {}
        for row in self.conn.execute(
            "SELECT backend, COUNT(*) AS n FROM device_jobs WHERE status = 'RUNNING'"
            " GROUP BY backend"
        ):
            running[row["backend"]] = row["n"]
        for row in self.conn.execute(
            "SELECT * FROM device_jobs WHERE status = 'QUEUED' ORDER BY submitted_at LIMIT 200"
        ):
            if running.get(row["backend"], 0) < self.concurrency(row["backend"]):
                return row  # type: ignore[no-any-return]
        return None

    def riders_for(self, lead: sqlite3.Row) -> list[dict[str, Any]]:
        """Queued requests for the same device that can run with ``lead`` as one job."""
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

    # -- running --------------------------------------------------------------------------
    def start(self, worker: WorkerHandle, device: sqlite3.Row) -> None:
        """Run ``device`` (and its riders) on ``worker``."""
        riders = self.riders_for(device)
        lead = {
            "device_job_id": device["device_job_id"],
            "job_id": device["job_id"],
            "seq": device["seq"],
        }
        with joined(self.conn):
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
                self.jobs.add_event(
                    member["job_id"], Event(member["seq"], "execute", "device running", detail)
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

    def finish(self, assignment: Assignment, reply: dict[str, Any]) -> None:
        """A worker answered for a device run: each member's request ends."""
        answers = reply.get("riders") or {}
        for rider in assignment.riders:
            answer = answers.get(rider["device_job_id"]) or {
                "ok": False,
                "error_type": "InternalError",
                "message": "the coalesced run returned no result for this request",
            }
            self._finish_one(rider["job_id"], rider["seq"], rider["device_job_id"], answer)
        assert assignment.device_job_id is not None
        self._finish_one(assignment.job_id, assignment.seq, assignment.device_job_id, reply)

    def _finish_one(self, job_id: str, seq: int, device_job_id: str, reply: dict[str, Any]) -> None:
        ok = bool(reply.get("ok"))
        with joined(self.conn):
            self.conn.execute(
                "UPDATE device_jobs SET status = ?, finished_at = ?, message = ? WHERE "
                "device_job_id = ? AND status = 'RUNNING'",
                ("DONE" if ok else "ERROR", time.time(), reply.get("message"), device_job_id),
            )
        if ok:
            decision = Decision.from_json(reply["decision"])
            note(self.store, job_id, seq, "execute", f"provider job {device_job_id} done")
        else:
            message = f"backend job {device_job_id} failed: {reply.get('message')}"
            note(self.store, job_id, seq, "execute", message)
            decision = Decision.failed(
                seq, "execute", reply.get("error_type", "BackendError"), message
            )
        self.on_decision(job_id, seq, decision)

    def died(self, assignment: Assignment, how: str) -> None:
        """The worker running ``assignment`` died: each member is queued again, or fails
        after its worker died :func:`~qlayer.local.faults.max_deaths` times (a daemon
        restart is not a death)."""
        for member in assignment.members():
            with joined(self.conn):
                row = self.conn.execute(
                    "UPDATE device_jobs SET deaths = deaths + 1 WHERE device_job_id = ?"
                    " RETURNING attempts, deaths",
                    (member["device_job_id"],),
                ).fetchone()
            if row and row["deaths"] >= max_deaths():
                with joined(self.conn):
                    self.conn.execute(
                        "UPDATE device_jobs SET status = 'ERROR', message = ? WHERE"
                        " device_job_id = ?",
                        (f"simulator died ({how})", member["device_job_id"]),
                    )
                self.on_decision(
                    member["job_id"],
                    member["seq"],
                    Decision.failed(
                        member["seq"],
                        "execute",
                        "WorkerDied",
                        f"the simulator running {member['device_job_id']} died ({how}) "
                        f"{row['deaths']} times in {row['attempts']} runs (daemon restarts"
                        " do not count)",
                    ),
                )
            else:
                self.requeue(member["device_job_id"])

    def requeue(self, device_job_id: str) -> None:
        with joined(self.conn):
            self.conn.execute(
                "UPDATE device_jobs SET status = 'QUEUED' WHERE device_job_id = ? AND "
                "status = 'RUNNING'",
                (device_job_id,),
            )

    def cancel_job(self, job_id: str) -> None:
        """Cancel ``job_id``'s device jobs that have not ended."""
        with joined(self.conn):
            cancelled = self.conn.execute(
                "UPDATE device_jobs SET status = 'CANCELLED', finished_at = ? WHERE job_id = ? "
                "AND status IN ('QUEUED','RUNNING') RETURNING device_job_id",
                (time.time(), job_id),
            ).fetchall()
            for row in cancelled:
                self.jobs.add_event(
                    job_id,
                    Event(
                        None,
                        "execute",
                        "device job cancelled",
                        {"provider_job_id": row["device_job_id"]},
                    ),
                )

    def recover(self) -> None:
        """After a restart: device jobs that were running are queued again."""
        with joined(self.conn):
            self.conn.execute("UPDATE device_jobs SET status = 'QUEUED' WHERE status = 'RUNNING'")
            # Ended, but the outcome never reached its step (the daemon died, or could not
            # write, in between): run again; a recorded outcome is answered, not re-simulated.
            self.conn.execute(
                "UPDATE device_jobs SET status = 'QUEUED' WHERE status IN ('DONE', 'ERROR')"
                " AND EXISTS (SELECT 1 FROM steps s JOIN jobs j ON j.job_id = s.job_id"
                " WHERE s.job_id = device_jobs.job_id AND s.seq = device_jobs.seq"
                " AND s.kind = 'execute' AND s.state = 'waiting'"
                " AND j.status NOT IN ('DONE', 'ERROR', 'CANCELLED'))"
            )
