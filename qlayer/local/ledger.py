"""The local ledger: :class:`qlayer.dispatch.ledger.Ledger` over the state database.

One row per execute request sent to a remote provider, in ``provider_ledger`` (see
:mod:`qlayer.local.state`), keyed by the idempotency key ``<job-id>/<seq>``. Each method is
one ``BEGIN IMMEDIATE`` transaction, so several processes sharing the database (the daemon,
a test, a second daemon that lost the lock race) keep the port's atomicity:

* ``claim``: ``INSERT ... ON CONFLICT(key) DO NOTHING``, then a conditional ``UPDATE`` of a
  WAITING row or of an expired claim without a provider job id;
* ``record_submission``: ``UPDATE ... WHERE provider_job_id IS NULL`` (first id wins);
* ``take_slot``: counting the backend's rows that hold a slot, in the same transaction.

The ledger may share the daemon's connection (its methods then join the caller's open
transaction) or own one, used from several threads under a lock (the provider threads).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from qlayer.dispatch.ledger import (
    DEFAULT_LEASE_S,
    FINAL_STATES,
    Ledger,
    LedgerEntry,
    Slot,
    check_final,
    check_state,
)
from qlayer.local import state

_COLUMNS = (
    "key, backend, request_key, state, provider_job_id, message, owner, lease_until, claims,"
    " token, outcome, slot, created_at, updated_at, heartbeat_s, heartbeat_at"
)
_FINAL_SQL = "('DONE','ERROR','CANCELLED')"


def split_key(key: str) -> tuple[str | None, int | None]:
    """``"<job-id>/<seq>"`` -> ``(job_id, seq)``; other keys (coalesced batches) -> None."""
    job_id, sep, seq = key.rpartition("/")
    if sep and seq.isdigit() and job_id:
        return job_id, int(seq)
    return None, None


class SqliteLedger(Ledger):
    """The ledger in the local state database.

    Args:
        db: A path to the state database (the ledger opens its own connection) or an
            open connection (shared: the caller's transaction, if one is open, is joined).
        clock: Epoch seconds (injectable for lease tests).
    """

    def __init__(
        self, db: str | Path | sqlite3.Connection, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.conn = db if isinstance(db, sqlite3.Connection) else state.connect(Path(db))
        self._lock = threading.RLock()
        self._clock = clock

    # -- the port -----------------------------------------------------------------------
    def hold(
        self,
        key: str,
        backend: str,
        request_key: str,
        *,
        token: str | None = None,
        heartbeat_s: float | None = None,
    ) -> LedgerEntry:
        with self._tx() as now:
            new = self._insert(key, backend, request_key, "WAITING", now, claims=0, token=token)
            if new or token is not None:
                self.conn.execute(
                    "UPDATE provider_ledger SET token = COALESCE(?, token), heartbeat_s = ?,"
                    " updated_at = ? WHERE key = ?",
                    (token, heartbeat_s, now, key),
                )
            return self._require(key)

    def record_heartbeat(self, key: str) -> None:
        with self._tx() as now:
            self.conn.execute(
                "UPDATE provider_ledger SET heartbeat_at = ? WHERE key = ?", (now, key)
            )

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
        with self._tx() as now:
            lease = now + lease_s
            if not self._insert(
                key, backend, request_key, "CLAIMED", now, claims=1, owner=owner, lease=lease
            ):
                claimed = self.conn.execute(
                    "UPDATE provider_ledger SET state = 'CLAIMED', owner = ?, lease_until = ?,"
                    " claims = 1, updated_at = ? WHERE key = ? AND state = 'WAITING'",
                    (owner, lease, now, key),
                ).rowcount
                if not claimed:
                    self.conn.execute(
                        "UPDATE provider_ledger SET owner = ?, lease_until = ?,"
                        " claims = claims + 1, updated_at = ? WHERE key = ? AND state = 'CLAIMED'"
                        " AND provider_job_id IS NULL AND lease_until <= ?",
                        (owner, lease, now, key, now),
                    )
            return self._require(key)

    def release(self, key: str, owner: str) -> bool:
        with self._tx() as now:
            return bool(
                self.conn.execute(
                    "UPDATE provider_ledger SET lease_until = 0, updated_at = ? WHERE key = ?"
                    " AND owner = ? AND state = 'CLAIMED' AND provider_job_id IS NULL",
                    (now, key, owner),
                ).rowcount
            )

    def record_submission(self, key: str, provider_job_id: str) -> LedgerEntry:
        with self._tx() as now:
            self._require(key)
            self.conn.execute(
                "UPDATE provider_ledger SET provider_job_id = ?,"
                " state = CASE WHEN state = 'CLAIMED' THEN 'SUBMITTED' ELSE state END,"
                " updated_at = ? WHERE key = ? AND provider_job_id IS NULL",
                (provider_job_id, now, key),
            )
            return self._require(key)

    def set_state(self, key: str, state: str, message: str | None = None) -> LedgerEntry:
        check_state(state)
        with self._tx() as now:
            self._require(key)
            self.conn.execute(
                "UPDATE provider_ledger SET state = ?, message = ?, updated_at = ?,"
                " slot = CASE WHEN ? THEN 0 ELSE slot END WHERE key = ?",
                (state, message, now, state in FINAL_STATES, key),
            )
            return self._require(key)

    def record_outcome(self, key: str, outcome: Mapping[str, Any]) -> bool:
        with self._tx() as now:
            return bool(
                self.conn.execute(
                    "UPDATE provider_ledger SET outcome = ?, updated_at = ? WHERE key = ?"
                    f" AND outcome IS NULL AND state NOT IN {_FINAL_SQL}",
                    (json.dumps(dict(outcome)), now, key),
                ).rowcount
            )

    def finish(
        self,
        key: str,
        state: str,
        *,
        outcome: Mapping[str, Any] | None = None,
        message: str | None = None,
    ) -> bool:
        check_final(state)
        with self._tx() as now:
            return bool(
                self.conn.execute(
                    "UPDATE provider_ledger SET state = ?, slot = 0, updated_at = ?,"
                    " outcome = COALESCE(?, outcome), message = COALESCE(?, message)"
                    f" WHERE key = ? AND state NOT IN {_FINAL_SQL}",
                    (
                        state,
                        now,
                        None if outcome is None else json.dumps(dict(outcome)),
                        message,
                        key,
                    ),
                ).rowcount
            )

    def take_slot(self, key: str, max_in_flight: int) -> Slot:
        with self._tx():
            entry = self._get(key)
            if entry is None or entry.state in FINAL_STATES:
                return Slot.NONE
            if entry.slot:
                return Slot.HELD
            used = self.conn.execute(
                "SELECT COUNT(*) FROM provider_ledger WHERE backend = ? AND slot = 1",
                (entry.backend,),
            ).fetchone()[0]
            if used >= max_in_flight:
                return Slot.NONE
            self.conn.execute("UPDATE provider_ledger SET slot = 1 WHERE key = ?", (key,))
            return Slot.TAKEN

    def give_back_slot(self, key: str) -> bool:
        with self._tx():
            return bool(
                self.conn.execute(
                    "UPDATE provider_ledger SET slot = 0 WHERE key = ? AND slot = 1", (key,)
                ).rowcount
            )

    def in_flight(self, backend: str) -> int:
        with self._lock:
            return int(
                self.conn.execute(
                    "SELECT COUNT(*) FROM provider_ledger WHERE backend = ? AND slot = 1",
                    (backend,),
                ).fetchone()[0]
            )

    def get(self, key: str) -> LedgerEntry | None:
        with self._lock:
            return self._get(key)

    def entries_in(self, states: Iterable[str], *, backend: str | None = None) -> list[LedgerEntry]:
        wanted = list(states)
        if not wanted:
            return []
        where = f"state IN ({','.join('?' * len(wanted))})"
        params: list[Any] = list(wanted)
        if backend is not None:
            where += " AND backend = ?"
            params.append(backend)
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM provider_ledger WHERE {where} ORDER BY created_at, key",
                params,
            ).fetchall()
        return [_entry(row) for row in rows]

    # -- local extras -------------------------------------------------------------------
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
            return int(
                self.conn.execute(
                    "UPDATE provider_ledger SET lease_until = 0 WHERE provider_job_id IS NULL"
                    " AND state = 'CLAIMED'"
                ).rowcount
            )

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- internals ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self) -> Iterator[float]:
        with self._lock, state.joined(self.conn):
            yield self._clock()

    def _insert(
        self,
        key: str,
        backend: str,
        request_key: str,
        state_: str,
        now: float,
        *,
        claims: int,
        owner: str | None = None,
        lease: float = 0.0,
        token: str | None = None,
    ) -> bool:
        job_id, seq = split_key(key)
        return bool(
            self.conn.execute(
                "INSERT INTO provider_ledger (key, job_id, seq, backend, request_key, state, owner,"
                " lease_until, claims, token, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(key) DO NOTHING",
                (
                    key,
                    job_id,
                    seq,
                    backend,
                    request_key,
                    state_,
                    owner,
                    lease,
                    claims,
                    token,
                    now,
                    now,
                ),
            ).rowcount
        )

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
        token=row[9],
        outcome=json.loads(row[10]) if row[10] else None,
        slot=bool(row[11]),
        created_at=row[12],
        updated_at=row[13],
        heartbeat_s=row[14],
        heartbeat_at=row[15] or 0.0,
    )
