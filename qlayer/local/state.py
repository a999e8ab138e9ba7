"""SQLite job state of the local substrate: jobs, their steps (the durable queue),
the timeline, and the simulated devices' ledger.

The daemon is the only writer of job progress. Clients insert jobs and set the
cancel flag; both commit in short transactions (WAL mode).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlayer.errors import JobNotFound
from qlayer.status import JobStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    parent_id TEXT,
    item_index INTEGER,
    program_id TEXT NOT NULL,
    workflow TEXT NOT NULL,
    arguments TEXT NOT NULL,
    backend TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT,
    seq INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    error_type TEXT,
    provider_job_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    children_total INTEGER NOT NULL DEFAULT 0,
    children_done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id);
CREATE INDEX IF NOT EXISTS jobs_cancel ON jobs (cancel_requested, status);

-- One row per step of a job: the durable queue. (job_id, seq) is unique, so a
-- step can never be queued twice.
CREATE TABLE IF NOT EXISTS steps (
    step_id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,          -- stage | execute | fanin
    stage TEXT,
    state TEXT NOT NULL,         -- pending | running | waiting | done
    attempts INTEGER NOT NULL DEFAULT 0,
    detail TEXT,                 -- the decision that created the step (JSON)
    created_at REAL NOT NULL,
    started_at REAL,
    UNIQUE (job_id, seq)
);
CREATE INDEX IF NOT EXISTS steps_state ON steps (state, step_id);

CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    seq INTEGER,
    stage TEXT,
    event TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, event_id);

-- The simulated devices' own ledger: one row per provider job, keyed by the
-- idempotency key job_id/seq, so a request can never be submitted twice.
CREATE TABLE IF NOT EXISTS device_jobs (
    device_job_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    backend TEXT NOT NULL,
    request_key TEXT NOT NULL,
    status TEXT NOT NULL,        -- QUEUED | RUNNING | DONE | ERROR | CANCELLED
    attempts INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS device_jobs_status ON device_jobs (status, submitted_at);
"""

LEDGER_SCHEMA = """
-- The remote providers' ledger (qlayer.local.ledger.SqliteLedger, the port of
-- qlayer.dispatch.Ledger): one row per execute request sent to a QPU service, keyed
-- by the same idempotency key job_id/seq. A row is created (claimed) before the
-- provider is called and gets the provider's job id once (first id wins).
CREATE TABLE IF NOT EXISTS provider_ledger (
    key TEXT PRIMARY KEY,
    job_id TEXT,
    seq INTEGER,
    backend TEXT NOT NULL,
    request_key TEXT NOT NULL,
    state TEXT NOT NULL,  -- CLAIMED | SUBMITTED | QUEUED | RUNNING | DONE | ERROR | CANCELLED
    provider_job_id TEXT,
    message TEXT,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    claims INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS provider_ledger_state ON provider_ledger (state);
CREATE INDEX IF NOT EXISTS provider_ledger_job ON provider_ledger (job_id);
"""

SCHEMA += LEDGER_SCHEMA


def connect(path: Path) -> sqlite3.Connection:
    """Open the state database (creating it) in WAL mode with a busy timeout."""
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(SCHEMA)
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@dataclass
class JobRow:
    """One job as the client sees it."""

    job_id: str
    parent_id: str | None
    item_index: int | None
    program_id: str
    workflow: str
    arguments: dict[str, Any]
    backend: str
    status: JobStatus
    stage: str | None
    seq: int
    message: str | None
    error_type: str | None
    provider_job_id: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    cancel_requested: bool
    children_total: int
    children_done: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRow:
        data = dict(row)
        data["arguments"] = json.loads(data["arguments"])
        data["status"] = JobStatus(data["status"])
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)


