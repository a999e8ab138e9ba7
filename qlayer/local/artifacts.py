"""The home's artifact store: a quick step's small artifacts as rows, the rest as files.

A fan-out's trivial child writes three small artifacts: its decision, its result and its
log. As files under ``artifacts/`` they cost four folders and three files a child, and
the disk's metadata latency, not qlayer's work, set the pace of a large fan-out
(``bench/fs_ops.py``, docs/benchmarks.md). So a worker *holds* a stage step's writes
in memory (:meth:`HomeStore.hold`) and hands them to the daemon with its reply; the
daemon commits them as rows of ``artifact_rows`` in the transaction that records the
step done. Nothing is lost in between: a step whose reply never came runs again.

A step's writes stop being held, and what it held is written out to files at once, when:

* the stage itself prints or logs something (its lines survive a kill that follows them;
  :meth:`HomeStore.make_durable`);
* it has run :data:`HOLD_S` (a long stage's log is live, as before);
* one write is over :data:`HOLD_MAX_BYTES`, or all of them together over
  :data:`HOLD_TOTAL_BYTES`;
* a key is a file the stage saves (``jobs/<id>/files/``, which users may open in the
  folder) or exists as a file already (an earlier attempt's log).

Reads look at what this process holds, then at the rows, then at the folder. A process
with a connection that writes (the daemon, a client) keeps the two apart: a write to a
key that has a row changes the row.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from qlayer.errors import ArtifactError
from qlayer.store.base import ArtifactStore
from qlayer.store.local import FolderStore

#: How long a step's writes are held before they go to files (its log is live after).
HOLD_S = 0.25
#: The largest write that is held; a larger one goes to its file, with the rest.
HOLD_MAX_BYTES = 64 * 1024
#: The most a step holds in all.
HOLD_TOTAL_BYTES = 256 * 1024

#: After every key that starts with a prefix (keys are UTF-8 text, compared as bytes).
_TOP = "\U0010ffff"


def _range(prefix: str) -> tuple[str, str]:
    """The rows under ``prefix``, read as a folder (``a/b`` means ``a/b/``), as bounds."""
    base = prefix.rstrip("/") + "/" if prefix else ""
    return base, base + _TOP


def encode_records(records: dict[str, bytes]) -> dict[str, str]:
    """Held writes as JSON text for the worker's reply."""
    return {key: base64.b64encode(data).decode("ascii") for key, data in records.items()}


def decode_records(encoded: object) -> dict[str, bytes]:
    """What :func:`encode_records` made (a worker's reply: our own process, not a user)."""
    if not isinstance(encoded, dict):
        return {}
    return {str(key): base64.b64decode(value) for key, value in encoded.items()}


#: Every store of this process, for :func:`_after_fork`.
_STORES: weakref.WeakSet[HomeStore] = weakref.WeakSet()


def _before_fork() -> None:
    """A stage that forks is no quick step, and its children may write to the store (a
    forked child's held writes would die with it): what is held goes to files first."""
    for store in list(_STORES):
        with store._lock, contextlib.suppress(ArtifactError):
            store._write_out()


def _after_fork() -> None:
    for store in list(_STORES):
        store._after_fork()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork)


def rows_size(conn: sqlite3.Connection, prefix: str) -> int:
    """The bytes the rows under ``prefix`` hold."""
    low, high = _range(prefix)
    query = "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM artifact_rows WHERE key >= ? AND key < ?"
    return int(conn.execute(query, (low, high)).fetchone()[0])


def forget_rows(conn: sqlite3.Connection, prefix: str) -> None:
    """Delete the rows under ``prefix`` (in the caller's transaction, if one is open)."""
    conn.execute("DELETE FROM artifact_rows WHERE key >= ? AND key < ?", _range(prefix))


