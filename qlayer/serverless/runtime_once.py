"""Exactly one IBM Runtime job per call of a function, however often the function reruns.

A function is opaque to qlayer: after a crash (a killed daemon, a dead worker) its stage
runs again from the top, and so does every ``sampler.run(...)`` in it. Loaded into the
function's process by :mod:`qlayer.serverless.launch`, this wraps
``QiskitRuntimeService._run`` — the one call every primitive, session and batch of
qiskit-ibm-runtime submits through, the one ``get_runtime_service()``'s service
overrides too — so that the job's *n*-th submission carries the tag
``qlayer-<job id>-<n>`` and, before it is sent, the service is asked for a job with that
tag: if the first run got that far (even if it died before hearing the answer), that job
is returned and nothing is submitted. It is the rule qlayer's dispatcher recovers by
(find the provider job by its idempotency tag), applied at the function's boundary.

The *n*-th call of a rerun is taken to be the same call as the *n*-th of the first run:
true of functions whose submissions do not depend on timing or randomness.

It also ends the runtime jobs of a *cancelled* job. The function's process has a process
group of its own and is told (SIGTERM) when the stage that started it dies; it then asks
the gateway for its job's status (with its job token): if the job was cancelled, it
cancels every runtime job it submitted or found, then exits; otherwise (a crash, a
daemon going down) it exits at once and leaves them for the rerun. A process whose stage
is gone never submits again (checked before every submission).

Like :mod:`qlayer.serverless.launch`, this imports nothing of qlayer.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.request
from typing import Any

TAG_PREFIX = "qlayer-"
#: How long winding down may take: asking the gateway, then cancelling.
ASK_TIMEOUT_S = 5.0
_SUBMITTED: list[Any] = []
_ENDING = threading.Lock()


def install(job_id: str) -> bool:
    """Wrap the service's ``_run`` for job ``job_id``; False if qiskit-ibm-runtime is absent."""
    try:
        from qiskit_ibm_runtime import QiskitRuntimeService
    except ImportError:
        return False
    original = QiskitRuntimeService._run
    if getattr(original, "_qlayer_once", False):
        return True
    calls = itertools.count()
    parent = os.getppid()

    def _run(
        self: Any, program_id: str, inputs: Any, options: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        if os.getppid() != parent:  # the stage is gone: a rerun owns the calls now
            os._exit(143)
        tag = f"{TAG_PREFIX}{job_id}-{next(calls)}"
        earlier = self.jobs(job_tags=[tag], limit=1)
        if earlier:
            print(
                f"qlayer: {tag} was submitted before as {earlier[0].job_id()}; "
                "not submitting it again",
                file=sys.stderr,
                flush=True,
            )
            _SUBMITTED.append(earlier[0])
            return earlier[0]
        job = original(self, program_id, inputs, _tagged(options, tag), *args, **kwargs)
        _SUBMITTED.append(job)
        return job

    _run._qlayer_once = True  # type: ignore[attr-defined]
    QiskitRuntimeService._run = _run  # type: ignore[method-assign]
    return True


def _tagged(options: Any, tag: str) -> Any:
    if options is None:
        return None
    if isinstance(options, dict):
        return {**options, "job_tags": [*(options.get("job_tags") or []), tag]}
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        tags = list(getattr(options, "job_tags", None) or [])
        return dataclasses.replace(options, job_tags=[*tags, tag])
    return options


def _job_cancelled() -> bool:
    """Whether the gateway says this job was cancelled (False when it cannot be asked)."""
    host = os.environ.get("ENV_JOB_GATEWAY_HOST")
    token = os.environ.get("ENV_JOB_GATEWAY_TOKEN")
    job_id = os.environ.get("ENV_JOB_ID_GATEWAY")
    if not (host and token and job_id):
        return False
    request = urllib.request.Request(
        f"{host}/api/v1/jobs/{job_id}/", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=ASK_TIMEOUT_S) as answer:
            job = json.loads(answer.read(65536))
    except Exception:
        return False
    return bool(job.get("status") == "STOPPED" or job.get("cancel_requested"))


def wind_down() -> None:
    """The stage is gone: cancel the runtime jobs if the job was cancelled, remove the
    job's scratch folders (the stage could not), exit."""
    if not _ENDING.acquire(blocking=False):
        return
    try:
        if _SUBMITTED and _job_cancelled():
            for job in _SUBMITTED:
                try:
                    job.cancel()
                    print(
                        f"qlayer: cancelled runtime job {job.job_id()}", file=sys.stderr, flush=True
                    )
                except Exception as exc:  # ended already, or unreachable
                    print(
                        f"qlayer: runtime job {job.job_id()} not cancelled: {exc}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for folder in os.environ.get("QLAYER_FUNCTION_SCRATCH", "").split(os.pathsep):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
        os._exit(143)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    wind_down()


def install_from_environment() -> bool:
    """Install the wrapper and the wind-down for the job named in the environment."""
    job_id = os.environ.get("ENV_JOB_ID_GATEWAY")
    if not job_id:
        return False
    signal.signal(signal.SIGTERM, lambda signum, frame: wind_down())
    watcher = threading.Thread(target=_watch, args=(os.getppid(),), daemon=True)
    watcher.start()
    return install(str(job_id))
