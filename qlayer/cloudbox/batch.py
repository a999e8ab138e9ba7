"""AWS Batch for the cloud in a box: each submitted job runs its command as a process.

moto keeps the queues, job definitions and job records; the box's patch
(:mod:`qlayer.cloudbox.patches`) hands every submitted job to :class:`BatchRunner`,
which runs it as the container would:

* the command of the job definition (or of the container overrides) with its
  ``Ref::`` parameters substituted, e.g. ``python -m qlayer.aws.batch_entry ...``;
* with exactly the job's environment (the job definition's, the overrides' on top --
  Step Functions adds ``MANAGED_BY_AWS`` there -- and what Batch and ECS set:
  ``AWS_BATCH_JOB_ID``, ``AWS_BATCH_JOB_ATTEMPT``, ``AWS_BATCH_JQ_NAME``,
  ``AWS_REGION``, ``AWS_DEFAULT_REGION``, credentials), the image's ``ENV`` lines, the
  image's code on ``PYTHONPATH`` and ``AWS_ENDPOINT_URL`` (boto3 -> moto);
* RUNNABLE until one of ``max_running`` slots is free, then RUNNING; exit status 0 ->
  SUCCEEDED, else FAILED with ``exitCode`` and a status reason
  (``Essential container in task exited``); killed past its ``attemptDurationSeconds``
  (``Job attempt duration exceeded timeout``) or by TerminateJob; retried while the
  retry strategy has attempts left.

Not emulated: compute environments and placement (instance types, vCPU/memory/GPU
requirements are recorded, not enforced), RUNNABLE timeouts, array and multi-node
jobs, job dependencies, the awslogs driver (output goes to a file per job).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlayer.cloudbox.images import Image, image_digest
from qlayer.cloudbox.patches import MotoBatchJob

log = logging.getLogger("qlayer.cloudbox")

#: The reasons Batch gives for a stopped job.
EXITED = "Essential container in task exited"
TIMED_OUT = "Job attempt duration exceeded timeout"


@dataclass
class BatchRun:
    """One attempt of one job, for the box's reports and the tests."""

    job_id: str
    name: str
    queue: str
    command: list[str]
    environment: dict[str, str]
    attempt: int
    log_path: Path
    pid: int | None = None
    exit_code: int | None = None
    reason: str | None = None


@dataclass
class BatchRunner:
    """Runs submitted Batch jobs as processes (see the module docstring).

    Attributes:
        images: Image hash -> :class:`~qlayer.cloudbox.images.Image`.
        service_env: What Batch/ECS set in every container (region, credentials) and the
            endpoint variable.
        workdir: Where each job gets its scratch folder (the container's /tmp) and log.
        max_running: Jobs running at once; the others wait RUNNABLE.
    """

    images: Mapping[str, Image]
    service_env: Mapping[str, str]
    workdir: Path
    max_running: int = 2
    runs: list[BatchRun] = field(default_factory=list)
    _queue: queue.Queue[MotoBatchJob | None] = field(default_factory=queue.Queue)
    _threads: list[threading.Thread] = field(default_factory=list)
    _active: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def start(self) -> None:
        for n in range(self.max_running):
            thread = threading.Thread(target=self._work, name=f"cloudbox-batch-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, job: MotoBatchJob) -> None:
        self._queue.put(job)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as exc:  # the box's own failure: the job fails with it
                log.exception("batch job %s could not run", job.name)
                job.finished(None, f"{EXITED}: the box could not run it: {exc}")

    def _run(self, job: MotoBatchJob) -> None:
        exit_code: int | None = None
        reason: str | None = None
        for attempt in range(1, job.attempts + 1):
            stopped = job.stop_requested()
            if stopped:
                exit_code, reason = None, stopped
                break
            job.running(attempt)
            exit_code, reason = self._attempt(job, attempt)
            if exit_code == 0 or job.stop_requested():
                break
        job.finished(exit_code, reason)

    def environment(self, job: MotoBatchJob, image: Image | None, tmp: Path) -> dict[str, str]:
        """The container's environment (see the module docstring)."""
        code = image.python_path() if image else ()
        return {
            **(image.environment(tmp) if image else {}),
            "PATH": os.pathsep.join(
                [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
            ),
            "PYTHONPATH": os.pathsep.join(code),
            **job.environment,
            "AWS_BATCH_JQ_NAME": job.queue,
            **self.service_env,
            "TMPDIR": str(tmp),
        }

    def _attempt(self, job: MotoBatchJob, attempt: int) -> tuple[int | None, str | None]:
        image = self.images.get(image_digest(job.image))
        scratch = self.workdir / f"{job.name}-{job.job_id[:8]}-{attempt}"
        tmp = scratch / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = self.environment(job, image, tmp)
        run = BatchRun(
            job.job_id, job.name, job.queue, job.command, env, attempt, scratch / "output.log"
        )
        self.runs.append(run)
        if not job.command:
            run.reason = "CannotStartContainerError: the job has no command"
            return None, run.reason
        cwd = str(image.code) if image else str(scratch)
        with open(run.log_path, "wb") as out:
            try:
                process = subprocess.Popen(
                    job.command,
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                run.reason = f"CannotStartContainerError: {exc}"
                return None, run.reason
        run.pid = process.pid
        with self._lock:
            self._active[job.job_id] = process
        deadline = time.monotonic() + job.timeout_s if job.timeout_s else None
        try:
            while True:
                try:
                    code = process.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                stopped = job.stop_requested()
                if stopped or self._closed:
                    _kill(process)
                    run.exit_code, run.reason = process.wait(), stopped or "the box stopped"
                    return run.exit_code, run.reason
                if deadline is not None and time.monotonic() > deadline:
                    _kill(process)
                    process.wait()
                    run.reason = TIMED_OUT
                    return None, run.reason
        finally:
            with self._lock:
                self._active.pop(job.job_id, None)
        run.exit_code = code if code >= 0 else 128 - code
        if run.exit_code != 0:
            run.reason = EXITED
        return run.exit_code, run.reason

    def close(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        with self._lock:
            processes = list(self._active.values())
        for process in processes:
            _kill(process)
        for thread in self._threads:
            thread.join(timeout=10)

    def output(self, job_id: str) -> str:
        """What the job's last attempt printed (its awslogs stream, here a file)."""
        runs = [r for r in self.runs if r.job_id == job_id]
        return runs[-1].log_path.read_text(errors="replace") if runs else ""


def _kill(process: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
