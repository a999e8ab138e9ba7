"""Fast submission: the daemon checks a program where qiskit is already imported.

Importing a program that imports qiskit costs the submitting process 0.5–2 s. Instead
the client checks what needs no import (the file exists, is Python, parses:
:func:`qlayer.program.bundle`), uploads the bundle, records a *submission* and waits
for the daemon's answer. The daemon hands it to its admission worker — a warm worker
forked after qiskit was imported, kept for submissions so that stages never delay them —
which loads the program, parses and binds the arguments, checks the backend and writes
the job's inputs. The daemon then records the job and accepts the submission in one
transaction; or refuses it with the error the client raises (``ProgramError``,
``ArgumentError``, ``BackendError``, ``WorkflowError``: the same type and message as a
check in the client would give). Nothing runs before it is accepted.

``submissions`` rows live only while a client waits: the client removes its row once it
has read the answer. A daemon restarted mid-way checks pending submissions again (the
checks are idempotent: same job id, same inputs).

Argument encoding is :func:`encode_arguments` / :func:`decode_arguments`, apart from
program loading: the wire format may change without touching the rest.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qlayer import codec, errors, keys
from qlayer.core.ports import Event, NewJob
from qlayer.local.jobstore import SqliteJobStore
from qlayer.local.paths import Home
from qlayer.local.state import transaction
from qlayer.store.base import ArtifactStore

if TYPE_CHECKING:  # the daemon's half only: clients do not import the worker machinery
    from qlayer.interpreter import Decision
    from qlayer.local.pool import WorkerHandle
    from qlayer.local.zygote import Zygote
    from qlayer.planner import Resources
    from qlayer.program import ProgramCache

log = logging.getLogger("qlayer.daemon")

#: Errors a refusal may carry (anything else arrives as ProgramError).
REFUSALS: dict[str, type[errors.QlayerError]] = {
    cls.__name__: cls
    for cls in (
        errors.ProgramError,
        errors.ArgumentError,
        errors.BackendError,
        errors.WorkflowError,
        errors.CodecError,
        errors.ConfigError,
        errors.RequirementError,
    )
}


def encode_arguments(arguments: Any) -> str:
    """The client's arguments as they travel to the admission worker."""
    return json.dumps(codec.encode(dict(arguments or {}), where="job arguments"))


def decode_arguments(raw: str) -> dict[str, Any]:
    """The inverse of :func:`encode_arguments`."""
    decoded = codec.decode(json.loads(raw), where="job arguments")
    return dict(decoded)


def submit(
    conn: sqlite3.Connection,
    job_id: str,
    program_id: str,
    arguments: Any,
    *,
    cli_arguments: list[str] | None = None,
    backend: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Record a submission for the daemon to check (the client's half).

    Args:
        options: The run's own settings: ``notify`` (checked targets) and
            ``max_cost_usd``.
    """
    with transaction(conn):
        conn.execute(
            "INSERT INTO submissions (job_id, program_id, arguments, cli_arguments, backend,"
            " options, state, created_at) VALUES (?,?,?,?,?,?,'pending',?)",
            (
                job_id,
                program_id,
                encode_arguments(arguments),
                json.dumps(cli_arguments or []),
                backend,
                json.dumps(dict(options or {})),
                time.time(),
            ),
        )


def answer(conn: sqlite3.Connection, job_id: str) -> sqlite3.Row | None:
    """The daemon's answer to a submission: None while pending (the client's half)."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT state, error_type, message FROM submissions"
        " WHERE job_id = ? AND state != 'pending'",
        (job_id,),
    ).fetchone()
    return row


def forget(conn: sqlite3.Connection, job_id: str) -> None:
    """Remove a submission once its answer was read."""
    with transaction(conn):
        conn.execute("DELETE FROM submissions WHERE job_id = ?", (job_id,))


def refusal(row: sqlite3.Row) -> errors.QlayerError:
    """The error a refused submission raises in the client."""
    cls = REFUSALS.get(row["error_type"] or "", errors.ProgramError)
    return cls(row["message"] or "the program was refused")


def check(message: dict[str, Any], store: ArtifactStore, programs: ProgramCache) -> dict[str, Any]:
    """The admission worker's half: load, parse, bind, write the inputs (never raises)."""
    from qlayer.envs import env_id, lock_for, stored_program_requirements
    from qlayer.planner import check_local_stages
    from qlayer.submit import write_inputs
    from qlayer.workflow import parse_cli_argument

    options = message.get("options") or {}
    try:
        workflow = programs.workflow(message["program_id"])
        arguments = decode_arguments(message["arguments"])
        for text in message.get("cli_arguments") or []:
            key, value = parse_cli_argument(text, workflow)
            arguments[key] = value
        warnings = check_local_stages(workflow, _machine())  # before anything is written
        requirements = stored_program_requirements(store, message["program_id"], workflow)
        lock = lock_for(store, requirements)  # resolved once per requirements and base
        prepared = write_inputs(
            store,
            message["job_id"],
            message["program_id"],
            workflow,
            arguments,
            backend=message.get("backend"),
            max_cost_usd=options.get("max_cost_usd"),
            env=env_id(lock),
        )
    except BaseException as exc:
        _forget_inputs(store, message["job_id"])  # a refused submission leaves nothing
        if isinstance(exc, errors.QlayerError):
            return {"ok": False, "error_type": type(exc).__name__, "message": str(exc)}
        if not isinstance(exc, Exception):
            raise
        return {  # the program raised while being imported
            "ok": False,
            "error_type": "ProgramError",
            "message": f"cannot load the program: {type(exc).__name__}: {exc}",
        }
    return {
        "ok": True,
        "workflow": prepared.workflow.name,
        "arguments": prepared.arguments,
        "backend": prepared.backend,
        "first": prepared.first.to_json(),
        "notify": list(dict.fromkeys([*workflow.notify, *(options.get("notify") or [])])),
        "warnings": warnings,
        "env": prepared.env,
    }


