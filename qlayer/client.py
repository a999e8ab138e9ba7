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
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlayer import keys
from qlayer.errors import JobCancelled, JobFailed, ProgramError
from qlayer.local import control, state
from qlayer.local.paths import Home
from qlayer.local.state import transaction
from qlayer.program import bundle, load_path, upload
from qlayer.status import JobStatus
from qlayer.steps import first_input
from qlayer.store.local import FolderStore
from qlayer.workflow import Workflow

if TYPE_CHECKING:
    from qlayer.aws.client import AwsClient

ProgressCallback = Callable[[dict[str, Any]], None]


def new_job_id() -> str:
    """A sortable, readable job id: ``20261123-203112-7f3a9c``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


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
        from qlayer.providers.registry import resolve

        if isinstance(program, Workflow):
            if not program.source_path:
                raise ProgramError(
                    "this Workflow was not defined in a file; pass the program's path"
                )
            path = Path(program.source_path)
        else:
            path = Path(program)
        program_bundle = bundle(path)  # missing files and syntax errors surface here, before import
        workflow = program if isinstance(program, Workflow) else load_path(path)
        bound = workflow.bind_arguments(dict(arguments or {}))
        chosen_backend = backend or workflow.backend
        resolve(chosen_backend)
        program_id = upload(self.store, program_bundle)
        job_id = new_job_id()
        first = workflow.first_stage
        self.store.put_json(
            keys.job_input(job_id),
            {
                "program_id": program_id,
                "workflow": workflow.name,
                "arguments": bound,
                "backend": chosen_backend,
            },
        )
        input_key = first_input(self.store, job_id, first, bound)
        with transaction(self._conn):
            state.insert_job(
                self._conn,
                job_id=job_id,
                program_id=program_id,
                workflow=workflow.name,
                arguments=bound,
                backend=chosen_backend,
                first_stage=first,
                input_key=input_key,
            )
            self._conn.execute(
                "UPDATE steps SET detail = ? WHERE job_id = ? AND seq = 0",
                (
                    json.dumps(
                        {
                            "input_key": input_key,
                            "compute": workflow.stages[first].compute.to_json(),
                        }
                    ),
                    job_id,
                ),
            )
        self.ensure_daemon()
        control.poke(self.home)
        return Job(self, job_id)

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


class Job:
    """A handle on one job. Rebuild it from its id alone with ``client.job(job_id)``."""

    def __init__(self, client: Client, job_id: str, row: state.JobRow | None = None) -> None:
        self.client = client
        self.job_id = job_id
        self._row = row

    def __repr__(self) -> str:
        return f"<Job {self.job_id}>"

    def _fetch(self) -> state.JobRow:
        self._row = state.get_job(self.client._conn, self.job_id)
        return self._row

    def status(self) -> JobStatus:
        """The job's status, one of :class:`JobStatus`."""
        return self._fetch().status

    def info(self) -> dict[str, Any]:
        """The job's status record as JSON (what ``qlayer status --json`` prints)."""
        row = self._fetch()
        devices = state.device_jobs_for(self.client._conn, self.job_id)
        info: dict[str, Any] = {
            "job_id": row.job_id,
            "status": row.status.value,
            "stage": row.stage,
            "seq": row.seq,
            "workflow": row.workflow,
            "backend": row.backend,
            "arguments": row.arguments,
            "message": row.message,
            "error_type": row.error_type,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "finished_at": row.finished_at,
            "provider_job_ids": [d["device_job_id"] for d in devices],
        }
        if row.children_total:
            info["children"] = {"total": row.children_total, "done": row.children_done}
        if row.parent_id:
            info["parent_id"] = row.parent_id
            info["item_index"] = row.item_index
        return info

    def result(
        self,
        wait: bool = True,
        timeout: float | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """The job's final result.

        Args:
            wait: Block until the job ends (else raise if it has not).
            timeout: Give up after this many seconds (TimeoutError).
            progress: Called with :meth:`info` whenever the stage changes.

        Raises:
            JobFailed: The job ended in ERROR; the message is the recorded reason.
            JobCancelled: The job was cancelled.
            TimeoutError: ``timeout`` passed first.
        """
        row = self.wait(timeout=timeout, progress=progress) if wait else self._fetch()
        if row.status == JobStatus.DONE:
            return self.client.store.get_value(keys.job_result(self.job_id))
        if row.status == JobStatus.ERROR:
            reason = f"{row.error_type}: {row.message}" if row.error_type else str(row.message)
            raise JobFailed(self.job_id, reason)
        if row.status == JobStatus.CANCELLED:
            raise JobCancelled(f"job {self.job_id} was cancelled")
        raise RuntimeError(
            f"job {self.job_id} has not finished (status {row.status.value}); use wait=True"
        )

    def wait(
        self, timeout: float | None = None, *, progress: ProgressCallback | None = None
    ) -> state.JobRow:
        """Block until the job ends; restarts a dead daemon so the wait cannot hang."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        last_seen: tuple[Any, ...] | None = None
        last_check = time.monotonic()
        while True:
            row = self._fetch()
            seen = (row.status, row.stage, row.seq, row.children_done)
            if progress is not None and seen != last_seen:
                progress(self.info())
            last_seen = seen
            if row.status.is_final:
                return row
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"job {self.job_id} still {row.status.value} after {timeout} s")
            if now - last_check > 2.0:
                self.client.ensure_daemon()
                last_check = now
            time.sleep(delay if deadline is None else min(delay, max(0.0, deadline - now)))
            delay = min(delay * 1.5, 0.2)

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

    def logs(self, *, children: bool = False) -> str:
        """Everything the stages logged (tracebacks included), in step order.

        Args:
            children: Also include the logs of fan-out children, after the job's own.
        """
        parts = []
        for key in self.client.store.list(keys.logs_prefix(self.job_id)):
            name = key.rsplit("/", 1)[-1].removesuffix(".log")
            seq, _, stage = name.partition("-")
            parts.append(f"── step {int(seq)}: {stage} ──\n{self.client.store.get_text(key)}")
        text = "\n".join(parts)
        if children:
            for child in self.children():
                text += f"\n══ child {child.job_id} ══\n" + child.logs(children=True)
        return text

    def files(self) -> list[str]:
        """Names of the files and plots the stages saved."""
        prefix = keys.files_prefix(self.job_id)
        return [key[len(prefix) :] for key in self.client.store.list(prefix)]

    def download(self, name: str, destination: str | os.PathLike[str] | None = None) -> Path:
        """Copy a saved file to ``destination`` (default: the current folder)."""
        data = self.client.store.get_bytes(keys.file_key(self.job_id, name))
        target = Path(destination) if destination else Path(Path(name).name)
        if target.is_dir():
            target = target / Path(name).name
        target.write_bytes(data)
        return target

    def usage(self) -> dict[str, Any]:
        """Shots, QPU seconds, simulator seconds and stage compute seconds, children included."""
        from qlayer import usage

        prefix = keys.job_prefix(self.job_id) + "stages/"
        requests: dict[int, dict[str, Any]] = {}
        for key in self.client.store.list(prefix):
            if key.endswith("-execute/request.json"):
                seq = int(key[len(prefix) :].split("-", 1)[0])
                requests[seq] = self.client.store.get_json(key)
        total = usage.from_timeline(self.timeline(), requests)
        for child in self.children():
            usage.add(total, child.usage())
        return total

    def children(self) -> list[Job]:
        rows = self.client._conn.execute(
            "SELECT job_id FROM jobs WHERE parent_id = ? ORDER BY item_index", (self.job_id,)
        ).fetchall()
        return [Job(self.client, row["job_id"]) for row in rows]
