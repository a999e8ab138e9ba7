"""The local state database: its schema, connections and transactions.

Tables: ``jobs`` and ``events`` (the job store, :mod:`qlayer.local.jobstore`), ``runs``
(which stage ran at which step), ``steps`` (the daemon's durable queue), ``device_jobs``
(the simulated devices' queue, :mod:`qlayer.local.devices`) and ``provider_ledger`` (the
ledger of remote provider submissions, :mod:`qlayer.local.ledger`).

The daemon is the only writer of job progress. Clients insert jobs and set the cancel
flag; both commit in short transactions (WAL mode).
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qlayer.errors import StateBusy

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
    provider_job_ids TEXT NOT NULL DEFAULT '[]',  -- JSON array, oldest first
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    children_total INTEGER NOT NULL DEFAULT 0,
    children_done INTEGER NOT NULL DEFAULT 0,
    fanout_seq INTEGER NOT NULL DEFAULT 0,
    root_id TEXT,                -- the top-level job of its tree (itself, for one)
    env TEXT                     -- its environment's id (qlayer.envs), NULL: the base
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id);

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
    -- the attempts its own worker died in: [{attempt, how}] (a daemon restart is not one)
    deaths TEXT NOT NULL DEFAULT '[]',
    detail TEXT,                 -- the decision that created the step (JSON)
    created_at REAL NOT NULL,
    started_at REAL,
    root_id TEXT,                -- jobs.root_id of its job: the scheduler's fairness unit
    UNIQUE (job_id, seq)
);

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

-- Which stage ran at which step (max_runs, ctx.run): one row per run, written once.
CREATE TABLE IF NOT EXISTS runs (
    job_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (job_id, stage, seq)
) WITHOUT ROWID;

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
    deaths INTEGER NOT NULL DEFAULT 0,  -- runs whose worker died (not daemon restarts)
    message TEXT,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS device_jobs_status ON device_jobs (status, submitted_at);

-- Notifications (qlayer.notify): the targets a job was submitted with, and an outbox
-- row per target written in the same transaction as the job's final status, so an end
-- is notified once even if the daemon dies right after it (qlayer.local.notifier).
CREATE TABLE IF NOT EXISTS notify_targets (
    job_id TEXT PRIMARY KEY,
    targets TEXT NOT NULL            -- JSON array of targets
);
CREATE TABLE IF NOT EXISTS notifications (
    job_id TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,            -- the final status it announces
    state TEXT NOT NULL,             -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    PRIMARY KEY (job_id, target)
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, next_at);

-- One row the daemon rewrites to learn whether the database can be written again (with
-- room to grow: a 64 KiB blob, freed in the same transaction).
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL, room BLOB);

-- Small artifacts of quick steps (qlayer.local.artifacts.HomeStore): the bytes a key
-- would hold as a file under artifacts/, committed with the step that wrote them.
CREATE TABLE IF NOT EXISTS artifact_rows (key TEXT PRIMARY KEY, data BLOB NOT NULL)
    WITHOUT ROWID;
"""

SUBMISSIONS_SCHEMA = """
-- Submissions waiting for the daemon's checks (qlayer.local.admission): a row lives
-- while its client waits for the answer (accepted: the job exists; refused: why).
CREATE TABLE IF NOT EXISTS submissions (
    job_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    arguments TEXT NOT NULL,     -- admission.encode_arguments
    cli_arguments TEXT,          -- JSON list of key=value texts, typed by the params
    backend TEXT,
    options TEXT,                -- JSON: the run's notify targets, max_cost_usd
    state TEXT NOT NULL,         -- pending | accepted | refused
    error_type TEXT,
    message TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS submissions_state ON submissions (state, created_at);
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
    -- WAITING | CLAIMED | SUBMITTED | QUEUED | RUNNING | DONE | ERROR | CANCELLED
    state TEXT NOT NULL,
    provider_job_id TEXT,
    message TEXT,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    claims INTEGER NOT NULL DEFAULT 1,
    token TEXT,
    outcome TEXT,                -- JSON: the decision recorded when it ended
    slot INTEGER NOT NULL DEFAULT 0,  -- holds one of its backend's in-flight slots
    heartbeat_s REAL,            -- how long its waiter goes without news, if it has one
    heartbeat_at REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS provider_ledger_state ON provider_ledger (state);
CREATE INDEX IF NOT EXISTS provider_ledger_job ON provider_ledger (job_id);
"""

SCHEMA += LEDGER_SCHEMA + SUBMISSIONS_SCHEMA


#: How long a connection waits for another's write transaction before it gives up.
BUSY_TIMEOUT_MS = 30_000


