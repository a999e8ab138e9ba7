"""The local substrate's submission ledger: :class:`qlayer.dispatch.Ledger` over SQLite.

One row per execute request sent to a remote provider, in the state database's
``provider_ledger`` table (see :mod:`qlayer.local.state`), keyed by the idempotency
key ``<job-id>/<seq>``. The port's atomicity rules map onto SQLite as follows:

* ``claim``: ``INSERT ... ON CONFLICT(key) DO NOTHING`` and, when the row existed,
  ``UPDATE ... WHERE provider_job_id IS NULL AND lease_until <= now`` (take over an
  expired claim), both in one ``BEGIN IMMEDIATE`` transaction;
* ``record_submission``: ``UPDATE ... WHERE provider_job_id IS NULL`` (first id wins).

The ledger may share the daemon's connection (its methods then join the caller's
open transaction instead of starting one) or own a connection of its own, used
from several threads under a lock (the daemon's provider-call threads).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from qlayer.dispatch import DEFAULT_LEASE_S, LEDGER_STATES, Ledger, LedgerEntry
from qlayer.local import state

_COLUMNS = (
    "key, backend, request_key, state, provider_job_id, message, owner, lease_until, claims,"
    " created_at, updated_at"
)


def split_key(key: str) -> tuple[str | None, int | None]:
    """``"<job-id>/<seq>"`` -> ``(job_id, seq)``; other keys (coalesced batches) -> None."""
    job_id, sep, seq = key.rpartition("/")
    if sep and seq.isdigit() and job_id:
        return job_id, int(seq)
    return None, None


class SqliteLedger(Ledger):
    """:class:`~qlayer.dispatch.Ledger` in the local state database.

    Args:
        db: A path to the state database (the ledger opens its own connection) or an
            open connection (shared: the caller's transaction, if one is open, is joined).
        clock: Epoch seconds (injectable for lease tests).
    """

    def __init__(
        self, db: str | Path | sqlite3.Connection, *, clock: Callable[[], float] = time.time
    ) -> None:
        if isinstance(db, sqlite3.Connection):
            self.conn = db
            self.conn.executescript(state.LEDGER_SCHEMA)
        else:
            self.conn = state.connect(Path(db))
        self._lock = threading.RLock()
        self._clock = clock

    # -- the port --------------------------------------------------------------------
    def claim(
        self,
        key: str,
        backend: str,
        request_key: str,
        *,
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> LedgerEntry:
        owner = owner or uuid.uuid4().hex
        job_id, seq = split_key(key)
        with self._tx():
            now = self._clock()
            inserted = self.conn.execute(
                "INSERT INTO provider_ledger (key, job_id, seq, backend, request_key, state, owner,"
                " lease_until, claims, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(key) DO NOTHING",
                (
                    key,
                    job_id,
                    seq,
                    backend,
                    request_key,
                    "CLAIMED",
                    owner,
                    now + lease_s,
                    1,
                    now,
                    now,
                ),
            ).rowcount
            if not inserted:
                self.conn.execute(
                    "UPDATE provider_ledger SET owner = ?, lease_until = ?, claims = claims + 1,"
                    " updated_at = ? WHERE key = ? AND provider_job_id IS NULL"
                    " AND lease_until <= ?",
                    (owner, now + lease_s, now, key, now),
                )
            entry = self._get(key)
        assert entry is not None
        return entry

    def record_submission(self, key: str, provider_job_id: str) -> LedgerEntry:
        with self._tx():
            self._require(key)
            self.conn.execute(
                "UPDATE provider_ledger SET provider_job_id = ?, state = 'SUBMITTED',"
                " updated_at = ? WHERE key = ? AND provider_job_id IS NULL",
                (provider_job_id, self._clock(), key),
            )
            return self._require(key)

    def get(self, key: str) -> LedgerEntry | None:
        with self._lock:
            return self._get(key)

    def set_state(self, key: str, state: str, message: str | None = None) -> LedgerEntry:
        if state not in LEDGER_STATES:
            raise ValueError(f"unknown ledger state {state!r}; expected one of {LEDGER_STATES}")
        with self._tx():
            self._require(key)
            self.conn.execute(
                "UPDATE provider_ledger SET state = ?, message = ?, updated_at = ? WHERE key = ?",
                (state, message, self._clock(), key),
            )
            return self._require(key)

    def entries_in(self, states: Iterable[str]) -> list[LedgerEntry]:
        wanted = list(states)
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM provider_ledger WHERE state IN ({marks})"
                " ORDER BY created_at",
                wanted,
            ).fetchall()
        return [_entry(row) for row in rows]

    # -- local extras ----------------------------------------------------------------
    def entries_for_job(self, job_id: str) -> list[LedgerEntry]:
        """The job's entries, oldest first."""
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM provider_ledger WHERE job_id = ? ORDER BY created_at",
                (job_id,),
            ).fetchall()
        return [_entry(row) for row in rows]

    def expire_claims(self) -> int:
        """End the leases of every claim without a provider job id; returns how many.

        Only for a dispatcher that knows no other one is alive (the local daemon holds
        the home's lock): a claim left by a killed daemon can then be taken over at
        once instead of after its lease. The next ``submit_once`` asks the provider
        (``find_job``) before submitting, so nothing is submitted twice.
        """
        with self._tx():
            return self.conn.execute(
                "UPDATE provider_ledger SET lease_until = 0 WHERE provider_job_id IS NULL"
                " AND state = 'CLAIMED'"
            ).rowcount

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- internals -------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock:
            if self.conn.in_transaction:  # the daemon's own transaction: join it
                yield
                return
            with state.transaction(self.conn):
                yield

    def _get(self, key: str) -> LedgerEntry | None:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM provider_ledger WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else _entry(row)

    def _require(self, key: str) -> LedgerEntry:
        entry = self._get(key)
        if entry is None:
            raise KeyError(f"no ledger entry for {key!r}")
        return entry


def _entry(row: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(
        key=row[0],
        backend=row[1],
        request_key=row[2],
        state=row[3],
        provider_job_id=row[4],
        message=row[5],
        owner=row[6],
        lease_until=row[7],
        claims=row[8],
        created_at=row[9],
        updated_at=row[10],
    )
