"""The client SDK: submit programs, follow jobs, fetch results, logs and files.

Example:
    >>> from qlayer import Client
    >>> client = Client.local()
    >>> job = client.run("examples/qaoa_maxcut.py", {"nodes": 8})
    >>> job.status()
    <JobStatus.RUNNING: 'RUNNING'>
    >>> job.result(wait=True)["cut"]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qlayer.job import BaseJob
from qlayer.local import control, state
from qlayer.local.paths import Home
from qlayer.local.state import transaction
from qlayer.store.local import FolderStore
from qlayer.submit import prepare_job
from qlayer.workflow import Workflow

if TYPE_CHECKING:
    from qlayer.aws.client import AwsClient


class Client:
    """Entry point to one qlayer substrate.

    Use :meth:`local` for the embedded default (state under ``$QLAYER_HOME``).
    """

    def __init__(self, home: Home, *, autostart: bool = True, workers: int | None = None) -> None:
        self.home = home
        self.autostart = autostart
        self.workers = workers
        self.store = FolderStore(home.artifacts)
        self._conn = state.connect(home.db)

    @classmethod
    def local(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        autostart: bool = True,
        workers: int | None = None,
    ) -> Client:
        """A client of the local substrate.

        Args:
            home: State folder (default ``$QLAYER_HOME`` or ``~/.qlayer``).
            autostart: Start the daemon when a job needs it.
            workers: Worker processes for a daemon this client starts.
        """
        return cls(Home.resolve(home), autostart=autostart, workers=workers)

    @classmethod
    def aws(
        cls, stack: str = "Qlayer", region: str | None = None, session: Any = None
    ) -> AwsClient:
        """A client of a deployed AWS stack (same methods; needs the ``aws`` extra).

        Args:
            stack: The CloudFormation stack name given to ``cdk deploy``.
            region: AWS region (default: the session's).
            session: A ``boto3.Session`` (default: a new one). Nothing is called until used.
        """
        from qlayer.aws.client import AwsClient

        return AwsClient(stack=stack, region=region, session=session)

    # -- daemon ----------------------------------------------------------------------
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
    ) -> Job:
        """Submit a program and return at once.

        Args:
            program: A program file, a folder with ``main.py``, or a Workflow
                defined in an importable file.
            arguments: Job arguments, checked against the workflow's ``params``.
            backend: Default backend for Execute requests (overrides the workflow's).

        Raises:
            ProgramError: The program is missing, does not parse, or defines no Workflow.
            ArgumentError: The arguments do not match the declared parameters.
            BackendError: The backend name is unknown.
        """
        job = prepare_job(self.store, program, arguments, backend=backend)
        with transaction(self._conn):
            state.insert_job(
                self._conn,
                job_id=job.job_id,
                program_id=job.program_id,
                workflow=job.workflow.name,
                arguments=job.arguments,
                backend=job.backend,
                first_stage=job.first_stage,
                input_key=job.first.input_key or "",
            )
            self._conn.execute(
                "UPDATE steps SET detail = ? WHERE job_id = ? AND seq = 0",
                (
                    json.dumps({"input_key": job.first.input_key, "compute": job.first.compute}),
                    job.job_id,
                ),
            )
        self.ensure_daemon()
        control.poke(self.home)
        return Job(self, job.job_id)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (raises JobNotFound if there is none)."""
        state.get_job(self._conn, job_id)
        return Job(self, job_id)

    def jobs(self, *, limit: int = 50, status: str | None = None) -> list[Job]:
        """Recent top-level jobs, newest first."""
        return [
            Job(self, row.job_id, row)
            for row in state.list_jobs(self._conn, limit=limit, status=status)
        ]

    def backends(self) -> list[dict[str, Any]]:
        """Every backend the configuration knows."""
        from qlayer.providers.registry import known_backends

        return [info.to_json() for info in known_backends()]


class Job(BaseJob):
    """A handle on one local job. Rebuild it from its id alone with ``client.job(job_id)``."""

    # A status read is one indexed SQLite query (~0.1 ms): poll often enough that a wait
    # adds little to a job's time, and never more than 25 ms.
    poll_max_s = 0.025

    def __init__(self, client: Client, job_id: str, row: state.JobRow | None = None) -> None:
        super().__init__(job_id)
        self.client = client
        self._row = row

    @property
    def store(self) -> FolderStore:
        return self.client.store

    def _fetch(self) -> state.JobRow:
        self._row = state.get_job(self.client._conn, self.job_id)
        return self._row

    def _progress_key(self, row: Any) -> tuple[Any, ...]:
        return (row.status, row.stage, row.seq, row.children_done)

    def _keep_alive(self) -> None:
        self.client.ensure_daemon()  # a dead daemon is restarted: a wait cannot hang

    def info(self) -> dict[str, Any]:
        """The job's status record as JSON (what ``qlayer status --json`` prints)."""
        row = self._fetch()
        devices = state.device_jobs_for(self.client._conn, self.job_id)
        info = self._status_json(row)
        info["provider_job_ids"] = [d["device_job_id"] for d in devices]
        if row.children_total:
            info["children"] = {"total": row.children_total, "done": row.children_done}
        if row.parent_id:
            info["parent_id"] = row.parent_id
            info["item_index"] = row.item_index
        return info

    def cancel(self) -> bool:
        """Cancel the job, its children and its device jobs. False if it had ended."""
        changed = state.request_cancel(self.client._conn, self.job_id)
        if changed:
            self.client.ensure_daemon()
            control.poke(self.client.home)
        return changed

    def timeline(self) -> list[dict[str, Any]]:
        """Stage events in order: submitted, started, finished, errors, device jobs."""
        return state.timeline(self.client._conn, self.job_id)

    def children(self) -> list[Job]:
        """Fan-out children, in item order."""
        rows = self.client._conn.execute(
            "SELECT job_id FROM jobs WHERE parent_id = ? ORDER BY item_index", (self.job_id,)
        ).fetchall()
        return [Job(self.client, row["job_id"]) for row in rows]