def connect(path: Path) -> sqlite3.Connection:
    """Open the state database (creating it) in WAL mode with a busy timeout.

    Raises:
        StateBusy: Another process held the write lock past the busy timeout.
        StateError: The file is corrupt (the message says how to recover) or cannot be
            written.
    """
    try:
        return _connect(path)
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise busy_error(exc) from exc
        from qlayer.local.doctor import describe

        raise describe(exc, path) from exc
    except sqlite3.DatabaseError as exc:
        from qlayer.local.doctor import describe

        raise describe(exc, path) from exc


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # The indexes of a home with a long history do not fit SQLite's default 2 MiB cache.
    conn.execute("PRAGMA cache_size=-65536")
    ensure_schema(conn)
    return conn


def connect_plain(path: Path, *, read_only: bool) -> sqlite3.Connection:
    """A connection for :mod:`qlayer.local.artifacts` with no schema script (the daemon
    or a client made the database); ``read_only``: one that cannot write."""
    conn = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    if read_only:
        conn.execute("PRAGMA query_only=1")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def ensure_schema(conn: sqlite3.Connection) -> bool:
    """Create the tables and indexes, or bring an older database up to them; False (and
    nothing run) when the database is marked with this :data:`SCHEMA_VERSION` already."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return False  # every open after the first: no script to run
    had_runs = _has_table(conn, "runs")
    had_jobs = _has_table(conn, "jobs")
    conn.executescript(SCHEMA)
    if had_jobs:
        _migrate(conn, backfill_runs=not had_runs)
    # Indexes on columns a migration may have just added.
    conn.executescript(_LATE_INDEXES)
    _drop_replaced_indexes(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return True


#: Indexes of older qlayer versions that the live-only ones above replace.
_REPLACED_INDEXES = ("steps_state", "steps_fair", "steps_kind", "jobs_cancel")


def _drop_replaced_indexes(conn: sqlite3.Connection) -> None:
    """Drop :data:`_REPLACED_INDEXES` from a database an older qlayer wrote (once; a
    database without them is not locked)."""
    marks = ",".join("?" * len(_REPLACED_INDEXES))
    query = f"SELECT name FROM sqlite_master WHERE type = 'index' AND name IN ({marks})"
    if conn.execute(query, _REPLACED_INDEXES).fetchone() is None:
        return
    with transaction(conn):
        for (name,) in conn.execute(query, _REPLACED_INDEXES).fetchall():
            conn.execute(f"DROP INDEX IF EXISTS {name}")


#: Indexes on columns a migration may have just added.
_LATE_INDEXES = """
CREATE INDEX IF NOT EXISTS provider_ledger_slot ON provider_ledger (backend, slot);
-- The steps indexes hold live steps only (a done step leaves them), so their size and
-- the pages each step's moves touch do not grow with the home's history. SQLite uses a
-- partial index for a query naming one of the OR-ed states literally.
-- The fair scheduler: the next root with pending work, then that root's oldest step.
CREATE INDEX IF NOT EXISTS steps_live ON steps (state, kind, root_id, step_id)
    WHERE state = 'pending' OR state = 'running' OR state = 'waiting';
-- Pending executes, oldest first, without scanning the pending stage steps.
CREATE INDEX IF NOT EXISTS steps_live_kind ON steps (state, kind, step_id)
    WHERE state = 'pending' OR state = 'running' OR state = 'waiting';