_MACHINE: list[Resources] = []


def _decision(raw: dict[str, Any]) -> Decision:
    from qlayer.interpreter import Decision

    return Decision.from_json(raw)


def _machine() -> Resources:
    """This machine as the planner sees it, measured once per worker."""
    if not _MACHINE:
        from qlayer.planner import Resources

        _MACHINE.append(Resources.for_this_machine())
    return _MACHINE[0]


def _forget_inputs(store: ArtifactStore, job_id: str) -> None:
    remove = getattr(store, "remove_tree", None)
    if remove is not None:
        remove(keys.job_prefix(job_id))


class Admission:
    """The daemon's half: one warm worker that checks submissions, oldest first.

    Args:
        conn: The daemon's connection.
        jobs: The job store (an accepted submission is recorded there).
        home: The home (the admission worker's folders).
        local_memory_mb: As for every worker.
        lock_fd: The daemon's lock (the worker drops it).
        zygote: Where the worker is forked (as for every worker).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        jobs: SqliteJobStore,
        home: Home,
        local_memory_mb: int,
        lock_fd: int | None,
        zygote: Zygote | None = None,
    ) -> None:
        from qlayer.local.pool import WorkerPool

        self.conn = conn
        self.jobs = jobs
        self.pool = WorkerPool(home, 1, local_memory_mb, lock_fd, zygote)

    def start(self) -> None:
        self.pool.start()

    def shutdown(self) -> None:
        self.pool.shutdown()

    def waitables(self) -> list[Any]:
        return [w.conn for w in self.pool] + [w.process.sentinel for w in self.pool]

    def pump(self) -> None:
        """Hand the oldest pending submission to the admission worker if it is free."""
        from qlayer.local.pool import Assignment

        for worker in self.pool.idle():
            row = self.conn.execute(
                "SELECT * FROM submissions WHERE state = 'pending' ORDER BY created_at LIMIT 1"
            ).fetchone()
            if row is None:
                return
            worker.send(
                {
                    "op": "validate",
                    "job_id": row["job_id"],
                    "program_id": row["program_id"],
                    "arguments": row["arguments"],
                    "cli_arguments": json.loads(row["cli_arguments"] or "[]"),
                    "backend": row["backend"],
                    "options": json.loads(row["options"] or "{}"),
                },
                Assignment("validate", row["job_id"], 0, None),
            )

    def collect(self, ready: list[Any]) -> None:
        """Read the admission worker's answers; replace it if it died."""
        for worker in list(self.pool):
            if worker.conn in ready:
                try:
                    reply = json.loads(worker.conn.recv_bytes())
                except (EOFError, OSError):
                    self._died(worker)
                    continue
                busy, worker.busy = worker.busy, None
                if busy is not None:
                    self._answer(busy.job_id, reply)
            elif not worker.process.is_alive():
                self._died(worker)

    def _died(self, worker: WorkerHandle) -> None:
        busy, worker.busy = worker.busy, None
        code = worker.process.exitcode
        self.pool.replace(worker)
        if busy is not None:
            message = f"loading the program ended its process (exit code {code})"
            self._answer(
                busy.job_id, {"ok": False, "error_type": "ProgramError", "message": message}
            )

    def _answer(self, job_id: str, reply: dict[str, Any]) -> None:
        row = self.conn.execute(
            "SELECT * FROM submissions WHERE job_id = ? AND state = 'pending'", (job_id,)
        ).fetchone()
        if row is None:
            return  # answered already, or its client gave up
        with transaction(self.conn):
            if reply.get("ok") and "first" in reply:
                self.jobs.create(
                    NewJob(
                        job_id,
                        program_id=row["program_id"],
                        workflow=reply["workflow"],
                        arguments=reply["arguments"],
                        backend=reply["backend"],
                        first=_decision(reply["first"]),
                        notify=tuple(reply.get("notify") or ()),
                        env=reply.get("env"),
                    )
                )
                for warning in reply.get("warnings") or []:
                    self.jobs.update(
                        job_id, event=Event(None, None, "warning", {"message": warning})
                    )
                self.conn.execute(
                    "UPDATE submissions SET state = 'accepted' WHERE job_id = ?", (job_id,)
                )
            else:
                self.conn.execute(
                    "UPDATE submissions SET state = 'refused', error_type = ?, message = ?"
                    " WHERE job_id = ?",
                    (
                        reply.get("error_type") or "ProgramError",
                        reply.get("message") or "",
                        job_id,
                    ),
                )
