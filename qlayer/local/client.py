"""The client of the local substrate: jobs in ``$QLAYER_HOME``, run by the local daemon."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from qlayer import keys
from qlayer.core.ports import Event, JobRecord
from qlayer.errors import DaemonError
from qlayer.job import BaseJob
from qlayer.keys import check_new_job_id, new_job_id
from qlayer.local import admission, control, state
from qlayer.local.artifacts import HomeStore
from qlayer.local.jobstore import SqliteJobStore
from qlayer.local.paths import Home
from qlayer.notify import check_targets
from qlayer.program import bundle, upload

DAEMON_DOWN = (
    "the qlayer daemon is not running, so this job is not advancing; start it with "
    "`qlayer up` and the job goes on from where it stopped"
)

if TYPE_CHECKING:
    from qlayer.local.retention import PruneReport
    from qlayer.planner import Resources
    from qlayer.workflow import Workflow


#: How long ``run`` waits for the daemon to check a program.
SUBMIT_TIMEOUT_S = 120.0


def _is_workflow(program: object) -> bool:
    """Whether ``program`` is a Workflow (not a path), without importing qlayer.workflow:
    no Workflow exists where that module was never imported."""
    module = sys.modules.get("qlayer.workflow")
    return module is not None and isinstance(program, module.Workflow)


class LocalClient:
    """Entry point to the local substrate (state under ``$QLAYER_HOME``).

    Args:
        home: State folder (default ``$QLAYER_HOME`` or ``~/.qlayer``).
        autostart: Start the daemon when a job needs it.
        workers: Worker processes for a daemon this client starts.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | Home | None = None,
        *,
        autostart: bool = True,
        workers: int | None = None,
    ) -> None:
        self.home = home if isinstance(home, Home) else Home.resolve(home)
        self.autostart = autostart
        self.workers = workers
        self._conn = state.connect(self.home.db)
        self.store = HomeStore(self.home.artifacts, self.home.db, self._conn)
        self.jobstore = SqliteJobStore(self._conn)
        self._machine: Resources | None = None

    def __repr__(self) -> str:
        return f"<LocalClient home={str(self.home.root)!r}>"

    # -- daemon ----------------------------------------------------------------------
    def machine(self) -> Resources:
        """This machine as the planner sees it (memory, cores, GPUs), measured once."""
        if self._machine is None:
            from qlayer.planner import Resources

            self._machine = Resources.for_this_machine()
        return self._machine

    def up(self) -> int:
        """Start the local daemon if it is not running; returns its pid."""
        return control.start(self.home, workers=self.workers)

    def down(self) -> bool:
        """Stop the local daemon. Running steps resume when it starts again."""
        return control.stop(self.home)

    def daemon_pid(self) -> int | None:
        return control.daemon_pid(self.home)

    def ensure_daemon(self) -> None:
        if self.autostart and control.daemon_pid(self.home) is None:
            self.up()

    # -- jobs ------------------------------------------------------------------------
    def run(
        self,
        program: str | os.PathLike[str] | Workflow,
        arguments: Mapping[str, Any] | None = None,
        *,
        backend: str | None = None,
        notify: Sequence[str] | str | None = None,
        max_cost_usd: float | None = None,
        cli_arguments: Sequence[str] | None = None,
        job_id: str | None = None,
    ) -> LocalJob:
        """Submit a program and return once it is accepted.

        A program given by its path is not imported here: the daemon checks it in a warm
        worker (:mod:`qlayer.local.admission`) and this call waits for its answer, so
        every check still happens before the job exists. Without a daemon and without
        ``autostart``, or given a Workflow, the checks run here.

        Args:
            program: A program file, a folder with ``main.py``, or a Workflow
                defined in an importable file.
            arguments: Job arguments, checked against the workflow's ``params``.
            backend: Default backend for Execute requests (overrides the workflow's).
            notify: More targets to announce the job's end to (webhook URLs,
                ``"desktop"``; see :mod:`qlayer.notify`), besides the workflow's.
            max_cost_usd: A budget for the job (the smaller of it and the workflow's
                applies): an execute that would pass it ends the job in ERROR.
            cli_arguments: ``key=value`` texts typed by the declared params (``--arg``).
            job_id: The job's id, made in advance by :func:`qlayer.keys.new_job_id`
                (default: a new one).

        Raises:
            ProgramError: The program is missing, does not parse, or defines no Workflow.
            ArgumentError: The arguments do not match the declared parameters.
            BackendError: The backend name is unknown.
            WorkflowError: A stage declares more memory than this machine has (vCPUs
                or GPUs beyond it are a warning in the job's status and timeline).
            DaemonError: The daemon did not answer within :data:`SUBMIT_TIMEOUT_S`.
        """
        targets = check_targets(notify)  # before anything is written
        options = {"notify": targets, "max_cost_usd": max_cost_usd}
        if _is_workflow(program) or (not self.autostart and control.daemon_pid(self.home) is None):
            return self._run_here(program, arguments, backend, cli_arguments, options, job_id)
        job_id = check_new_job_id(job_id) if job_id is not None else new_job_id()
        path = Path(cast("str | os.PathLike[str]", program))  # not a Workflow, as seen above
        program_id = upload(self.store, bundle(path))  # parses; imports nothing
        self.ensure_daemon()
        admission.submit(
            self._conn,
            job_id,
            program_id,
            arguments or {},
            cli_arguments=list(cli_arguments or []),
            backend=backend,
            options=options,
        )
        control.poke(self.home)
        self._await_admission(job_id)
        return LocalJob(self, job_id)

    def _await_admission(self, job_id: str) -> None:
        started = time.monotonic()
        pause, nudged = 0.0005, started
        while (row := admission.answer(self._conn, job_id)) is None:
            now = time.monotonic()
            if now - started > SUBMIT_TIMEOUT_S:
                admission.forget(self._conn, job_id)
                raise DaemonError(
                    f"the qlayer daemon did not check the program within {SUBMIT_TIMEOUT_S:.0f}"
                    f" s; nothing was submitted. Its log: {self.home.daemon_log}"
                )
            if now - nudged > 1.0:  # a daemon that died meanwhile is restarted
                self.ensure_daemon()
                control.poke(self.home)
                nudged = now
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        admission.forget(self._conn, job_id)
        if row["state"] != "accepted":
            raise admission.refusal(row)

    def _run_here(
        self,
        program: str | os.PathLike[str] | Workflow,
        arguments: Mapping[str, Any] | None,
        backend: str | None,
        cli_arguments: Sequence[str] | None,
        options: Mapping[str, Any],
        job_id: str | None = None,
    ) -> LocalJob:
        from qlayer.planner import check_local_stages
        from qlayer.submit import prepare_job
        from qlayer.workflow import Workflow

        if cli_arguments:
            from qlayer.program import load_path
            from qlayer.workflow import parse_cli_argument

            loaded = program if isinstance(program, Workflow) else load_path(Path(program))
            arguments = dict(arguments or {})
            arguments.update(parse_cli_argument(text, loaded) for text in cli_arguments)
        job = prepare_job(
            self.store,
            program,
            arguments,
            backend=backend,
            check=lambda workflow: check_local_stages(workflow, self.machine()),
            max_cost_usd=options.get("max_cost_usd"),
            job_id=job_id,
        )
        try:
            self.jobstore.create(job.record(options.get("notify") or ()))
        except BaseException:
            self.store.remove_tree(keys.job_prefix(job.job_id))  # a failed submit leaves nothing
            raise
        for warning in job.warnings:
            self.jobstore.update(
                job.job_id, event=Event(None, None, "warning", {"message": warning})
            )
        self.ensure_daemon()
        control.poke(self.home)
        return LocalJob(self, job.job_id)

    def job(self, job_id: str) -> LocalJob:
        """A handle on an existing job (raises JobNotFound if there is none)."""
        return LocalJob(self, job_id, self.jobstore.get(job_id))

    def jobs(self, *, limit: int = 50, status: str | None = None) -> list[LocalJob]:
        """Recent top-level jobs, newest first."""
        return [
            LocalJob(self, record.job_id, record)
            for record in self.jobstore.list_jobs(limit=limit, status=status)
        ]

    def prune(
        self,
        job_ids: Iterable[str] | None = None,
        *,
        older_than_s: float | None = None,
        statuses: Iterable[str] | None = None,
        dry_run: bool = False,
    ) -> PruneReport:
        """Remove ended job trees (a top-level job with all its children) and their files.

        With no filter, the default retention applies (``QLAYER_RETENTION_DAYS``, 30 days).
        Running jobs are never pruned. Program environments (``$QLAYER_HOME/envs``) that
        no job still running or queued uses, and unused for ``older_than_s``, go too.
        See :mod:`qlayer.local.retention`.

        Raises:
            JobNotFound: A named job does not exist.
            ValueError: A named job is a child or has not ended; a status is not final.
        """
        from qlayer.local.retention import prune, retention_days

        if job_ids is None and older_than_s is None and statuses is None:
            older_than_s = retention_days() * 86400
        return prune(
            self._conn,
            self.home.artifacts,
            older_than_s=older_than_s,
            statuses=statuses,
            job_ids=job_ids,
            dry_run=dry_run,
            envs=self.home.envs,
        )

    def backends(self) -> list[dict[str, Any]]:
        """Every backend the configuration knows; a QPU service's also says how many of
        this home's requests hold one of its in-flight slots now (``in_flight``)."""
        from qlayer.local.ledger import SqliteLedger
        from qlayer.providers.registry import known_backends

        ledger = SqliteLedger(self._conn)
        out = []
        for info in known_backends():
            row = info.to_json()
            if "limits" in row:  # a remote backend (RemoteBackendInfo)
                row["in_flight"] = ledger.in_flight(info.name)
            out.append(row)
        return out