def insert_job(
    conn: sqlite3.Connection,
    *,
    job_id: str,
    program_id: str,
    workflow: str,
    arguments: dict[str, Any],
    backend: str,
    first_stage: str,
    input_key: str,
    parent_id: str | None = None,
    item_index: int | None = None,
) -> None:
    """Insert a QUEUED job and its first step (caller holds the transaction)."""
    now = time.time()
    conn.execute(
        "INSERT INTO jobs (job_id, parent_id, item_index, program_id, workflow, arguments, backend,"
        " status, stage, seq, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            job_id,
            parent_id,
            item_index,
            program_id,
            workflow,
            json.dumps(arguments),
            backend,
            JobStatus.QUEUED.value,
            first_stage,
            0,
            now,
            now,
        ),
    )
    conn.execute(
        "INSERT INTO steps (job_id, seq, kind, stage, state, detail, created_at)"
        " VALUES (?,?,?,?,?,?,?)",
        (job_id, 0, "stage", first_stage, "pending", json.dumps({"input_key": input_key}), now),
    )
    add_event(conn, job_id, 0, first_stage, "submitted", None, at=now)


def add_event(
    conn: sqlite3.Connection,
    job_id: str,
    seq: int | None,
    stage: str | None,
    event: str,
    detail: Any,
    *,
    at: float | None = None,
) -> None:
    conn.execute(
        "INSERT INTO events (job_id, at, seq, stage, event, detail) VALUES (?,?,?,?,?,?)",
        (
            job_id,
            at or time.time(),
            seq,
            stage,
            event,
            None if detail is None else json.dumps(detail),
        ),
    )


def get_job(conn: sqlite3.Connection, job_id: str) -> JobRow:
    row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFound(f"no job {job_id!r} in this qlayer home; 'qlayer jobs' lists them")
    return JobRow.from_row(row)


def list_jobs(
    conn: sqlite3.Connection,
    *,
    limit: int = 50,
    status: str | None = None,
    include_children: bool = False,
) -> list[JobRow]:
    where, params = [], []
    if not include_children:
        where.append("parent_id IS NULL")
    if status:
        where.append("status = ?")
        params.append(status)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    rows = conn.execute(
        f"SELECT * FROM jobs {clause} ORDER BY created_at DESC, job_id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [JobRow.from_row(row) for row in rows]


def timeline(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
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


def request_cancel(conn: sqlite3.Connection, job_id: str) -> bool:
    """Flag a job (and its children) for cancellation. False if it had already ended."""
    with transaction(conn):
        job = get_job(conn, job_id)
        if job.status.is_final:
            return False
        conn.execute(
            "WITH RECURSIVE tree(id) AS (SELECT ? UNION ALL "
            "SELECT jobs.job_id FROM jobs JOIN tree ON jobs.parent_id = tree.id) "
            "UPDATE jobs SET cancel_requested = 1 WHERE job_id IN tree "
            "AND status NOT IN ('DONE','ERROR','CANCELLED')",
            (job_id,),
        )
        add_event(conn, job_id, job.seq, job.stage, "cancel requested", None)
    return True


def stage_runs(conn: sqlite3.Connection, job_id: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT stage, COUNT(*) AS n FROM steps WHERE job_id = ? AND kind = 'stage'"
        " AND state = 'done' GROUP BY stage",
        (job_id,),
    ).fetchall()
    return {row["stage"]: row["n"] for row in rows}


def device_jobs_for(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    """The job's provider jobs: simulated devices (``device_jobs``) and remote providers
    (``provider_ledger`` rows that have a provider job id), in submission order.

    Every row has ``device_job_id`` (the provider's job id), ``idempotency_key``,
    ``backend``, ``status`` and ``message``; remote rows also say ``remote: True``.
    """
    rows = [
        dict(row)
        for row in conn.execute("SELECT * FROM device_jobs WHERE job_id = ?", (job_id,)).fetchall()
    ]
    for row in conn.execute(
        "SELECT * FROM provider_ledger WHERE job_id = ? AND provider_job_id IS NOT NULL",
        (job_id,),
    ).fetchall():
        rows.append(
            {
                "device_job_id": row["provider_job_id"],
                "idempotency_key": row["key"],
                "job_id": row["job_id"],
                "seq": row["seq"],
                "backend": row["backend"],
                "request_key": row["request_key"],
                "status": row["state"],
                "attempts": row["claims"],
                "message": row["message"],
                "submitted_at": row["created_at"],
                "started_at": None,
                "finished_at": None,
                "remote": True,
            }
        )
    rows.sort(key=lambda r: (r["submitted_at"], r["seq"]))
    return rows
