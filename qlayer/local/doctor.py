"""``qlayer doctor``: is this home's state usable, and rebuilding a corrupt database.

The state database (``qlayer.db``) is the daemon's queue and every job's record; the
artifacts folder holds the payloads. A corrupt database is backed up (never deleted) and
rebuilt from every row that can still be read; jobs whose rows were lost keep their
artifacts on disk.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from pathlib import Path

from qlayer.errors import StateError
from qlayer.local.paths import Home

#: The tables copied into a rebuilt database, parents before children.
TABLES = ("jobs", "steps", "events", "runs", "device_jobs", "provider_ledger")


def describe(exc: sqlite3.Error, db: Path) -> StateError:
    """What to tell a user of an SQLite error on the state database."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return StateError(f"the state database {db} is busy ({text}); try again")
    if isinstance(exc, sqlite3.OperationalError) and (
        "full" in text or "readonly" in text or "I/O" in text
    ):
        return StateError(
            f"the state database {db} cannot be written ({text}): free disk space or "
            "restore write access to its folder; the daemon resumes by itself"
        )
    return StateError(
        f"the state database {db} is corrupt ({text}). Run `qlayer doctor --repair`: it "
        "backs the file up and rebuilds it from what can still be read (job artifacts "
        "are kept)."
    )


def check(home: Home) -> list[str]:
    """The problems of ``home``'s state; empty when it is healthy."""
    problems = []
    if home.db.exists():
        try:
            conn = sqlite3.connect(f"file:{home.db}?mode=ro", uri=True, timeout=30)
            try:
                rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            finally:
                conn.close()
            if rows != ["ok"]:
                problems.append(
                    f"the state database {home.db} is corrupt: {'; '.join(rows[:5])}. "
                    "Run `qlayer doctor --repair`."
                )
        except sqlite3.DatabaseError as exc:
            problems.append(str(describe(exc, home.db)))
    probe = home.artifacts / ".doctor-probe"
    try:
        home.artifacts.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        problems.append(
            f"the artifacts folder {home.artifacts} cannot be written ({exc.strerror or exc}):"
            " jobs cannot run until it can"
        )
    return problems


def repair(home: Home) -> tuple[Path, dict[str, int]]:
    """Back up the state database and rebuild it from the rows that can be read.

    The daemon must be stopped (the caller stops it). Returns the backup's path and how
    many rows of each table were kept.
    """
    from qlayer.local import state

    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = home.db.with_name(f"{home.db.name}.corrupt-{stamp}")
    shutil.copy2(home.db, backup)
    for suffix in ("-wal", "-shm"):
        side = home.db.with_name(home.db.name + suffix)
        if side.exists():
            shutil.copy2(side, backup.with_name(backup.name + suffix))
    rows = _readable_rows(home.db)
    fresh = home.db.with_name(home.db.name + ".rebuilt")
    for leftover in (
        fresh,
        fresh.with_name(fresh.name + "-wal"),
        fresh.with_name(fresh.name + "-shm"),
    ):
        leftover.unlink(missing_ok=True)
    conn = state.connect(fresh)
    kept: dict[str, int] = {}
    try:
        columns = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in TABLES}
        with state.transaction(conn):
            for table, found in rows.items():
                kept[table] = 0
                for row in found:
                    row = {k: v for k, v in row.items() if k in columns[table]}
                    names = ", ".join(row)
                    marks = ", ".join("?" for _ in row)
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(
                            f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})",
                            tuple(row.values()),
                        )
                        kept[table] += 1
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        home.db.with_name(home.db.name + suffix).unlink(missing_ok=True)
    fresh.replace(home.db)
    for suffix in ("-wal", "-shm"):
        fresh.with_name(fresh.name + suffix).unlink(missing_ok=True)
    return backup, kept


def _readable_rows(db: Path) -> dict[str, list[dict[str, object]]]:
    """Every row of :data:`TABLES` that SQLite can still read (none of an unreadable file)."""
    found: dict[str, list[dict[str, object]]] = {table: [] for table in TABLES}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return found
    conn.row_factory = sqlite3.Row
    try:
        for table in TABLES:
            try:
                for row in conn.execute(f"SELECT * FROM {table}"):
                    found[table].append(dict(row))
            except sqlite3.Error:
                continue  # the rows read before the damage are kept
    finally:
        conn.close()
    return found
