"""The fake IBM Quantum service's durable state: one SQLite file in a directory.

Every server process (and every test) that opens the same directory sees the same
jobs, sessions, issued tokens, behaviour rules and call log, so a dispatcher and a
poller in different processes talk to one service. Each operation opens its own
connection (WAL, a generous busy timeout); state changes that read-then-write run
under ``BEGIN IMMEDIATE`` so two processes never both take the same rule or advance
the same job twice.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DB_NAME = "ibm_runtime.sqlite3"

#: The instance the fake serves unless told otherwise (a CRN in us-east).
DEFAULT_INSTANCE = "crn:v1:bluemix:public:quantum-computing:us-east:a/fakeaccount:fakeinstance::"
#: The API key the fake IAM accepts unless told otherwise.
DEFAULT_API_KEY = "qlayer-fake-api-key"

#: Final states of a job, in the service's own words.
FINAL = ("Completed", "Failed", "Cancelled")
PENDING = ("Queued", "Running")

RULE_KINDS = ("reject", "fail", "hold", "ideal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, method TEXT NOT NULL,
    path TEXT NOT NULL, query TEXT NOT NULL, status INTEGER NOT NULL, auth TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, apikey TEXT NOT NULL,
    expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, backend TEXT NOT NULL,
    remaining INTEGER, status INTEGER, message TEXT, state TEXT, tag TEXT);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, backend TEXT NOT NULL, mode TEXT NOT NULL, instance TEXT,
    max_ttl INTEGER, accepting_jobs INTEGER NOT NULL DEFAULT 1, state TEXT NOT NULL,
    created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, backend TEXT NOT NULL,
    program_id TEXT NOT NULL, instance TEXT, session_id TEXT, tags TEXT NOT NULL,
    params TEXT NOT NULL, cost INTEGER, private INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL, reason TEXT, reason_code INTEGER, polls INTEGER NOT NULL DEFAULT 0,
    hold TEXT, fail_message TEXT, ideal INTEGER NOT NULL DEFAULT 0, result TEXT,
    usage_seconds REAL, created TEXT NOT NULL, running_at TEXT, finished_at TEXT);
"""


