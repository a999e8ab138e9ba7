"""The daemon's warm workers: forked processes that run stages and simulated-device jobs."""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from qlayer.local import procs
from qlayer.local.paths import Home
from qlayer.local.worker import worker_main
from qlayer.local.zygote import ChildProcess, Zygote, ZygoteError

log = logging.getLogger("qlayer.daemon")


@dataclass
class Assignment:
    """What one worker is doing.

    Attributes:
        kind: ``stage`` or ``device``.
        job_id: The job (a device job's leader).
        seq: The step.
        stage: The stage, or ``execute``.
        step_id: The ``steps`` row of a stage.
        device_job_id: The ``device_jobs`` row of a device job.
        deadline: Epoch seconds after which the stage is stopped (its ``timeout_s``).
        timeout_s: The stage's timeout.
        memory_mb: The stage's memory limit.
        riders: Coalesced device jobs run with the leader: ``{device_job_id, job_id, seq,
            request_key}`` each.
    """

    kind: str
    job_id: str
    seq: int
    stage: str | None
    step_id: int | None = None
    device_job_id: str | None = None
    deadline: float | None = None
    timeout_s: int | None = None
    memory_mb: int | None = None
    riders: list[dict[str, Any]] = field(default_factory=list)

    def members(self) -> list[dict[str, Any]]:
        """The device jobs this assignment runs: the leader, then its riders."""
        lead = {"device_job_id": self.device_job_id, "job_id": self.job_id, "seq": self.seq}
        return [lead, *self.riders]

    def involves(self, job_id: str) -> bool:
        return self.job_id == job_id or any(r["job_id"] == job_id for r in self.riders)


class WorkerHandle:
    """One warm worker process and what it is doing.

    Forked by the daemon's zygote when it has one (:mod:`qlayer.local.zygote`: no lock
    of the daemon's threads can be held in it), else forked here by multiprocessing.
    """

    def __init__(
        self,
        ctx: Any,
        home: Home,
        local_memory_mb: int,
        lock_fd: int | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        self.process: Any
        self.conn: Connection
        args = (str(home.artifacts), str(home.scratch), local_memory_mb, lock_fd)
        kwargs = {"db": str(home.db)}
        spawned = None
        if zygote is not None:
            try:
                spawned = zygote.spawn({"args": list(args), "kwargs": kwargs})
            except ZygoteError as exc:  # it was killed: fork here rather than not at all
                log.warning("%s; forking the worker from the daemon", exc)
        if spawned is not None:
            self.process, self.conn = spawned
        else:
            parent_conn, child_conn = multiprocessing.Pipe(duplex=True)
            self.conn = parent_conn
            self.process = ctx.Process(
                target=worker_main,
                args=(child_conn, *args),
                kwargs=kwargs,
                # Not daemonic: multiprocessing forbids daemonic processes to have
                # children, and stages may use multiprocessing themselves. Workers still
                # never outlive the daemon: it kills them on exit, and PR_SET_PDEATHSIG
                # when it is killed.
                daemon=False,
            )
            self.process.start()
            child_conn.close()
        self.busy: Assignment | None = None
        self.message_id = 0
        #: The program environment this worker runs (:mod:`qlayer.local.envs`) once a
        #: stage of one ran here; None: the base only.
        self.env: str | None = None

    def send(self, message: dict[str, Any], assignment: Assignment) -> None:
        self.message_id += 1
        message["id"] = self.message_id
        self.busy = assignment
        self.conn.send_bytes(json.dumps(message).encode())

    def kill(self) -> None:
        """Kill the worker and every process its stage forked (its process group)."""
        members = procs.kill_group(self.process.pid) if self.process.pid else []
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()
        procs.reap(members)  # orphans of the worker come to the daemon (a subreaper)
        if isinstance(self.process, ChildProcess):
            self.process.close()  # its pidfd


class WorkerPool:
    """The daemon's workers, forked from it after it imported qiskit.

    Args:
        home: The qlayer home (artifacts and scratch folders).
        size: How many workers.
        local_memory_mb: The machine's memory for stages (the planner's local limit).
        lock_fd: The daemon's lock file descriptor (workers drop it, see
            :func:`qlayer.local.worker.release_daemon_lock`).
        zygote: Where workers are forked (:mod:`qlayer.local.zygote`); None: here.
    """

    def __init__(
        self,
        home: Home,
        size: int,
        local_memory_mb: int,
        lock_fd: int | None,
        zygote: Zygote | None = None,
    ) -> None:
        self.home = home
        self.zygote = zygote
        self.size = size
        self.local_memory_mb = local_memory_mb
        self.lock_fd = lock_fd
        self.workers: list[WorkerHandle] = []
        self._ctx: Any = None

    def start(self) -> None:
        self._ctx = multiprocessing.get_context("fork")
        self.workers = [self._spawn() for _ in range(self.size)]
        self._record()

    def _spawn(self) -> WorkerHandle:
        return WorkerHandle(
            self._ctx, self.home, self.local_memory_mb, self.lock_fd, zygote=self.zygote
        )

    def _record(self) -> None:
        procs.record_groups(self.home.workers_file, [w.process.pid for w in self.workers])

    def __iter__(self) -> Iterator[WorkerHandle]:
        return iter(list(self.workers))

    def __contains__(self, worker: object) -> bool:
        return worker in self.workers

    def __len__(self) -> int:
        return len(self.workers)

    def idle(self) -> Iterator[WorkerHandle]:
        """Live workers with nothing to do."""
        for worker in list(self.workers):
            if worker.busy is None and worker.process.is_alive():
                yield worker

    def replace(self, worker: WorkerHandle) -> WorkerHandle | None:
        """Kill ``worker`` and fork a fresh one in its place (returned; None if it had
        been replaced already)."""
        worker.kill()
        if worker not in self.workers:
            return None  # already replaced
        fresh = self._spawn()
        self.workers[self.workers.index(worker)] = fresh
        self._record()
        return fresh

    def pick(self, idle: list[WorkerHandle], env: str | None) -> WorkerHandle:
        """The idle worker for a stage of a job with environment ``env`` (None: the base).

        One that runs that environment already; else one that runs none yet (the stage
        gives it ``env``); else an idle worker of another environment, replaced by a fresh
        one: a worker never runs stages of two environments, nor of an environment and
        the base, so one program's packages never reach another's.
        """
        if env is not None:
            for worker in idle:
                if worker.env == env:
                    return worker
        for worker in idle:
            if worker.env is None:
                return worker
        fresh = self.replace(idle[0])
        assert fresh is not None
        return fresh

    def stop_job(self, job_id: str) -> list[Assignment]:
        """Kill the workers running anything of ``job_id``; what they were running."""
        stopped = []
        for worker in list(self.workers):
            if worker.busy is not None and worker.busy.involves(job_id):
                log.info("stopping worker %s running %s", worker.process.pid, job_id)
                stopped.append(worker.busy)
                worker.busy = None
                self.replace(worker)
        return stopped

    def shutdown(self) -> None:
        for worker in self.workers:
            worker.kill()
