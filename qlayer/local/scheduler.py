"""What the local daemon runs next: fair between job trees, fan-outs fed in batches.

* :class:`Scheduler` picks the next pending stage step round-robin across *root* jobs
  (a top-level job and every child of its fan-outs form one tree, ``root_id``): a small
  job submitted while a 100,000-child sweep is queued waits for at most one step of each
  other tree, not for the whole sweep. Within a tree, steps run oldest first.
* :class:`FanOutFeeder` creates a fan-out's children in bounded batches, each batch its
  own short transaction (:func:`qlayer.core.transitions.start_children` over a range), so
  no fan-out holds the state database's write lock for long: other processes' writes
  (``qlayer run``, ``cancel``) and the daemon's own work go on between batches. The
  children created so far are a prefix of the items, so after a crash the feeder counts
  them and carries on from there.

Both are queries on indexes (``steps_live``, ``jobs_parent``): their cost per step does
not grow with the number of jobs in the home.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qlayer.core import transitions
from qlayer.core.ports import Ports
from qlayer.interpreter import Decision
from qlayer.local.state import transaction

log = logging.getLogger("qlayer.daemon")

#: Children created per transaction (``QLAYER_FANOUT_BATCH``).
FANOUT_BATCH = 200


def fanout_batch() -> int:
    """Children per batch: ``QLAYER_FANOUT_BATCH`` or :data:`FANOUT_BATCH`."""
    value = os.environ.get("QLAYER_FANOUT_BATCH")
    return max(1, int(value)) if value else FANOUT_BATCH


class Scheduler:
    """Round-robin over the trees that have a pending stage step.

    Args:
        conn: The daemon's connection to the state database.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.last_root: str | None = None

    def next_stage(self) -> sqlite3.Row | None:
        """The oldest pending stage step of the tree after the one served last (wrapping
        around), or None when no stage step is pending. Two index lookups."""
        root = self._root_after(self.last_root)
        if root is None and self.last_root is not None:
            root = self._root_after(None)
        if root is None:
            return None
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM steps WHERE state = 'pending' AND kind = 'stage' AND root_id IS ?"
            " ORDER BY step_id LIMIT 1",
            (root if root != "" else None,),
        ).fetchone()
        return row

    def served(self, step: sqlite3.Row) -> None:
        """Record that ``step`` was handed out: the next pick starts after its tree."""
        self.last_root = step["root_id"] if step["root_id"] is not None else ""

    def _root_after(self, after: str | None) -> str | None:
        # NULL root_id (a step queued by an older qlayer) sorts first: its own tree, "".
        if after is None:
            row = self.conn.execute(
                "SELECT root_id FROM steps WHERE state = 'pending' AND kind = 'stage'"
                " ORDER BY root_id LIMIT 1"
            ).fetchone()
        else:
            row = self.conn.execute(
                "SELECT root_id FROM steps WHERE state = 'pending' AND kind = 'stage'"
                " AND root_id > ? ORDER BY root_id LIMIT 1",
                (after,),
            ).fetchone()
        if row is None:
            return None
        return row["root_id"] if row["root_id"] is not None else ""


@dataclass
class _Feeding:
    """A fan-out whose children are not all created yet."""

    parent_id: str
    decision: Decision
    items: list[Any]
    next_index: int


class FanOutFeeder:
    """Creates fan-outs' children in batches of :func:`fanout_batch`.

    Args:
        conn: The daemon's connection.
        ports: The engine's ports (the transitions create the children).
        guarded: Runs one job's transition, failing that job alone if it raises.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        ports: Ports,
        guarded: Callable[[str, Callable[[], None]], None],
    ) -> None:
        self.conn = conn
        self.ports = ports
        self.guarded = guarded
        self.batch = fanout_batch()
        self.feeding: list[_Feeding] = []

    def start(self, parent_id: str, decision: Decision) -> None:
        """The fan-out transition of ``parent_id`` (in the caller's transaction): its size
        recorded and its first batch of children created; the rest follow in :meth:`feed`."""
        assert decision.items_key is not None
        items = self.ports.store.get_json(decision.items_key)["items"]
        stop = min(self.batch, len(items))
        transitions.start_children(self.ports, parent_id, decision, stop=stop, items=items)
        if stop < len(items):
            self.feeding.append(_Feeding(parent_id, decision, items, stop))

    def pending(self) -> bool:
        """Whether some fan-out still has children to create."""
        return bool(self.feeding)

    def feed(self) -> None:
        """One batch of each unfinished fan-out, each in its own transaction."""
        for feeding in list(self.feeding):
            self.guarded(feeding.parent_id, lambda f=feeding: self._feed_one(f))  # type: ignore[misc]
            if feeding in self.feeding and (
                feeding.next_index >= len(feeding.items) or self._ended(feeding.parent_id)
            ):
                self.feeding.remove(feeding)

    def _feed_one(self, feeding: _Feeding) -> None:
        stop = min(feeding.next_index + self.batch, len(feeding.items))
        with transaction(self.conn):
            if self._ended(feeding.parent_id):
                return  # cancelled or failed meanwhile: no more children
            transitions.start_children(
                self.ports,
                feeding.parent_id,
                feeding.decision,
                start=feeding.next_index,
                stop=stop,
                items=feeding.items,
            )
        feeding.next_index = stop

    def _ended(self, parent_id: str) -> bool:
        job = self.ports.jobs.find(parent_id)
        return job is None or job.status.is_final

    def recover(self) -> None:
        """After a restart: carry on feeding every fan-out whose children are not all
        created (they are created in item order, so those created are a prefix)."""
        for row in self.conn.execute(
            "SELECT steps.job_id, steps.detail, jobs.children_total FROM steps"
            " JOIN jobs ON jobs.job_id = steps.job_id WHERE steps.kind = 'fanin'"
            " AND steps.state = 'waiting' AND jobs.status NOT IN ('DONE','ERROR','CANCELLED')"
        ).fetchall():
            decision = Decision.from_json(json.loads(row["detail"]))
            prefix = transitions.child_job_id(row["job_id"], decision.seq, 0)[:-1]
            created = self.conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE parent_id = ? AND substr(job_id, 1, ?) = ?",
                (row["job_id"], len(prefix), prefix),
            ).fetchone()[0]
            if created < row["children_total"]:
                assert decision.items_key is not None
                items = self.ports.store.get_json(decision.items_key)["items"]
                log.info(
                    "fan-out of %s: %d of %d children created; carrying on",
                    row["job_id"],
                    created,
                    len(items),
                )
                self.feeding.append(_Feeding(row["job_id"], decision, items, int(created)))
