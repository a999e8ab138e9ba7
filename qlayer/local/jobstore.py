"""The local job store: :class:`qlayer.core.ports.JobStore` over the state database.

Jobs live in ``jobs``, their timelines in ``events``, stage runs in ``runs`` (see
:mod:`qlayer.local.state`). Creating a job also queues its first step in ``steps`` — the
daemon's durable queue — in the same transaction.

Every method runs in one ``BEGIN IMMEDIATE`` transaction, or joins the caller's when one
is open on the connection (the daemon applies each transition as one transaction).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from qlayer.core.ports import KEEP, Event, JobRecord, JobStore, NewJob
from qlayer.errors import JobNotFound
from qlayer.local.state import insert_step, joined, transaction
from qlayer.status import JobStatus

_FINAL_SQL = "('DONE','ERROR','CANCELLED')"
_COLUMNS = (
    "job_id, parent_id, item_index, program_id, workflow, arguments, backend, status, stage, seq,"
    " message, error_type, provider_job_ids, created_at, updated_at, finished_at,"
    " cancel_requested, children_total, children_done, fanout_seq, env"
)


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"],
        status=JobStatus(row["status"]),
        program_id=row["program_id"],
        workflow=row["workflow"],
        arguments=json.loads(row["arguments"]),
        backend=row["backend"],
        stage=row["stage"],
        seq=row["seq"],
        message=row["message"],
        error_type=row["error_type"],
        parent_id=row["parent_id"],
        item_index=row["item_index"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        cancel_requested=bool(row["cancel_requested"]),
        children_total=row["children_total"],
        children_done=row["children_done"],
        fanout_seq=row["fanout_seq"],
        provider_job_ids=json.loads(row["provider_job_ids"] or "[]"),
        env=row["env"],
    )


class SqliteJobStore(JobStore):
    """The job store of one qlayer home.

    Args:
        conn: A connection from :func:`qlayer.local.state.connect`.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- writes -------------------------------------------------------------------------
    def create(self, job: NewJob) -> bool:
        now = time.time()
        with joined(self.conn) as conn:
            inserted = conn.execute(
                "INSERT INTO jobs (job_id, parent_id, item_index, program_id, workflow, arguments,"
                " backend, status, stage, seq, message, error_type, created_at, updated_at,"
                " finished_at, env, root_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
                " COALESCE((SELECT COALESCE(root_id, job_id) FROM jobs WHERE job_id = ?), ?))"
                " ON CONFLICT(job_id) DO NOTHING",
                (
                    job.job_id,
                    job.parent_id,
                    job.item_index,
                    job.program_id,
                    job.workflow,
                    json.dumps(dict(job.arguments)),
                    job.backend,
                    job.status.value,
                    job.stage,
                    0,
                    job.message,
                    job.error_type,
                    now,
                    now,
                    now if job.status.is_final else None,
                    job.env,
                    job.parent_id,
                    job.job_id,
                ),
            ).rowcount
            if not inserted:
                return False
            if job.notify:
                conn.execute(
                    "INSERT INTO notify_targets (job_id, targets) VALUES (?, ?)",
                    (job.job_id, json.dumps(list(job.notify))),
                )
            if job.first is not None and not job.status.is_final:
                detail: dict[str, Any] = {
                    "input_key": job.first.input_key,
                    "compute": job.first.compute,
                }
                if job.first_input is not None:  # the child's item, kept here, not a file
                    detail["input"] = dict(job.first_input)
                insert_step(conn, job.job_id, 0, "stage", job.stage, "pending", detail, now)
            submitted = {"backend": job.backend} if job.backend else None
            self._event(job.job_id, Event(0, job.stage, "submitted", submitted), at=now)
            if job.status == JobStatus.ERROR:
                error = {"error_type": job.error_type, "message": job.message}
                self._event(job.job_id, Event(0, None, "error", error), at=now)
        return True

    def update(
        self,
        job_id: str,
        *,
        status: JobStatus | None = None,
        stage: Any = KEEP,
        seq: int | None = None,
        message: str | None = None,
        error_type: str | None = None,
        provider_job_id: str | None = None,
        event: Event | None = None,
    ) -> bool:
        now = time.time()
        sets: list[str] = ["updated_at = ?"]
        params: list[Any] = [now]
        if status is not None:
            sets.append("status = ?")
            params.append(status.value)
            if status.is_final:
                sets.append("finished_at = ?")
                params.append(now)
        if stage is not KEEP:
            sets.append("stage = ?")
            params.append(stage)
        for column, value in (("seq", seq), ("message", message), ("error_type", error_type)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if provider_job_id is not None:
            sets.append(
                "provider_job_ids = CASE WHEN EXISTS (SELECT 1 FROM json_each(provider_job_ids)"
                " WHERE value = ?) THEN provider_job_ids"
                " ELSE json_insert(provider_job_ids, '$[#]', ?) END"
            )
            params += [provider_job_id, provider_job_id]
        with joined(self.conn) as conn:
            changed = conn.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ? AND status NOT IN"
                f" {_FINAL_SQL}",
                (*params, job_id),
            ).rowcount
            if changed and event is not None:
                self._event(job_id, event, at=now)
            if changed and status is not None and status.is_final:
                # The outbox of its notifications, in the same write as the final status.
                conn.execute(
                    "INSERT OR IGNORE INTO notifications (job_id, target, status, state, next_at)"
                    " SELECT t.job_id, each.value, ?, 'pending', ? FROM notify_targets AS t,"
                    " json_each(t.targets) AS each WHERE t.job_id = ?",
                    (status.value, now, job_id),
                )
        return bool(changed)

    def add_event(self, job_id: str, event: Event) -> None:
        with joined(self.conn):
            self._event(job_id, event)

    def _event(self, job_id: str, event: Event, *, at: float | None = None) -> None:
        self.conn.execute(
            "INSERT INTO events (job_id, at, seq, stage, event, detail) VALUES (?,?,?,?,?,?)",
            (job_id, at or time.time(), event.seq, event.stage, event.event, event.detail_json()),
        )

    def set_fan_out(self, parent_id: str, seq: int, total: int) -> None:
        with joined(self.conn) as conn:
            conn.execute(
                "UPDATE jobs SET children_total = ?, children_done = 0, fanout_seq = ?"
                " WHERE job_id = ?",
                (total, seq, parent_id),
            )

    def child_done(self, parent_id: str) -> tuple[int, int]:
        with joined(self.conn) as conn:
            row = conn.execute(
                "UPDATE jobs SET children_done = children_done + 1 WHERE job_id = ?"
                " RETURNING children_done, children_total",
                (parent_id,),
            ).fetchone()
        if row is None:
            raise JobNotFound(f"no job {parent_id!r} in this qlayer home")
        return int(row[0]), int(row[1])

    def record_run(self, job_id: str, stage: str, seq: int) -> None:
        with joined(self.conn) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO runs (job_id, stage, seq) VALUES (?,?,?)",
                (job_id, stage, seq),
            )

    def request_cancel(self, job_id: str) -> bool:
        with joined(self.conn) as conn:
            job = self.get(job_id)
            if job.status.is_final:
                return False
            conn.execute(
                "WITH RECURSIVE tree(id) AS (SELECT ? UNION ALL "
                "SELECT jobs.job_id FROM jobs JOIN tree ON jobs.parent_id = tree.id) "
                f"UPDATE jobs SET cancel_requested = 1 WHERE job_id IN tree AND status NOT IN"
                f" {_FINAL_SQL}",
                (job_id,),
            )
            self._event(job_id, Event(job.seq, job.stage, "cancel requested"))
        return True

    # -- reads --------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r} in this qlayer home; 'qlayer jobs' lists them")
        return _record(row)

    def timeline(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT at, seq, stage, event, detail FROM events WHERE job_id = ? ORDER BY event_id",
            (job_id,),
        ).fetchall()
        return [
            {
                "at": row["at"],
                "seq": row["seq"],
                "stage": row["stage"],
                "event": row["event"],
                "detail": json.loads(row["detail"]) if row["detail"] else None,
            }
            for row in rows
        ]

    def children(self, parent_id: str) -> list[JobRecord]:
        parent = self.conn.execute(
            "SELECT fanout_seq FROM jobs WHERE job_id = ?", (parent_id,)
        ).fetchone()
        if parent is None:
            return []
        prefix = f"{parent_id}_{parent['fanout_seq']}_"
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE parent_id = ? ORDER BY item_index", (parent_id,)
        ).fetchall()
        return [_record(row) for row in rows if row["job_id"].startswith(prefix)]

    def runs_before(self, job_id: str, seq: int) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT stage, COUNT(*) AS n FROM runs WHERE job_id = ? AND seq < ? GROUP BY stage",
            (job_id, seq),
        ).fetchall()
        return {row["stage"]: row["n"] for row in rows}

    def list_jobs(self, *, limit: int = 50, status: str | None = None) -> list[JobRecord]:
        where, params = ["parent_id IS NULL"], []
        if status:
            where.append("status = ?")
            params.append(status.upper())
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, job_id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [_record(row) for row in rows]

    # -- local extras -------------------------------------------------------------------
    def cancel_flagged(self) -> list[str]:
        """Jobs with a pending cancel that have not ended (the daemon carries them out)."""
        rows = self.conn.execute(
            f"SELECT job_id FROM jobs WHERE cancel_requested = 1 AND status NOT IN {_FINAL_SQL}"
        ).fetchall()
        return [row["job_id"] for row in rows]

    def atomic(self) -> AbstractContextManager[None]:
        return self._atomic()

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        if self.conn.in_transaction:
            yield
            return
        with transaction(self.conn):
            yield