class _Held:
    """One step's writes, held."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.records: dict[str, bytearray] = {}
        self.size = 0
        self.out = False  # written out: every later write of the step goes to its file


class HomeStore(ArtifactStore):
    """The artifacts of a qlayer home: rows of its state database and files under
    ``artifacts/`` (see the module's text).

    Args:
        artifacts: The folder (``$QLAYER_HOME/artifacts``).
        db: The state database; None: files only (nothing held, no rows read).
        conn: A connection of the caller's to ``db`` (the daemon's, a client's): reads
            see what its open transaction wrote, and writes keep rows current. None: one
            that only reads is opened when first needed (a worker's).
    """

    append_is_cheap = True

    def __init__(
        self,
        artifacts: str | os.PathLike[str],
        db: str | os.PathLike[str] | None = None,
        conn: sqlite3.Connection | None = None,
    ) -> None:
        self.folder = FolderStore(artifacts)
        self.root = self.folder.root
        self._root = str(self.root) + "/"
        self.db = Path(db) if db is not None else None
        self._conn = conn
        self._writes_rows = conn is not None
        #: ``conn`` is the creating thread's only: a connection waiting for the write
        #: lock holds its mutex, so a thread sharing it could deadlock with the lock's
        #: holder. Other threads open their own (:meth:`_rows`).
        self._owner = threading.get_ident()
        self._local = threading.local()
        self._lock = threading.RLock()
        self._held: _Held | None = None
        self._ticker: threading.Thread | None = None
        _STORES.add(self)

    def _after_fork(self) -> None:
        """In a process a stage forked: a fresh lock, no thread, its own connection, and
        nothing held (its writes go to files)."""
        self._lock = threading.RLock()
        self._ticker = None
        self._held = None
        self._local = threading.local()
        self._conn, self._owner = None, 0  # the parent's connection is not this process's

    # -- keys ----------------------------------------------------------------------------
    def _check(self, key: str) -> None:
        """The folder store's key rule, without building a path (every call makes one)."""
        if key.startswith("/") or ".." in key.split("/"):
            self.folder.path(key)  # raises, with the folder store's message

    def _is_file(self, key: str) -> bool:
        return os.path.isfile(self._root + key)

    # -- rows ----------------------------------------------------------------------------
    def _rows(self) -> sqlite3.Connection | None:
        """The connection this thread reads and writes rows on."""
        if self._conn is not None and threading.get_ident() == self._owner:
            return self._conn
        if self.db is None:
            return None
        if not hasattr(self._local, "conn"):
            self._local.conn = self._open()
        conn: sqlite3.Connection | None = self._local.conn
        return conn

    def _open(self) -> sqlite3.Connection | None:
        """A connection of this thread's; None where the database has no rows to read
        (not made yet, or by a qlayer before them): files only."""
        from qlayer.local.state import connect_plain

        assert self.db is not None
        if not self.db.exists():
            return None
        conn = connect_plain(self.db, read_only=not self._writes_rows)
        found = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'artifact_rows'"
        if conn.execute(found).fetchone() is None:
            conn.close()
            return None
        return conn

    def _row(self, key: str) -> bytes | None:
        conn = self._rows()
        if conn is None:
            return None
        found = conn.execute("SELECT data FROM artifact_rows WHERE key = ?", (key,)).fetchone()
        return bytes(found[0]) if found is not None else None

    def commit_rows(self, records: dict[str, bytes]) -> None:
        """Write held records as rows (the daemon, inside the transaction that records
        the step that held them done)."""
        if records:
            conn = self._rows()
            assert self._writes_rows and conn is not None
            for key in records:
                self._check(key)
            conn.executemany(
                "INSERT OR REPLACE INTO artifact_rows (key, data) VALUES (?, ?)",
                list(records.items()),
            )

    # -- holding -------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self) -> Iterator[dict[str, bytes]]:
        """Hold the writes of the block (one step) as the module's text says; the dict
        yielded is filled, as the block ends, with what is still held, for the caller to
        hand to the daemon. A block that raises writes out what it held instead."""
        records: dict[str, bytes] = {}
        if self.db is None:
            yield records
            return
        if not self._start_ticker():
            yield records  # no thread to write a long step's records out: hold nothing
            return
        with self._lock:
            self._held = _Held()
        try:
            yield records
        except BaseException:
            with self._lock:
                with contextlib.suppress(ArtifactError):  # the block's own error is the news
                    self._write_out()
                self._held = None
            raise
        with self._lock:
            held, self._held = self._held, None
            if held is not None and not held.out:
                records.update({key: bytes(data) for key, data in held.records.items()})

    def make_durable(self, key: str) -> None:
        """Write what is held out to files: the stage's own output must survive a kill."""
        with self._lock:
            self._write_out()

    def _write_out(self) -> None:
        """(Lock held.) Write every held record to its file; hold nothing more."""
        held = self._held
        if held is None or held.out:
            return
        held.out = True
        records, held.records = held.records, {}
        for key, data in records.items():
            self.folder.put_bytes(key, bytes(data))

    def _start_ticker(self) -> bool:
        """The thread of :meth:`_tick`, once a process; False if none can start."""
        if self._ticker is not None and self._ticker.is_alive():
            return True
        ticker = threading.Thread(target=self._tick, name="qlayer-hold", daemon=True)
        try:
            ticker.start()
        except RuntimeError:  # no room for a thread (a memory limit)
            return False
        self._ticker = ticker
        return True

    def _tick(self) -> None:
        """Write out a step's held records once it has run :data:`HOLD_S`."""
        while True:
            time.sleep(HOLD_S / 2)
            with self._lock:
                held = self._held
                late = held is not None and time.monotonic() - held.started >= HOLD_S
                if late:
                    with contextlib.suppress(ArtifactError):  # its next write meets it too
                        self._write_out()

    def _holds(self, key: str, size: int) -> _Held | None:
        """(Lock held.) The step's held writes if ``key`` may join them."""
        held = self._held
        if held is None or held.out:
            return None
        if (
            size > HOLD_MAX_BYTES
            or held.size + size > HOLD_TOTAL_BYTES
            or "/files/" in key
            or (key not in held.records and self._is_file(key))
        ):
            self._write_out()
            return None
        return held

    # -- the port ------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        self._check(key)  # held or not
        with self._lock:
            held = self._holds(key, len(data))
            if held is not None:
                old = held.records.get(key)
                held.size += len(data) - (len(old) if old is not None else 0)
                held.records[key] = bytearray(data)
                return
        self.folder.put_bytes(key, data)
        self._forget_row(key)

    def append_text(self, key: str, text: str) -> None:
        self._check(key)
        data = text.encode("utf-8")
        with self._lock:
            held = self._holds(key, len(data))
            if held is not None:
                if key not in held.records:
                    held.records[key] = bytearray(self._row(key) or b"")
                    held.size += len(held.records[key])
                held.records[key] += data
                held.size += len(data)
                return
        conn = self._rows() if self._writes_rows else None
        old = self._row(key) if conn is not None else None
        if conn is not None and old is not None:  # a note of the daemon's, after the step
            conn.execute("UPDATE artifact_rows SET data = ? WHERE key = ?", (old + data, key))
            return
        self.folder.append_text(key, text)

    def get_bytes(self, key: str) -> bytes:
        self._check(key)
        with self._lock:
            held = self._held
            if held is not None and key in held.records:
                return bytes(held.records[key])
        row = self._row(key)
        if row is not None:
            return row
        return self.folder.get_bytes(key)

    def exists(self, key: str) -> bool:
        self._check(key)
        with self._lock:
            held = self._held
            if held is not None and key in held.records:
                return True
        return self._row(key) is not None or self._is_file(key)

    def list(self, prefix: str) -> list[str]:
        found = set(self.folder.list(prefix))
        low, high = _range(prefix)
        conn = self._rows()
        if conn is not None:
            found.update(
                row[0]
                for row in conn.execute(
                    "SELECT key FROM artifact_rows WHERE key >= ? AND key < ?", (low, high)
                )
            )
        with self._lock:
            if self._held is not None:
                found.update(k for k in self._held.records if low <= k < high)
        return sorted(found)

    def delete(self, key: str) -> None:
        with self._lock:
            held = self._held
            if held is not None and key in held.records:
                held.size -= len(held.records.pop(key))
        self.folder.delete(key)
        self._forget_row(key)

    def path(self, key: str) -> Path:
        """The file ``key`` has, or would have, in the folder."""
        return self.folder.path(key)

    def remove_tree(self, prefix: str) -> None:
        """Delete every artifact under ``prefix``: its folder and its rows."""
        self.folder.remove_tree(prefix)
        conn = self._rows() if self._writes_rows else None
        if conn is not None:
            forget_rows(conn, prefix)

    def _forget_row(self, key: str) -> None:
        """A write to a file: the row the key may have goes (a process that writes rows)."""
        conn = self._rows() if self._writes_rows else None
        if conn is not None and self._row(key) is not None:
            conn.execute("DELETE FROM artifact_rows WHERE key = ?", (key,))
