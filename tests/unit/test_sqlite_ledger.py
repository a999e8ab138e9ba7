"""What only the SQLite ledger can show (the port's contract is tests/contract): entries
survive a new connection, a shared connection joins the caller's transaction, and two
processes racing to claim one key leave exactly one owner."""

from __future__ import annotations

import multiprocessing
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_dispatch import Clock

from qlayer.local import state
from qlayer.local.ledger import SqliteLedger, split_key

# ----------------------------------------------------------------------------- SQLite only


def test_split_key():
    assert split_key("20240101-abc/3") == ("20240101-abc", 3)
    assert split_key("parent_1_4/12") == ("parent_1_4", 12)
    assert split_key("coalesced/0123abcd") == (None, None)
    assert split_key("plain") == (None, None)


def test_entries_survive_a_new_connection_and_show_as_device_jobs(tmp_path):
    db = tmp_path / "state.db"
    ledger = SqliteLedger(db)
    ledger.claim("job1/3", "ibm_x", "req")
    ledger.record_submission("job1/3", "pj-9")
    ledger.set_state("job1/3", "QUEUED")
    ledger.close()
    again = SqliteLedger(db)
    entry = again.get("job1/3")
    assert (entry.provider_job_id, entry.state) == ("pj-9", "QUEUED")
    assert [e.key for e in again.entries_for_job("job1")] == ["job1/3"]
    [row] = state.device_jobs_for(again.conn, "job1")
    assert (row["device_job_id"], row["idempotency_key"], row["status"], row["remote"]) == (
        "pj-9",
        "job1/3",
        "QUEUED",
        True,
    )
    again.close()


def test_expire_claims_ends_dead_leases_only(tmp_path):
    clock = Clock()
    ledger = SqliteLedger(tmp_path / "state.db", clock=clock)
    ledger.claim("a/1", "b", "r", owner="dead", lease_s=300)
    ledger.claim("b/1", "b", "r", owner="dead", lease_s=300)
    ledger.record_submission("b/1", "pj")
    assert ledger.expire_claims() == 1
    taken = ledger.claim("a/1", "b", "r", owner="new", lease_s=300)
    assert (taken.owner, taken.claims) == ("new", 2)
    assert ledger.claim("b/1", "b", "r", owner="new").owner == "dead"
    ledger.close()


def test_shared_connection_joins_the_callers_transaction(tmp_path):
    conn = state.connect(tmp_path / "state.db")
    ledger = SqliteLedger(conn)
    with state.transaction(conn):
        ledger.claim("k/1", "b", "r")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")  # the caller's transaction was rolled back
    assert ledger.get("k/1") is None
    with state.transaction(conn):
        ledger.claim("k/1", "b", "r")
    assert ledger.get("k/1") is not None
    conn.close()


def _race(db: str, owner: str, start, out) -> None:
    ledger = SqliteLedger(db)
    start.wait()
    entry = ledger.claim("race/1", "b", "r", owner=owner, lease_s=300)
    out.put((owner, entry.owner))
    ledger.close()


def test_processes_racing_to_claim_leave_one_owner(tmp_path):
    db = str(tmp_path / "state.db")
    SqliteLedger(db).close()
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(db, f"p{i}", start, out)) for i in range(8)]
    for proc in procs:
        proc.start()
    start.set()
    seen = [out.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    winners = {claimed_by for _me, claimed_by in seen}
    assert len(winners) == 1, seen
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*), MAX(claims) FROM provider_ledger").fetchone() == (1, 1)
    conn.close()
