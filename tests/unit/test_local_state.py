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


def test_a_worker_answers_for_riders_whose_run_was_recorded(tmp_path):
    """Issue 9.1: the daemon died after a coalesced device run wrote every request's
    output and before it recorded them. On restart the lead's output exists: the worker's
    answer must carry each rider's recorded decision too (it used to carry none, and each
    rider ended in ERROR "the coalesced run returned no result")."""
    from qlayer import keys
    from qlayer.interpreter import Decision
    from qlayer.local.worker import _handle
    from qlayer.planner import Resources
    from qlayer.program import ProgramCache
    from qlayer.store.local import FolderStore

    store = FolderStore(tmp_path / "artifacts")
    members = [{"device_job_id": f"dev-{n}", "job_id": f"job{n}", "seq": 1} for n in range(3)]
    for n, member in enumerate(members):
        member["request_key"] = keys.execute_request(member["job_id"], 1)
        done = Decision("next", seq=2, stage="count", input_key=f"in-{n}")
        output = keys.step_dir(member["job_id"], 1, "execute") + "output.json"
        store.put_json(output, done.to_json())
    lead, *riders = members
    message = {"op": "device", "backend": "fake_manila_v2", **lead, "riders": riders}
    reply = _handle(message, store, ProgramCache(store, tmp_path / "scratch"), Resources())
    assert reply["ok"] and reply["decision"]["input_key"] == "in-0"
    assert {k: v["decision"]["input_key"] for k, v in reply["riders"].items()} == {
        "dev-1": "in-1",
        "dev-2": "in-2",
    }


def test_an_old_home_gets_its_trees_roots(tmp_path):
    """Fairness and retention work by tree (``root_id``): an old home's jobs and queued
    steps get theirs when it is opened, children through their parents."""
    db = tmp_path / "qlayer.db"
    old = sqlite3.connect(db)
    old.executescript(OLD_SCHEMA)
    for job_id, parent in (("r", None), ("r_1_0", "r"), ("r_1_0_2_0", "r_1_0"), ("s", None)):
        old.execute(
            "INSERT INTO jobs (job_id, parent_id, program_id, workflow, arguments, backend,"
            " status, created_at, updated_at) VALUES (?, ?, 'p', 'w', '{}', 'aer', 'QUEUED', 1, 1)",
            (job_id, parent),
        )
        old.execute(
            "INSERT INTO steps (job_id, seq, kind, stage, state, created_at)"
            " VALUES (?, 0, 'stage', 'a', 'pending', 1)",
            (job_id,),
        )
    old.commit()
    old.close()
    conn = state.connect(db)
    roots = dict(conn.execute("SELECT job_id, root_id FROM jobs").fetchall())
    assert roots == {"r": "r", "r_1_0": "r", "r_1_0_2_0": "r", "s": "s"}
    steps = dict(conn.execute("SELECT job_id, root_id FROM steps").fetchall())
    assert steps == roots


#: The queries the daemon makes on every tick or step, each with the index it must use.
HOT_QUERIES = [
    ("SELECT * FROM steps WHERE state = 'running'", "steps_live"),
    ("SELECT job_id FROM steps WHERE kind = 'fanin' AND state = 'waiting'", "steps_live"),
    (
        "SELECT * FROM steps WHERE kind = 'execute' AND state = 'pending' ORDER BY step_id",
        "steps_live_kind",
    ),
    (
        "SELECT root_id FROM steps WHERE state = 'pending' AND kind = 'stage'"
        " AND root_id > 'x' ORDER BY root_id LIMIT 1",
        "steps_live",
    ),
    (
        "SELECT * FROM steps WHERE state = 'pending' AND kind = 'stage' AND root_id IS 'x'"
        " ORDER BY step_id LIMIT 1",
        "steps_live",
    ),
    (
        "SELECT job_id FROM jobs WHERE cancel_requested = 1"
        " AND status NOT IN ('DONE','ERROR','CANCELLED')",
        "jobs_cancelling",
    ),
]


def test_the_daemons_queries_use_indexes_that_hold_live_rows_only(tmp_path):
    conn = state.connect(tmp_path / "qlayer.db")
    for query, index in HOT_QUERIES:
        plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + query))
        assert f"INDEX {index}" in plan and "TEMP B-TREE" not in plan, (query, plan)
    # A finished step (or a job with no cancel pending) is in none of them: their size
    # follows the work in flight, not the history.
    conn.execute(
        "INSERT INTO steps (job_id, seq, kind, state, created_at) VALUES"
        " ('a', 0, 'stage', 'done', 0), ('b', 0, 'stage', 'pending', 0)"
    )
    for index in ("steps_live", "steps_live_kind"):
        [(count,)] = conn.execute(
            f"SELECT COUNT(*) FROM steps INDEXED BY {index}"
            " WHERE state = 'pending' OR state = 'running' OR state = 'waiting'"
        ).fetchall()
        assert count == 1
    [(sql,)] = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'steps_live'").fetchall()
    assert "WHERE state = 'pending'" in sql


def test_an_old_homes_full_indexes_are_replaced(tmp_path):
    db = tmp_path / "qlayer.db"
    state.connect(db).close()
    old = sqlite3.connect(db)
    old.executescript(
        "PRAGMA user_version = 0;"  # an older qlayer never marked its schema
        "CREATE INDEX steps_state ON steps (state, step_id);"
        "CREATE INDEX steps_fair ON steps (state, kind, root_id, step_id);"
        "CREATE INDEX steps_kind ON steps (state, kind, step_id);"
        "CREATE INDEX jobs_cancel ON jobs (cancel_requested, status);"
    )
    old.close()
    conn = state.connect(db)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert not names & {"steps_state", "steps_fair", "steps_kind", "jobs_cancel"}
    assert {"steps_live", "steps_live_kind", "jobs_cancelling"} <= names


def test_opening_a_current_database_runs_no_schema_script(tmp_path):
    db = tmp_path / "qlayer.db"
    first = state.connect(db)
    assert first.execute("PRAGMA user_version").fetchone()[0] == state.SCHEMA_VERSION
    again = state.connect(db)
    assert state.ensure_schema(again) is False  # marked: nothing to create or migrate
    again.execute("PRAGMA user_version = 0")  # as a database an older qlayer wrote
    assert state.ensure_schema(again) is True
    assert again.execute("PRAGMA user_version").fetchone()[0] == state.SCHEMA_VERSION
