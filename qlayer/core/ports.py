"""The ports of the engine: what a substrate provides, each method's contract written down.

* :class:`JobStore` — jobs, their timeline and their fan-out children. SQLite
  (:class:`qlayer.local.jobstore.SqliteJobStore`) and DynamoDB
  (:class:`qlayer.aws.jobstore.DynamoJobStore`) implement it; ``tests/contract`` runs one
  suite on both.
* :class:`~qlayer.store.base.ArtifactStore` — bytes under keys (a folder, an S3 bucket).
* :class:`~qlayer.dispatch.ledger.Ledger` — one record per execute request sent to a
  provider, the basis of exactly-once submission.
* :class:`Orchestrator` — what runs a job's steps (the daemon's workers, a Step Functions
  execution): the engine asks it to stop a job's work and to cancel its provider jobs.

The transitions (:mod:`qlayer.core.transitions`) use only these.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qlayer.status import JobStatus
from qlayer.store.base import ArtifactStore

if TYPE_CHECKING:  # loaded where used: a client that submits a job needs neither
    from qlayer.dispatch.ledger import Ledger
    from qlayer.interpreter import Decision

__all__ = [
    "KEEP",
    "ArtifactStore",
    "Event",
    "JobRecord",
    "JobStore",
    "Ledger",
    "NewJob",
    "Orchestrator",
    "Ports",
]


class _Keep:
    """The value of an ``update`` argument that leaves the field as it is."""

    def __repr__(self) -> str:
        return "KEEP"


#: ``JobStore.update(stage=KEEP)``: leave the stage unchanged (``None`` clears it).
KEEP: Any = _Keep()


@dataclass
class JobRecord:
    """One job as every substrate stores it.

    Attributes:
        job_id: The job's id (a child's is ``<parent>_<seq>_<index>``).
        status: One of :class:`~qlayer.status.JobStatus`.
        program_id: The uploaded program bundle.
        workflow: The workflow's name.
        arguments: The bound arguments (plain JSON).
        backend: The job's default backend.
        stage: The stage (or ``execute``, or a fan-out summary) the job is at; None once ended.
        seq: The step the job is at.
        message: Why the job failed (ERROR), else None.
        error_type: The error's type name (ERROR), else None.
        parent_id: The fan-out parent of a child job, else None.
        item_index: The child's item in its parent's fan-out, else None.
        created_at: Epoch seconds.
        updated_at: Epoch seconds.
        finished_at: Epoch seconds once final, else None.
        cancel_requested: A cancel was asked for and not carried out yet.
        children_total: Children of the latest fan-out.
        children_done: Those of them that ended DONE.
        fanout_seq: The step of the latest fan-out.
        provider_job_ids: Provider job ids recorded for the job, oldest first.
        execution_arn: AWS: the job's Step Functions execution; None locally.
        env: The id of the job's environment (:attr:`qlayer.envs.Lock.hash`; its lock is
            the artifact ``envs/<env>/lock.json``), or None: the job runs on the base.
            A fan-out's children have their parent's.
    """

    job_id: str
    status: JobStatus
    program_id: str = ""
    workflow: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    backend: str = ""
    stage: str | None = None
    seq: int = 0
    message: str | None = None
    error_type: str | None = None
    parent_id: str | None = None
    item_index: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    cancel_requested: bool = False
    children_total: int = 0
    children_done: int = 0
    fanout_seq: int = 0
    provider_job_ids: list[str] = field(default_factory=list)
    execution_arn: str | None = None
    env: str | None = None


@dataclass(frozen=True)
class NewJob:
    """A job to record (the client's submission, a fan-out child, a spec that failed).

    Attributes:
        job_id: Its id.
        program_id: The uploaded program bundle ('' for a spec that never got one).
        workflow: The workflow's name ('' when not known yet).
        arguments: Bound arguments.
        backend: Default backend ('' when not known yet).
        first: The decision that runs the first stage (None: not prepared yet — the
            substrate prepares it first, or the job is recorded already ended).
        parent_id: The fan-out parent of a child.
        item_index: The child's item index.
        status: QUEUED, or ERROR for a job that fails before it starts.
        message: The reason, for a job recorded in ERROR.
        error_type: The reason's type name, for a job recorded in ERROR.
        notify: Where to announce the job's end (:mod:`qlayer.notify` targets). A store
            that keeps them queues one notification per target in the same write as
            the job's final status (the local store does; the DynamoDB store does not
            yet).
        env: The job's environment id (see :attr:`JobRecord.env`), or None.
        first_input: The first stage's input itself (``{"data": ..., "state": ...}``),
            kept with the job's first step instead of an artifact at
            ``first.input_key``. Set only where the orchestrator reads it from there
            (:attr:`Orchestrator.keeps_first_inputs`: the local daemon, for a fan-out
            child's small item); other stores never get one.
    """

    job_id: str
    program_id: str
    workflow: str
    arguments: Mapping[str, Any]
    backend: str
    first: Decision | None = None
    parent_id: str | None = None
    item_index: int | None = None
    status: JobStatus = JobStatus.QUEUED
    message: str | None = None
    error_type: str | None = None
    notify: tuple[str, ...] = ()
    env: str | None = None
    first_input: Mapping[str, Any] | None = None

    @property
    def stage(self) -> str | None:
        return self.first.stage if self.first is not None else None


@dataclass(frozen=True)
class Event:
    """One entry of a job's timeline.

    Attributes:
        seq: The step it is about (None: the job as a whole).
        stage: The stage, ``execute``, ``fan-in``… (None: the job as a whole).
        event: What happened: ``submitted``, ``started``, ``finished``, ``error``, ``done``,
            ``cancelled``, ``fanned out``, ``submitted`` (to a provider), ``device running``…
        detail: JSON-serialisable facts (a backend, a provider job id, an error).
    """

    seq: int | None
    stage: str | None
    event: str
    detail: Mapping[str, Any] | None = None

    def detail_json(self) -> str | None:
        return None if self.detail is None else json.dumps(dict(self.detail), default=str)


class JobStore(ABC):
    """Jobs, their timelines and their children.

    Every method is atomic on its own. :meth:`atomic` groups several into one write where
    the store can (SQLite); where it cannot (DynamoDB) it does nothing, so the transitions
    order their writes to be safe if a process dies between any two.

    The rule every implementation keeps: **a final status is never overwritten** — once a
    job is DONE, ERROR or CANCELLED, :meth:`update` changes nothing and answers False.
    """

    # -- writes -------------------------------------------------------------------------
    @abstractmethod
    def create(self, job: NewJob) -> bool:
        """Record a new job with a ``submitted`` event (``seq`` 0, its first stage).

        A substrate whose engine keeps its own step queue (local) queues the job's first
        step (``job.first``) in the same write.

        Returns:
            True if created; False, with nothing changed, if a job with that id exists.
        """

    @abstractmethod
    def update(
        self,
        job_id: str,
        *,
        status: JobStatus | None = None,
        stage: Any = KEEP,
        seq: int | None = None,
        message: str | None = None,
        error_type: str | None = None,
        provider_job_id: str | None = None,
        event: Event | None = None,
    ) -> bool:
        """Change a job that has not ended, with an optional timeline event, in one write.

        Args:
            status: The new status (a final one also sets ``finished_at``).
            stage: The new stage; ``None`` clears it; :data:`KEEP` leaves it.
            seq: The new step.
            message: The failure's reason.
            error_type: The failure's type name.
            provider_job_id: Added to the job's provider job ids (once).
            event: Appended to the timeline in the same write.

        Returns:
            True if written; False, with nothing written, if the job has ended or does
            not exist.
        """

    @abstractmethod
    def add_event(self, job_id: str, event: Event) -> None:
        """Append to the timeline whatever the status (an ended job still records late
        facts, such as its provider job's cancellation)."""

    @abstractmethod
    def set_fan_out(self, parent_id: str, seq: int, total: int) -> None:
        """Start counting the children of fan-out step ``seq``: ``children_total = total``,
        ``children_done = 0``, ``fanout_seq = seq``."""

    @abstractmethod
    def child_done(self, parent_id: str) -> tuple[int, int]:
        """Count one more child of the parent's fan-out as DONE.

        The caller counts each child once (it is the caller whose ``update`` moved the
        child to DONE). Returns ``(children_done, children_total)`` after the count.
        """

    @abstractmethod
    def record_run(self, job_id: str, stage: str, seq: int) -> None:
        """Record that ``stage`` ran as step ``seq``; idempotent for the same pair."""

    @abstractmethod
    def request_cancel(self, job_id: str) -> bool:
        """Flag the job, and every descendant that has not ended, for cancellation.

        Returns:
            False if the job had already ended (nothing flagged).

        Raises:
            JobNotFound: There is no such job.
        """

    # -- reads --------------------------------------------------------------------------
    @abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """The job.

        Raises:
            JobNotFound: There is no such job.
        """

    def find(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        from qlayer.errors import JobNotFound

        try:
            return self.get(job_id)
        except JobNotFound:
            return None

    @abstractmethod
    def timeline(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events in the order they were added: ``{at, seq, stage, event, detail}``."""

    @abstractmethod
    def children(self, parent_id: str) -> list[JobRecord]:
        """The children of the parent's latest fan-out that exist, in item order."""

    @abstractmethod
    def runs_before(self, job_id: str, seq: int) -> dict[str, int]:
        """How many runs of each stage were recorded at steps before ``seq``."""

    @abstractmethod
    def list_jobs(self, *, limit: int = 50, status: str | None = None) -> list[JobRecord]:
        """Top-level jobs (no children), newest first, optionally of one status."""

    # -- grouping -------------------------------------------------------------------------
    def atomic(self) -> AbstractContextManager[None]:
        """Group the writes inside into one transaction where the store can."""
        return _nothing()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class Orchestrator(ABC):
    """What runs a job's steps: the local daemon's workers, or a Step Functions execution.

    Attributes:
        loads_job_inputs: Whether this substrate starts a job from its ``input.json``
            (AWS's "Load job" does; the local daemon reads the job's row), so a fan-out's
            children need one each.
        keeps_first_inputs: Whether a fan-out child's first input, when small, is kept
            with its first step (:attr:`NewJob.first_input`, a row of the local state
            database) rather than written as an artifact per child.
    """

    loads_job_inputs: bool = True
    keeps_first_inputs: bool = False

    @abstractmethod
    def stop(self, job: JobRecord) -> None:
        """Stop the work running for ``job`` now (its worker, its execution); the job is
        already CANCELLED. Also cancels its provider jobs (see below)."""

    @abstractmethod
    def cancel_provider_jobs(self, job: JobRecord) -> None:
        """Ask the providers to cancel the job's open provider jobs (a QPU job, a simulated
        device job). Called when the job ends in ERROR or CANCELLED; harmless to repeat."""

    def ended(self, job: JobRecord) -> None:  # noqa: B027 - an optional hook
        """The job has just reached a final status (reports, notifications). Default: none."""


@dataclass
class Ports:
    """What the transitions work with."""

    jobs: JobStore
    store: ArtifactStore
    orchestrator: Orchestrator


def __getattr__(name: str) -> Any:
    """``Ledger``, imported on first use: a client that submits a job never needs it."""
    if name == "Ledger":
        from qlayer.dispatch.ledger import Ledger

        return Ledger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
