"""The local daemon's notification sender: the outbox of job ends, delivered apart.

:class:`qlayer.local.jobstore.SqliteJobStore` writes one ``notifications`` row per
target in the transaction that gives a job its final status. This thread, started by
the daemon, sends due rows (:func:`qlayer.notify.send`) from a small pool of its own,
so that no receiver can slow the daemon's loop or another receiver, and records each
outcome: delivered, or retried after :data:`qlayer.notify.BACKOFF_S` and given up after
the last. A daemon that dies with rows pending sends them when it starts again; only a
death between a receiver's answer and the row's update can repeat one, and every
message carries ``X-Qlayer-Delivery`` for a receiver to recognise it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from qlayer import notify
from qlayer.core.ports import Event
from qlayer.core.transitions import status_json
from qlayer.local import state
from qlayer.local.jobstore import SqliteJobStore
from qlayer.local.paths import Home

log = logging.getLogger("qlayer.notify")

POLL_S = 0.2


class Notifier:
    """Sends the outbox's due notifications until :meth:`stop`.

    Args:
        home: The local home (its database and its token).
        senders: How many notifications may be in flight at once.
    """

    def __init__(self, home: Home, *, senders: int = 4) -> None:
        self.home = home
        self._conn: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(senders, thread_name_prefix="qlayer-notify")
        self._sending: dict[tuple[str, str], Future[None]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="qlayer-notifier", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now (a job just ended)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop looking; notifications in flight get ``timeout`` to finish."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -------------------------------------------------------------------------- loop
    def _loop(self) -> None:
        self._conn = state.connect(self.home.db)
        token = self.home.token()
        while not self._stop.is_set():
            try:
                self.send_due(token)
            except sqlite3.Error:  # the database busy or unwritable for now: later
                log.exception("cannot read the notification outbox; trying again")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def send_due(self, token: str) -> int:
        """Start sending every due notification not already in flight; how many started."""
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT job_id, target, status, attempts FROM notifications"
            " WHERE state = 'pending' AND next_at <= ? ORDER BY next_at LIMIT 64",
            (time.time(),),
        ).fetchall()
        started = 0
        for row in rows:
            key = (row["job_id"], row["target"])
            with self._lock:
                if key in self._sending:
                    continue
                record = SqliteJobStore(self._conn).get(row["job_id"])
                message = notify.payload(status_json(record))
                self._sending[key] = self._pool.submit(
                    self._send, row["job_id"], row["target"], message, token, row["attempts"]
                )
            started += 1
        return started

    def _send(
        self, job_id: str, target: str, message: dict[str, object], token: str, attempts: int
    ) -> None:
        conn = state.connect(self.home.db)  # one per send: sqlite connections stay in a thread
        jobs = SqliteJobStore(conn)
        shown = notify.shown(target)
        try:
            notify.send(target, message, token)
        except Exception as exc:  # the receiver's fault, never the job's
            tries = attempts + 1
            gave_up = tries > len(notify.BACKOFF_S)
            delay = 0.0 if gave_up else notify.BACKOFF_S[tries - 1]
            with state.transaction(conn):
                conn.execute(
                    "UPDATE notifications SET attempts = ?, last_error = ?, next_at = ?,"
                    " state = ? WHERE job_id = ? AND target = ?",
                    (
                        tries,
                        str(exc)[:500],
                        time.time() + delay,
                        "failed" if gave_up else "pending",
                        job_id,
                        target,
                    ),
                )
                if gave_up:
                    detail = {"target": shown, "attempts": tries, "error": str(exc)[:500]}
                    jobs.add_event(job_id, Event(None, None, "notification failed", detail))
            log.warning(
                "notifying %s of %s failed (try %d): %s%s",
                shown,
                job_id,
                tries,
                exc,
                "; given up" if gave_up else f"; again in {delay:g} s",
            )
        else:
            with state.transaction(conn):
                conn.execute(
                    "UPDATE notifications SET state = 'delivered', delivered_at = ?,"
                    " attempts = attempts + 1 WHERE job_id = ? AND target = ?",
                    (time.time(), job_id, target),
                )
                jobs.add_event(job_id, Event(None, None, "notified", {"target": shown}))
        finally:
            conn.close()
            with self._lock:
                self._sending.pop((job_id, target), None)
