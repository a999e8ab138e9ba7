"""The closed set of job statuses, shared by every substrate and the CLI."""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    """Status of a job. The same strings appear in JSON output, SQLite and DynamoDB.

    ``BUILDING``: the job's environment (:mod:`qlayer.envs`) is being built, the first
    time its lock is used; no stage has run yet. It then goes on as any job does.
    """

    QUEUED = "QUEUED"
    BUILDING = "BUILDING"
    RUNNING = "RUNNING"
    WAITING_FOR_QPU = "WAITING_FOR_QPU"
    DONE = "DONE"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        """True once the job can no longer change."""
        return self in FINAL_STATUSES

    def __str__(self) -> str:
        return self.value


FINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED})
