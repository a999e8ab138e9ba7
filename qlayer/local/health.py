"""The daemon when the machine, not a job, is at fault: a full disk, a read-only folder.

Such a fault is no job's: no job fails of it. The daemon stays up and pauses: it hands
out no new work, says what is wrong in its log and in ``daemon.health`` (which ``qlayer
status`` shows), tries a small write every second, and when one succeeds resumes by
itself through the same recovery as after a crash — steps that were cut short run again,
and every step is idempotent.

``daemon.health`` is allocated once at start and rewritten in place, so it can still be
updated on a disk that is full.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from qlayer.local.paths import Home
from qlayer.local.state import transaction
from qlayer.store.base import ArtifactStore

log = logging.getLogger("qlayer.daemon")

#: What a full disk, a quota or a folder that cannot be written look like.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)
_SQLITE_STORAGE = ("disk is full", "readonly", "disk I/O error", "unable to open database")
PROBE_EVERY_S = 1.0
_STATUS_BYTES = 4096


class StorageFault(Exception):
    """A worker could not write for a reason that is the machine's (its description)."""


def storage_fault(exc: BaseException | None) -> str | None:
    """What is wrong with the machine's storage, if that is why ``exc`` was raised."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, StorageFault):
            return str(exc)
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            where = f" ({exc.filename})" if exc.filename else ""
            return f"{exc.strerror or errno.errorcode.get(exc.errno or 0, 'error')}{where}"
        if isinstance(exc, sqlite3.OperationalError) and any(
            text in str(exc) for text in _SQLITE_STORAGE
        ):
            return f"the state database: {exc}"
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


@dataclass
class Status:
    """What ``daemon.health`` says: the daemon's pid and, while paused, why."""

    pid: int
    problem: str | None
    since: float | None
    at: float

    @classmethod
    def read(cls, home: Home) -> Status | None:
        try:
            raw = json.loads(home.health_file.read_text().strip() or "null")
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict):
            return None
        return cls(int(raw["pid"]), raw.get("problem"), raw.get("since"), float(raw["at"]))

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.since or self.at))
        return (
            f"the daemon paused new work at {since}: it cannot write its state ({self.problem})."
            " Free disk space or restore write access; it resumes by itself, and jobs then "
            "finish."
        )


class Health:
    """Whether the daemon can write its state, and what it does until it can again.

    Args:
        home: The daemon's home (``daemon.health`` is written there).
        store: The artifact store (probed by a small write).
        conn: The state database (probed by a small transaction).
    """

    def __init__(self, home: Home, store: ArtifactStore, conn: sqlite3.Connection) -> None:
        self.home = home
        self.store = store
        self.conn = conn
        self.problem: str | None = None
        self.since: float | None = None
        self.next_probe = 0.0
        self._allocate()
        self._write_status()

    @property
    def paused(self) -> bool:
        return self.problem is not None

    def absorb(self, exc: BaseException) -> bool:
        """If ``exc`` is a storage fault, pause (True); otherwise it is not ours (False)."""
        problem = storage_fault(exc)
        if problem is None:
            return False
        if self.problem is None:
            self.since = time.time()
            log.error(
                "cannot write state (%s): paused new work; retrying every %.0f s",
                problem,
                PROBE_EVERY_S,
            )
        self.problem = problem
        self.next_probe = time.time() + PROBE_EVERY_S
        self._write_status()
        return True

    def probe(self, now: float) -> bool:
        """While paused, try one write of each kind. True when they worked: resume now."""
        if self.problem is None or now < self.next_probe:
            return False
        try:
            self.store.put_bytes(".health/probe", str(now).encode())
            with transaction(self.conn):
                self.conn.execute(
                    "INSERT OR REPLACE INTO probe (id, at, room) VALUES (1, ?, zeroblob(65536))",
                    (now,),
                )
                self.conn.execute("UPDATE probe SET room = NULL")
        except Exception as exc:
            if not self.absorb(exc):
                raise
            return False
        log.info(
            "state writable again after %.0f s (was: %s); resuming",
            now - (self.since or now),
            self.problem,
        )
        self.problem = self.since = None
        self._write_status()
        return True

    # -- daemon.health ----------------------------------------------------------------------
    def _allocate(self) -> None:
        try:
            fd = os.open(self.home.health_file, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < _STATUS_BYTES:
                    os.posix_fallocate(fd, 0, _STATUS_BYTES)
            finally:
                os.close(fd)
        except OSError:
            log.warning("cannot allocate %s", self.home.health_file)

    def _write_status(self) -> None:
        status: dict[str, Any] = {
            "pid": os.getpid(),
            "problem": self.problem,
            "since": self.since,
            "at": time.time(),
        }
        data = json.dumps(status).encode()[: _STATUS_BYTES - 1].ljust(_STATUS_BYTES, b" ")
        try:
            fd = os.open(self.home.health_file, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, data, 0)  # in place: no new blocks on a full disk
            finally:
                os.close(fd)
        except OSError:
            log.warning("cannot write %s", self.home.health_file)


def paused_reason(home: Home, daemon_pid: int | None) -> str | None:
    """Why this home's running daemon has paused, or None (not paused, or not running)."""
    status = Status.read(home)
    if status is None or daemon_pid is None or status.pid != daemon_pid or not status.problem:
        return None
    return status.describe()
