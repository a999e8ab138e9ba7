"""The Ledger port's contract, run against every implementation (memory and SQLite).

Plus what only a durable ledger can show: entries survive a new connection, and two
processes racing to claim one key leave exactly one owner.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_dispatch import Clock, FakeQueueProvider, request

from qlayer.dispatch import (
    FINAL_STATES,
    MemoryLedger,
    NotSubmitted,
    SubmissionInProgress,
    poll_once,
    submit_once,
)
from qlayer.local import state
from qlayer.local.ledger import SqliteLedger, split_key


@pytest.fixture(params=["memory", "sqlite", "sqlite-shared"])
def make_ledger(request, tmp_path):
    """A factory ``make_ledger(clock)`` for each implementation of the port."""
    made = []

    def make(clock=None):
        clock = clock or Clock()
        if request.param == "memory":
            return MemoryLedger(clock=clock)
        if request.param == "sqlite":
            ledger = SqliteLedger(tmp_path / "state.db", clock=clock)
        else:  # the daemon's way: a ledger over a connection it also uses itself
            ledger = SqliteLedger(state.connect(tmp_path / "state.db"), clock=clock)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


# ----------------------------------------------------------------------------- contract


def test_claim_creates_once_and_returns_the_entry(make_ledger):
    ledger = make_ledger()
    entry = ledger.claim("job1/3", "ibm_x", "req", owner="a", lease_s=60)
    assert (entry.key, entry.backend, entry.request_key) == ("job1/3", "ibm_x", "req")
    assert (entry.state, entry.owner, entry.claims, entry.provider_job_id) == (
        "CLAIMED",
        "a",
        1,
        None,
    )
    assert entry.lease_until == pytest.approx(1060.0)
    # A live claim by someone else is returned as is.
    again = ledger.claim("job1/3", "ibm_x", "req", owner="b", lease_s=60)
    assert (again.owner, again.claims) == ("a", 1)
    assert ledger.get("job1/3") == again
    assert ledger.get("nope") is None


def test_expired_claim_is_taken_over(make_ledger):
    clock = Clock()
    ledger = make_ledger(clock)
    ledger.claim("k", "b", "r", owner="a", lease_s=10)
    clock.now += 10
    taken = ledger.claim("k", "b", "r", owner="b", lease_s=10)
    assert (taken.owner, taken.claims, taken.lease_until) == ("b", 2, clock.now + 10)


def test_claim_with_provider_id_is_never_taken_over(make_ledger):
    clock = Clock()
    ledger = make_ledger(clock)
    ledger.claim("k", "b", "r", owner="a", lease_s=1)
    ledger.record_submission("k", "pj-1")
    clock.now += 100
    entry = ledger.claim("k", "b", "r", owner="b", lease_s=1)
    assert (entry.owner, entry.provider_job_id, entry.claims) == ("a", "pj-1", 1)


def test_record_submission_first_writer_wins(make_ledger):
    ledger = make_ledger()
    ledger.claim("k", "b", "r", owner="a")
    first = ledger.record_submission("k", "one")
    assert (first.provider_job_id, first.state) == ("one", "SUBMITTED")
    assert ledger.record_submission("k", "two").provider_job_id == "one"
    with pytest.raises(KeyError):
        ledger.record_submission("absent", "x")


def test_set_state_and_entries_in(make_ledger):
    ledger = make_ledger()
    for key in ("a/1", "b/1", "c/1"):
        ledger.claim(key, "b", "r")
        ledger.record_submission(key, "pj-" + key)
    ledger.set_state("a/1", "RUNNING")
    ledger.set_state("b/1", "ERROR", "calibration failed")
    assert ledger.get("b/1").message == "calibration failed"
    assert sorted(e.key for e in ledger.entries_in(["RUNNING", "SUBMITTED"])) == ["a/1", "c/1"]
    assert [e.key for e in ledger.entries_in(FINAL_STATES)] == ["b/1"]
    assert ledger.entries_in([]) == []
    with pytest.raises(ValueError):
        ledger.set_state("a/1", "FINISHED")
    with pytest.raises(KeyError):
        ledger.set_state("absent", "DONE")


def test_submit_once_twice_one_provider_job(make_ledger):
    ledger, provider = make_ledger(), FakeQueueProvider()
    first = submit_once(ledger, provider, "job1/3", "ibm_x", request(), request_key="r")
    second = submit_once(ledger, provider, "job1/3", "ibm_x", request(), request_key="r")
    assert first == second == "job-1"
    assert len(provider.submits()) == 1


def test_submit_once_after_crash_between_accept_and_record(make_ledger):
    clock = Clock()
    ledger, provider = make_ledger(clock), FakeQueueProvider()
    # The dispatcher dies after the provider accepted the job: the claim stays without an id.
    ledger.claim("job1/3", "ibm_x", "r", owner="dead", lease_s=60)
    provider.submit("ibm_x", request(), idempotency_key="job1/3")
    with pytest.raises(SubmissionInProgress):
        submit_once(ledger, provider, "job1/3", "ibm_x", request(), lease_s=60)
    clock.now += 61
    assert submit_once(ledger, provider, "job1/3", "ibm_x", request(), lease_s=60) == "job-1"
    assert len(provider.submits()) == 1
    assert ("find_job", "ibm_x", "job1/3") in provider.calls


def test_poll_once_stops_at_a_final_state(make_ledger):
    ledger, provider = make_ledger(), FakeQueueProvider()
    with pytest.raises(NotSubmitted):
        poll_once(ledger, provider, "k")
    job_id = submit_once(ledger, provider, "k", "ibm_x", request())
    assert poll_once(ledger, provider, "k").state == "QUEUED"
    provider.jobs[job_id]["state"] = "DONE"
    assert poll_once(ledger, provider, "k").state == "DONE"
    provider.jobs[job_id]["state"] = "RUNNING"  # out of order after DONE: not even asked
    calls = len(provider.calls)
    assert poll_once(ledger, provider, "k").state == "DONE"
    assert len(provider.calls) == calls


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