class LocalJob(BaseJob):
    """A handle on one local job. Rebuild it from its id alone with ``client.job(job_id)``."""

    # A status read is one indexed SQLite query (~0.1 ms): poll often enough that a wait
    # adds little to a job's time, and never more than 25 ms.
    poll_max_s = 0.025

    def __init__(self, client: LocalClient, job_id: str, record: JobRecord | None = None) -> None:
        super().__init__(job_id)
        self.client = client
        self._record = record

    @property
    def store(self) -> HomeStore:
        return self.client.store

    @property
    def _jobstore(self) -> SqliteJobStore:
        return self.client.jobstore

    def _fetch(self) -> JobRecord:
        self._record = self.client.jobstore.get(self.job_id)
        return self._record

    def _progress_key(self, row: Any) -> tuple[Any, ...]:
        return (row.status, row.stage, row.seq, row.children_done)

    def _keep_alive(self) -> None:
        self.client.ensure_daemon()  # a dead daemon is restarted: a wait cannot hang

    def info(self) -> dict[str, Any]:
        """The job's status record as JSON (what ``qlayer status --json`` prints)."""
        record = self._fetch()
        devices = state.device_jobs_for(self.client._conn, self.job_id)
        info = self._status_json(record)
        info["provider_job_ids"] = [d["device_job_id"] for d in devices]
        warnings = [
            str((event.get("detail") or {}).get("message"))
            for event in self.client.jobstore.timeline(self.job_id)
            if event["event"] == "warning"
        ]
        if warnings:
            info["warnings"] = warnings
        if not record.status.is_final and control.daemon_pid(self.client.home) is None:
            info["daemon"] = "not running"
            info["note"] = DAEMON_DOWN
        return info

    def cancel(self) -> bool:
        """Cancel the job, its children and its device jobs. False if it had ended."""
        changed = self.client.jobstore.request_cancel(self.job_id)
        if changed:
            self.client.ensure_daemon()
            control.poke(self.client.home)
        return changed

    def timeline(self) -> list[dict[str, Any]]:
        """Stage events in order: submitted, started, finished, errors, device jobs."""
        return self.client.jobstore.timeline(self.job_id)

    def children(self) -> list[LocalJob]:
        """Children of the job's latest fan-out, in item order."""
        return [
            LocalJob(self.client, record.job_id, record)
            for record in self.client.jobstore.children(self.job_id)
        ]