-- Jobs with a cancel to carry out (a handful at any time, whatever the history).
CREATE INDEX IF NOT EXISTS jobs_cancelling ON jobs (status) WHERE cancel_requested = 1;
-- a tree at once (prune, retention); top-level jobs newest first (qlayer jobs)
CREATE INDEX IF NOT EXISTS jobs_root ON jobs (root_id);
CREATE INDEX IF NOT EXISTS jobs_top ON jobs (created_at) WHERE parent_id IS NULL;
"""


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


#: Columns added since the first release: (table, column, definition).
_ADDED_COLUMNS = (
    ("jobs", "provider_job_ids", "TEXT NOT NULL DEFAULT '[]'"),
    ("jobs", "fanout_seq", "INTEGER NOT NULL DEFAULT 0"),
    ("steps", "deaths", "TEXT NOT NULL DEFAULT '[]'"),
    ("device_jobs", "deaths", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "root_id", "TEXT"),
    ("steps", "root_id", "TEXT"),
    ("submissions", "options", "TEXT"),
    ("provider_ledger", "token", "TEXT"),
    ("provider_ledger", "outcome", "TEXT"),
    ("provider_ledger", "slot", "INTEGER NOT NULL DEFAULT 0"),
    ("provider_ledger", "heartbeat_s", "REAL"),
    ("provider_ledger", "heartbeat_at", "REAL NOT NULL DEFAULT 0"),
    ("jobs", "env", "TEXT"),
)

#: The schema this code writes, as a number (``PRAGMA user_version``) derived from its text:
#: a database marked with it needs no schema script or migration when it is opened, and
#: any change to the schema, its migrations or its indexes changes the number.
SCHEMA_VERSION = (
    zlib.crc32((SCHEMA + _LATE_INDEXES + repr(_ADDED_COLUMNS) + repr(_REPLACED_INDEXES)).encode())
    & 0x7FFFFFFF
)


def _migrate(conn: sqlite3.Connection, *, backfill_runs: bool) -> None:
    """Bring a state database written by an older qlayer up to this schema, in place.

    Takes the write lock only when there is something to change: every client opens
    the database, and must not wait for the daemon's transactions to do so.
    """
    if not backfill_runs and all(
        column in _columns(conn, table) for table, column, _ in _ADDED_COLUMNS
    ):
        return
    with transaction(conn):
        for table, column, definition in _ADDED_COLUMNS:
            if column not in _columns(conn, table):
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                if (table, column) == ("jobs", "fanout_seq"):
                    conn.execute(
                        "UPDATE jobs SET fanout_seq = COALESCE((SELECT MAX(seq) FROM steps"
                        " WHERE steps.job_id = jobs.job_id AND kind = 'fanin'), 0)"
                        " WHERE children_total > 0"
                    )
                if (table, column) == ("jobs", "root_id"):
                    conn.execute(
                        "WITH RECURSIVE tree(id, root) AS (SELECT job_id, job_id FROM jobs"
                        " WHERE parent_id IS NULL UNION ALL SELECT jobs.job_id, tree.root FROM"
                        " jobs JOIN tree ON jobs.parent_id = tree.id)"
                        " UPDATE jobs SET root_id = (SELECT root FROM tree WHERE id = job_id)"
                    )
                if (table, column) == ("steps", "root_id"):
                    conn.execute(
                        "UPDATE steps SET root_id = (SELECT COALESCE(jobs.root_id, jobs.job_id)"
                        " FROM jobs WHERE jobs.job_id = steps.job_id)"
                    )
                if (table, column) == ("jobs", "provider_job_ids") and "provider_job_id" in (
                    _columns(conn, "jobs")
                ):
                    conn.execute(
                        "UPDATE jobs SET provider_job_ids = json_array(provider_job_id)"
                        " WHERE provider_job_id IS NOT NULL"
                    )
        if backfill_runs:
            conn.execute(
                "INSERT OR IGNORE INTO runs (job_id, stage, seq) SELECT job_id, stage, seq"
                " FROM steps WHERE kind = 'stage' AND state = 'done'"
            )


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite giving up on a lock another connection held too long."""
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def busy_error(exc: BaseException, conn: sqlite3.Connection | None = None) -> StateBusy:
    """The clear error that replaces SQLite's ``database is locked``."""
    waited_ms = BUSY_TIMEOUT_MS
    if conn is not None:
        try:
            waited_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        except sqlite3.Error:
            pass
    return StateBusy(
        f"the qlayer state database stayed locked by another process for "
        f"{waited_ms / 1000:g} s ({exc}); nothing was changed. Try again; if it "
        "persists, 'qlayer down' and 'qlayer up' restart the daemon."
    )


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error.

    Raises:
        StateBusy: Another connection held the write lock past the busy timeout.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise busy_error(exc, conn) from exc
        raise
    try:
        yield conn
    except BaseException as exc:
        if conn.in_transaction:  # SQLite may have rolled back already (a full disk)
            conn.execute("ROLLBACK")
        if is_busy(exc):
            raise busy_error(exc, conn) from exc
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:  # a full disk at COMMIT: the transaction must not stay open
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def insert_step(
    conn: sqlite3.Connection,
    job_id: str,
    seq: int,
    kind: str,
    stage: str | None,
    step_state: str,
    detail: Any,
    now: float,
) -> None:
    """Queue a step of ``job_id`` (its tree's root copied from ``jobs``, for fairness)."""
    conn.execute(
        "INSERT INTO steps (job_id, seq, kind, stage, state, detail, created_at, root_id)"
        " VALUES (?,?,?,?,?,?,?,(SELECT COALESCE(root_id, job_id) FROM jobs WHERE job_id = ?))",
        (job_id, seq, kind, stage, step_state, json.dumps(detail), now, job_id),
    )


@contextmanager
def joined(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A transaction, or the caller's if one is open on ``conn`` (joined, not nested)."""
    if conn.in_transaction:
        yield conn
        return
    with transaction(conn):
        yield conn


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
