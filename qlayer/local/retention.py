"""Retention of the local substrate: ``qlayer prune`` and the default retention.

A job is pruned with its whole tree: the top-level job and every child of its fan-outs
(``jobs.root_id``) go together, judged by the top-level job alone — children share
their parent's retention. A tree is pruned only when every job in it has ended: running
or queued work is never touched. Pruning removes the jobs' rows (``jobs``, ``events``,
``runs``, ``steps``, ``device_jobs``, ``provider_ledger``) in short transactions, one
batch of trees each, then their artifact folders, then program bundles no job refers to
any more, then ended coalesced provider batches (``jobs/_coalesced/``) none of whose
member requests is left. SQLite reuses the freed pages; the file itself does not shrink.

The default retention (``QLAYER_RETENTION_DAYS``, :data:`DEFAULT_RETENTION_DAYS`; ``0``
keeps everything) is applied by the daemon at start and every
:data:`RETENTION_EVERY_S` on a thread of its own, so a year of sweeps cannot fill the disk.

Local only: on AWS the same job is a DynamoDB item and S3 objects, whose retention is the
table's TTL and the bucket's lifecycle rules — the stack's configuration, not a
:class:`~qlayer.core.ports.JobStore` method every substrate must implement.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qlayer import keys
from qlayer.errors import ConfigError, JobNotFound
from qlayer.local import state
from qlayer.local.artifacts import forget_rows, rows_size
from qlayer.local.paths import Home
from qlayer.local.state import transaction

log = logging.getLogger("qlayer.retention")

DEFAULT_RETENTION_DAYS = 30.0
RETENTION_EVERY_S = 3600.0
#: Trees deleted per transaction.
TREES_PER_BATCH = 20
_FINAL = ("DONE", "ERROR", "CANCELLED")
_FINAL_SQL = "('DONE','ERROR','CANCELLED')"


def retention_days() -> float:
    """The default retention in days: ``QLAYER_RETENTION_DAYS`` or 30 (0: keep all).

    Raises:
        ConfigError: The variable is not a non-negative number.
    """
    value = os.environ.get("QLAYER_RETENTION_DAYS")
    if not value:
        return DEFAULT_RETENTION_DAYS
    try:
        days = float(value)
    except ValueError:
        days = -1.0
    if days < 0:
        raise ConfigError(f"QLAYER_RETENTION_DAYS={value!r}: use a number of days (0 keeps all)")
    return days


def parse_age(text: str) -> float:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` (or a plain number of days) → seconds.

    Raises:
        ValueError: Not an age.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = text.strip().lower()
    unit = units.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"invalid age {text!r}: use e.g. 90s, 30m, 12h, 7d or 2w") from None
    if value < 0:
        raise ValueError(f"invalid age {text!r}: it is negative")
    return value * (unit or 86400)


@dataclass
class PruneReport:
    """What a prune removed (or, dry, would remove).

    Attributes:
        roots: The top-level jobs pruned, each with its tree.
        jobs: Jobs pruned, children included.
        artifact_bytes: Disk the jobs' artifact folders used.
        programs: Program bundles no remaining job refers to (removed with them).
        batches: Coalesced provider batches removed (their ledger entry and
            ``jobs/_coalesced/`` folder) once no member request is left.
        envs: Program environments removed (no job that has not ended uses them, and none
            did within the age given; see :func:`qlayer.local.envs.prune_envs`).
        env_bytes: Disk those environments used.
        dry_run: Nothing was removed.
    """

    roots: list[str] = field(default_factory=list)
    jobs: int = 0
    artifact_bytes: int = 0
    programs: int = 0
    batches: int = 0
    envs: list[str] = field(default_factory=list)
    env_bytes: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "roots": self.roots,
            "jobs": self.jobs,
            "artifact_bytes": self.artifact_bytes,
            "programs": self.programs,
            "batches": self.batches,
            "envs": self.envs,
            "env_bytes": self.env_bytes,
            "dry_run": self.dry_run,
        }

    def summary(self) -> str:
        """One line for people."""
        verb = "would reclaim" if self.dry_run else "reclaimed"
        return (
            f"{verb} {self.jobs} jobs in {len(self.roots)} trees, "
            f"{self.artifact_bytes / 1e6:.1f} MB of artifacts, {self.programs} program bundles, "
            f"{self.batches} coalesced batches, "
            f"{len(self.envs)} environments ({self.env_bytes / 1e6:.1f} MB)"
        )


def _disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        try:
            total += os.lstat(dirpath).st_blocks * 512
        except OSError:
            pass
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def select_roots(
    conn: sqlite3.Connection,
    *,
    older_than_s: float | None = None,
    statuses: Iterable[str] | None = None,
    job_ids: Iterable[str] | None = None,
    now: float | None = None,
) -> list[str]:
    """The top-level jobs to prune: ended (their whole tree ended), and matching every
    filter given.

    Raises:
        JobNotFound: A named job does not exist.
        ValueError: A named job is a child (prune its top-level job), has not ended, or
            a status is not a final one.
    """
    where = ["parent_id IS NULL", f"status IN {_FINAL_SQL}"]
    params: list[object] = []
    if older_than_s is not None:
        where.append("COALESCE(finished_at, updated_at) < ?")
        params.append((now if now is not None else time.time()) - older_than_s)
    chosen = [s.upper() for s in statuses or ()]
    for status in chosen:
        if status not in _FINAL:
            raise ValueError(f"cannot prune {status} jobs: only {', '.join(_FINAL)} jobs end")
    if chosen:
        where.append(f"status IN ({','.join('?' * len(chosen))})")
        params += chosen
    named = list(job_ids or ())
    for job_id in named:
        row = conn.execute(
            "SELECT parent_id, root_id, status FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r} in this qlayer home; 'qlayer jobs' lists them")
        if row["parent_id"] is not None:
            raise ValueError(
                f"job {job_id!r} is a child of a fan-out; children go with their top-level "
                f"job: qlayer prune {row['root_id'] or row['parent_id']}"
            )
        if row["status"] not in _FINAL:
            raise ValueError(f"job {job_id!r} is {row['status']}: running jobs are never pruned")
    if named:
        where.append(f"job_id IN ({','.join('?' * len(named))})")
        params += named
    roots = [
        row[0]
        for row in conn.execute(
            f"SELECT job_id FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at", params
        ).fetchall()
    ]
    # a tree with any job still going is kept whole (children share the root's retention)
    return [
        root
        for root in roots
        if conn.execute(
            f"SELECT 1 FROM jobs WHERE root_id = ? AND status NOT IN {_FINAL_SQL} LIMIT 1",
            (root,),
        ).fetchone()
        is None
    ]


def prune(
    conn: sqlite3.Connection,
    artifacts: Path,
    *,
    older_than_s: float | None = None,
    statuses: Iterable[str] | None = None,
    job_ids: Iterable[str] | None = None,
    dry_run: bool = False,
    now: float | None = None,
    envs: Path | None = None,
) -> PruneReport:
    """Remove the ended job trees that match the filters (see :func:`select_roots`).

    Args:
        conn: A connection to the state database.
        artifacts: The home's artifact folder.
        older_than_s: Only trees whose top-level job ended this long ago.
        statuses: Only trees whose top-level job ended in one of these.
        job_ids: Only these top-level jobs (each with its tree).
        dry_run: Report what would go; remove nothing.
        envs: The home's environments folder: also remove environments. With
            ``older_than_s``: those no job that has not ended uses, unused that long.
            Without: those no job left refers to.
    """
    roots = select_roots(
        conn, older_than_s=older_than_s, statuses=statuses, job_ids=job_ids, now=now
    )
    report = PruneReport(dry_run=dry_run)
    pruned_uses: dict[str, int] = {}
    pruned_ids: set[str] = set()
    for start in range(0, len(roots), TREES_PER_BATCH):
        batch = roots[start : start + TREES_PER_BATCH]
        marks = ",".join("?" * len(batch))
        members = conn.execute(
            f"SELECT job_id, program_id FROM jobs WHERE root_id IN ({marks})"
            f" OR (root_id IS NULL AND job_id IN ({marks}))",
            (*batch, *batch),
        ).fetchall()
        ids = [row["job_id"] for row in members]
        pruned_ids.update(ids)
        for row in members:
            if row["program_id"]:
                pruned_uses[row["program_id"]] = pruned_uses.get(row["program_id"], 0) + 1
        report.roots += batch
        report.jobs += len(ids)
        folders = [artifacts / keys.job_prefix(job_id) for job_id in ids]
        report.artifact_bytes += sum(_disk_usage(f) for f in folders if f.is_dir())
        report.artifact_bytes += sum(rows_size(conn, keys.job_prefix(i)) for i in ids)
        if dry_run:
            continue
        with transaction(conn):
            for table in ("events", "runs", "steps", "device_jobs", "provider_ledger"):
                conn.executemany(f"DELETE FROM {table} WHERE job_id = ?", ((i,) for i in ids))
            conn.executemany("DELETE FROM jobs WHERE job_id = ?", ((i,) for i in ids))
            for job_id in ids:
                forget_rows(conn, keys.job_prefix(job_id))
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    for program_id, uses in sorted(pruned_uses.items()):
        left = conn.execute("SELECT COUNT(*) FROM jobs WHERE program_id = ?", (program_id,))
        if left.fetchone()[0] > (uses if dry_run else 0):
            continue  # another job still runs it
        folder = artifacts / keys.program_prefix(program_id)
        if folder.is_dir():
            report.artifact_bytes += _disk_usage(folder)
            report.programs += 1
            if not dry_run:
                shutil.rmtree(folder, ignore_errors=True)
    _prune_batches(conn, artifacts, report, pruned_ids)
    if envs is not None:
        from qlayer.local.envs import prune_envs

        # With an age: kept while a job that has not ended uses it, or one used it lately.
        # Without (named jobs, statuses): kept while any job left refers to it.
        only_live = f" AND status NOT IN {_FINAL_SQL}" if older_than_s is not None else ""
        live = [
            row[0]
            for row in conn.execute(
                f"SELECT DISTINCT env FROM jobs WHERE env IS NOT NULL{only_live}"
            )
        ]
        gone = prune_envs(envs, live, older_than_s=older_than_s, dry_run=dry_run, now=now)
        report.envs, report.env_bytes = gone.envs, gone.bytes
    return report


def _prune_batches(
    conn: sqlite3.Connection, artifacts: Path, report: PruneReport, pruned: set[str]
) -> None:
    """Remove ended coalesced batches none of whose member requests is left in the ledger
    (their members' jobs were pruned, ``pruned`` now or before): the batch's entry and its
    artifact folder."""
    from qlayer.dispatch import batches
    from qlayer.errors import ArtifactError
    from qlayer.store.local import FolderStore

    store = FolderStore(artifacts)  # manifests are the daemon's files, never rows
    rows = conn.execute(
        f"SELECT key FROM provider_ledger WHERE key LIKE ? AND state IN {_FINAL_SQL}",
        (batches.PREFIX + "%",),
    ).fetchall()
    for (key,) in rows:
        try:
            members = batches.member_keys(store, key)
        except (ArtifactError, ValueError, KeyError, TypeError, IndexError):
            members = []  # no readable manifest: the batch is judged by its entry alone
        left = [
            row[0]
            for m in members
            for row in conn.execute("SELECT job_id FROM provider_ledger WHERE key = ?", (m,))
        ]
        if any(job_id not in pruned for job_id in left):
            continue
        report.batches += 1
        folder = store.path(batches.manifest_key(key)).parent
        if folder.is_dir():
            report.artifact_bytes += _disk_usage(folder)
        if report.dry_run:
            continue
        with transaction(conn):
            conn.execute("DELETE FROM provider_ledger WHERE key = ?", (key,))
        shutil.rmtree(folder, ignore_errors=True)


def apply_default_retention(home: Home, *, now: float | None = None) -> PruneReport | None:
    """Prune every tree that ended more than :func:`retention_days` ago (None: keep all)."""
    days = retention_days()
    if days == 0:
        return None
    conn = state.connect(home.db)
    try:
        return prune(conn, home.artifacts, older_than_s=days * 86400, now=now, envs=home.envs)
    finally:
        conn.close()


class RetentionThread(threading.Thread):
    """The daemon's retention: :func:`apply_default_retention` at start, then hourly.

    Its own connection and short transactions: the daemon's loop never waits for it.
    """

    def __init__(self, home: Home, every_s: float = RETENTION_EVERY_S) -> None:
        super().__init__(name="qlayer-retention", daemon=True)
        self.home = home
        self.every_s = every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                report = apply_default_retention(self.home)
                if report is not None and report.jobs:
                    log.info("retention: %s", report.summary())
            except Exception:
                log.exception("retention failed; trying again in %.0f s", self.every_s)
            self.stopped.wait(self.every_s)

    def stop(self) -> None:
        self.stopped.set()
