"""The local state database: a home written by an older qlayer is brought up to date."""

from __future__ import annotations

import sqlite3

from qlayer.local import state
from qlayer.local.jobstore import SqliteJobStore

#: The tables of the first release, as they were (the columns this release reads).
OLD_SCHEMA = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, parent_id TEXT, item_index INTEGER, program_id TEXT NOT NULL,
    workflow TEXT NOT NULL, arguments TEXT NOT NULL, backend TEXT NOT NULL,
    status TEXT NOT NULL, stage TEXT, seq INTEGER NOT NULL DEFAULT 0, message TEXT,
    error_type TEXT, provider_job_id TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    finished_at REAL, cancel_requested INTEGER NOT NULL DEFAULT 0,
    children_total INTEGER NOT NULL DEFAULT 0, children_done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE steps (
    step_id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, stage TEXT, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    detail TEXT, created_at REAL NOT NULL, started_at REAL, UNIQUE (job_id, seq)
);
CREATE TABLE provider_ledger (
    key TEXT PRIMARY KEY, job_id TEXT, seq INTEGER, backend TEXT NOT NULL,
    request_key TEXT NOT NULL, state TEXT NOT NULL, provider_job_id TEXT, message TEXT,
    owner TEXT, lease_until REAL NOT NULL DEFAULT 0, claims INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
"""


def test_an_old_home_is_migrated_in_place(tmp_path):
    db = tmp_path / "qlayer.db"
    old = sqlite3.connect(db)
    old.executescript(OLD_SCHEMA)
    old.execute(
        "INSERT INTO jobs (job_id, program_id, workflow, arguments, backend, status, stage, seq,"
        " provider_job_id, created_at, updated_at, children_total) VALUES"
        " ('p', 'prog', 'wf', '{}', 'aer', 'RUNNING', 'b ×2', 3, 'dev-1', 1, 1, 2)"
    )
    for seq, kind, stage in (
        (0, "stage", "a"),
        (1, "stage", "a"),
        (2, "stage", "b"),
        (3, "fanin", "fan-in"),
    ):
        old.execute(
            "INSERT INTO steps (job_id, seq, kind, stage, state, created_at) VALUES (?,?,?,?,?,1)",
            ("p", seq, kind, stage, "waiting" if kind == "fanin" else "done"),
        )
    old.execute(
        "INSERT INTO provider_ledger (key, backend, request_key, state, created_at, updated_at)"
        " VALUES ('p/1', 'ibm_x', 'r', 'SUBMITTED', 1, 1)"
    )
    old.commit()
    old.close()

    jobs = SqliteJobStore(state.connect(db))
    job = jobs.get("p")
    assert job.provider_job_ids == ["dev-1"] and job.fanout_seq == 3
    assert jobs.runs_before("p", 10) == {"a": 2, "b": 1}  # backfilled from the done steps
    from qlayer.local.ledger import SqliteLedger

    entry = SqliteLedger(jobs.conn).get("p/1")
    assert (entry.state, entry.slot, entry.token, entry.outcome) == ("SUBMITTED", False, None, None)
    state.connect(db).close()  # a second open changes nothing and does not fail