def now_iso() -> str:
    """The current UTC time as the service writes it (ISO 8601, ``Z``)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Rule:
    """One behaviour rule taken for a request (see :meth:`Store.add_rule`)."""

    id: int
    kind: str
    backend: str
    status: int | None
    message: str | None
    state: str | None


@dataclass(frozen=True)
class Call:
    """One REST call the fake answered."""

    seq: int
    method: str
    path: str
    query: str
    status: int
    auth: str


class Store:
    """The state of one fake service, kept in ``<directory>/ibm_runtime.sqlite3``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_NAME
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            if write:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            else:
                yield db
        finally:
            db.close()

    # ------------------------------------------------------------------ settings

    def setting(self, key: str, default: Any = None) -> Any:
        """A setting (JSON value), or ``default`` when unset."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])

    def set_setting(self, key: str, value: Any) -> None:
        """Set a setting; ``None`` removes it."""
        with self._connect() as db:
            if value is None:
                db.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                    (key, json.dumps(value)),
                )

    @property
    def instance(self) -> str:
        """The instance CRN the service serves."""
        return str(self.setting("instance", DEFAULT_INSTANCE))

    @property
    def api_key(self) -> str:
        """The API key the IAM endpoint exchanges for a token."""
        return str(self.setting("api_key", DEFAULT_API_KEY))

    # ------------------------------------------------------------------ call log

    def record_call(self, method: str, path: str, query: str, status: int, auth: str) -> None:
        """Append one answered REST call to the durable call log."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO calls (at, method, path, query, status, auth) VALUES (?,?,?,?,?,?)",
                (time.time(), method, path, query, status, auth),
            )

    def calls(self, method: str | None = None, path: str | None = None) -> list[Call]:
        """The call log, oldest first; ``path`` ending in ``*`` matches a prefix."""
        sql, args = "SELECT * FROM calls WHERE 1=1", []
        if method:
            sql += " AND method = ?"
            args.append(method.upper())
        if path:
            if path.endswith("*"):
                sql += " AND path LIKE ?"
                args.append(path[:-1].replace("%", r"\%") + "%")
            else:
                sql += " AND path = ?"
                args.append(path)
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY seq", args).fetchall()
        return [
            Call(r["seq"], r["method"], r["path"], r["query"], r["status"], r["auth"]) for r in rows
        ]

    # ------------------------------------------------------------------ tokens

    def save_token(self, token: str, apikey: str, expires: float) -> None:
        """Remember a bearer token the IAM endpoint issued."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO tokens (token, apikey, expires) VALUES (?, ?, ?)",
                (token, apikey, expires),
            )

    def token_valid(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired."""
        with self._connect() as db:
            row = db.execute("SELECT expires FROM tokens WHERE token = ?", (token,)).fetchone()
        return row is not None and row["expires"] > time.time()

    # ------------------------------------------------------------------ rules

    def add_rule(
        self,
        kind: str,
        *,
        backend: str = "*",
        count: int | None = 1,
        status: int | None = None,
        message: str | None = None,
        state: str | None = None,
        tag: str | None = None,
    ) -> int:
        """A behaviour rule for the next ``count`` matching requests (None: all of them).

        Kinds: ``reject`` (job creation answers HTTP ``status`` with ``message``),
        ``fail`` (the created job ends Failed with ``message``), ``hold`` (the created
        job stays in ``state``, Queued or Running, until released), ``ideal`` (the job
        is simulated without the device's noise). ``backend`` is a name or ``*``; with
        ``tag``, only a job created with that tag matches (a ``reject`` rule ignores it).
        """
        if kind not in RULE_KINDS:
            raise ValueError(f"rule kind must be one of {RULE_KINDS}, got {kind!r}")
        if kind == "hold" and state not in PENDING:
            raise ValueError(f"a hold rule needs state in {PENDING}, got {state!r}")
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO rules (kind, backend, remaining, status, message, state, tag)"
                " VALUES (?,?,?,?,?,?,?)",
                (kind, backend, count, status, message, state, tag),
            )
            return int(cursor.lastrowid or 0)

    def clear_rules(self) -> None:
        """Forget every behaviour rule."""
        with self._connect() as db:
            db.execute("DELETE FROM rules")

    def take_rule(self, kind: str, backend: str) -> Rule | None:
        """The oldest live rule of ``kind`` for ``backend``, counted down by one."""
        with self._connect(write=True) as db:
            return self._take_rule(db, kind, backend)

    @staticmethod
    def _take_rule(
        db: sqlite3.Connection, kind: str, backend: str, tags: list[str] | None = None
    ) -> Rule | None:
        tags = tags or []
        row = db.execute(
            "SELECT * FROM rules WHERE kind = ? AND backend IN (?, '*')"
            " AND (remaining IS NULL OR remaining > 0)"
            f" AND (tag IS NULL OR tag IN ({','.join('?' * len(tags)) or 'NULL'}))"
            " ORDER BY id LIMIT 1",
            (kind, backend, *tags),
        ).fetchone()
        if row is None:
            return None
        if row["remaining"] is not None:
            db.execute("UPDATE rules SET remaining = remaining - 1 WHERE id = ?", (row["id"],))
        return Rule(row["id"], kind, row["backend"], row["status"], row["message"], row["state"])

    # ------------------------------------------------------------------ jobs

    def create_job(
        self,
        *,
        backend: str,
        program_id: str,
        params: str,
        instance: str | None,
        session_id: str | None,
        tags: list[str],
        cost: int | None,
        private: bool,
    ) -> dict[str, Any]:
        """A new Queued job; the fail/hold/ideal rules for its backend are taken now."""
        job_id = "d" + secrets.token_hex(10)[:19]
        with self._connect(write=True) as db:
            fail = self._take_rule(db, "fail", backend, tags)
            hold = self._take_rule(db, "hold", backend, tags)
            ideal = self._take_rule(db, "ideal", backend, tags)
            db.execute(
                "INSERT INTO jobs (id, backend, program_id, instance, session_id, tags, params,"
                " cost, private, status, hold, fail_message, ideal, created)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    backend,
                    program_id,
                    instance,
                    session_id,
                    json.dumps(tags),
                    params,
                    cost,
                    int(private),
                    "Queued",
                    hold.state if hold else None,
                    (fail.message or "the job failed") if fail else None,
                    int(ideal is not None),
                    now_iso(),
                ),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    def job(self, job_id: str) -> dict[str, Any] | None:
        """One job as stored, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def jobs(
        self,
        *,
        backend: str | None = None,
        tags: list[str] | None = None,
        session_id: str | None = None,
        program_id: str | None = None,
        pending: bool | None = None,
        descending: bool = True,
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Jobs matching every filter (all of ``tags``), one page of them and the total."""
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        for column, value in (
            ("backend", backend),
            ("session_id", session_id),
            ("program_id", program_id),
        ):
            if value:
                sql += f" AND {column} = ?"
                args.append(value)
        if pending is not None:
            states = PENDING if pending else FINAL
            sql += f" AND status IN ({','.join('?' * len(states))})"
            args.extend(states)
        sql += " ORDER BY seq " + ("DESC" if descending else "ASC")
        with self._connect() as db:
            rows = [_job(row) for row in db.execute(sql, args).fetchall()]
        wanted = set(tags or ())
        rows = [job for job in rows if wanted <= set(job["tags"])]
        end = None if not limit else offset + limit
        return rows[offset:end], len(rows)

    def queue_position(self, job_id: str) -> int | None:
        """1-based place of a Queued job among its backend's Queued jobs."""
        with self._connect() as db:
            row = db.execute("SELECT seq, backend, status FROM jobs WHERE id = ?", (job_id,))
            job = row.fetchone()
            if job is None or job["status"] != "Queued":
                return None
            ahead = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE backend = ? AND status = 'Queued' AND seq <= ?",
                (job["backend"], job["seq"]),
            ).fetchone()[0]
        return int(ahead)

    def pending_on(self, backend: str) -> int:
        """How many jobs are Queued or Running on ``backend``."""
        with self._connect() as db:
            return int(
                db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE backend = ? AND status IN (?, ?)",
                    (backend, *PENDING),
                ).fetchone()[0]
            )

    def read_status(self, job_id: str) -> tuple[dict[str, Any] | None, bool]:
        """One status read: the job after this read's step of its lifecycle.

        A job spends ``steps`` reads (setting, default 1) in Queued and in Running
        unless held there. Returns the job and whether it is due to finish now (the
        caller computes the outcome and calls :meth:`finish`).
        """
        steps = int(self.setting("steps", 1))
        with self._connect(write=True) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None, False
            status, polls = row["status"], row["polls"]
            due = False
            if status in PENDING and row["hold"] != status and polls >= steps:
                if status == "Queued":
                    status, polls = "Running", 0
                    db.execute(
                        "UPDATE jobs SET status = 'Running', running_at = ? WHERE id = ?",
                        (now_iso(), job_id),
                    )
                else:
                    due = True
            if status in PENDING:
                db.execute("UPDATE jobs SET polls = ? WHERE id = ?", (polls + 1, job_id))
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row), due

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: str | None = None,
        reason: str | None = None,
        reason_code: int | None = None,
        usage_seconds: float | None = None,
    ) -> bool:
        """End a Running job (no-op, False, if it already ended, e.g. was cancelled)."""
        if status not in FINAL:
            raise ValueError(f"final status must be one of {FINAL}, got {status!r}")
        with self._connect(write=True) as db:
            cursor = db.execute(
                "UPDATE jobs SET status = ?, result = ?, reason = ?, reason_code = ?,"
                " usage_seconds = ?, finished_at = ? WHERE id = ? AND status = 'Running'",
                (status, result, reason, reason_code, usage_seconds, now_iso(), job_id),
            )
            return cursor.rowcount == 1

    def cancel(self, job_id: str) -> str:
        """Cancel a pending job: ``cancelled``, ``final`` (already ended) or ``missing``."""
        with self._connect(write=True) as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return "missing"
            if row["status"] in FINAL:
                return "final"
            db.execute(
                "UPDATE jobs SET status = 'Cancelled', finished_at = ? WHERE id = ?",
                (now_iso(), job_id),
            )
        return "cancelled"

    def release(self, job_id: str) -> None:
        """Let a held job go on with its lifecycle."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET hold = NULL WHERE id = ?", (job_id,))

    # ------------------------------------------------------------------ sessions

    def create_session(
        self, *, backend: str, mode: str, instance: str | None, max_ttl: int | None
    ) -> dict[str, Any]:
        """A new open session (``dedicated``) or batch (``batch``)."""
        session_id = "s" + secrets.token_hex(10)[:19]
        with self._connect() as db:
            db.execute(
                "INSERT INTO sessions (id, backend, mode, instance, max_ttl, state, created)"
                " VALUES (?,?,?,?,?,?,?)",
                (session_id, backend, mode, instance, max_ttl, "open", now_iso()),
            )
        session = self.session(session_id)
        assert session is not None
        return session

    def session(self, session_id: str) -> dict[str, Any] | None:
        """One session as stored, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["accepting_jobs"] = bool(out["accepting_jobs"])
        return out

    def close_session(self, session_id: str, *, cancel_jobs: bool = False) -> bool:
        """Stop a session accepting jobs (and cancel its pending jobs when asked)."""
        with self._connect(write=True) as db:
            cursor = db.execute(
                "UPDATE sessions SET accepting_jobs = 0, state = 'closed' WHERE id = ?",
                (session_id,),
            )
            if cancel_jobs:
                db.execute(
                    "UPDATE jobs SET status = 'Cancelled', finished_at = ?"
                    " WHERE session_id = ? AND status IN (?, ?)",
                    (now_iso(), session_id, *PENDING),
                )
            return cursor.rowcount == 1


def _job(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["tags"] = json.loads(out["tags"])
    out["private"] = bool(out["private"])
    out["ideal"] = bool(out["ideal"])
    return out
