"""One program in a fresh box: what ``qlayer --target cloud-box run PROGRAM --wait`` does.

Synthesize the stack, start the box, run the program through ``Client.aws`` as a user
of the deployed stack would, wait for it, collect the states its execution entered, its
result (or error) and its logs, stop the box.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlayer.cloudbox.box import BoxOptions, CloudBox
from qlayer.cloudbox.server import REGION
from qlayer.cloudbox.synth import synthesize


@dataclass
class BoxRun:
    """How one program ran in the box.

    Attributes:
        job_id: The job's id (= its execution's name).
        status: The job's final status (DONE, ERROR, CANCELLED).
        states: The Step Functions states its execution entered, in order.
        result: The job's result when DONE.
        error: ``job.error()`` when not DONE.
        logs: What its stages logged.
        seconds: From submission to the end.
        endpoint: Where moto's server listened.
    """

    job_id: str
    status: str
    states: list[str]
    result: Any
    error: dict[str, Any] | None
    logs: str
    seconds: float
    endpoint: str


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 (subprocesses too) goes to 2 for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_in_box(
    program: str | os.PathLike[str],
    arguments: Mapping[str, Any],
    *,
    backend: str | None = None,
    timeout: float | None = 900,
    stack_props: Mapping[str, Any] | None = None,
    options: BoxOptions | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_ready: Callable[[CloudBox], None] | None = None,
) -> BoxRun:
    """Run ``program`` once in a fresh box (see the module docstring).

    Args:
        program: A program file or folder, as ``Client.run`` takes it.
        arguments: Its arguments.
        backend: The default backend for its Execute requests.
        timeout: Give up waiting after this many seconds (TimeoutError).
        stack_props: ``QlayerStack`` properties for the synthesis.
        options: How the box runs (:class:`~qlayer.cloudbox.box.BoxOptions`).
        progress: Called with the job's status while it runs.
        on_ready: Called with the box once it is up, before the job is submitted.
    """
    from qlayer.client import Client
    from qlayer.errors import JobCancelled, JobFailed

    with tempfile.TemporaryDirectory(prefix="cloudbox-run-") as folder:
        root = Path(folder)
        with _stdout_to_stderr():  # the layer build and jsii print; stdout is the report's
            synthesis = synthesize(root / "cdk.out", **dict(stack_props or {}))
        with CloudBox(synthesis, root / "box", options) as box:
            if on_ready is not None:
                on_ready(box)
            client = Client.aws(stack=synthesis.stack_name, region=REGION)
            started = time.monotonic()
            job = client.run(program, dict(arguments), backend=backend)
            result: Any = None
            try:
                result = job.result(wait=True, timeout=timeout, progress=progress)
            except (JobFailed, JobCancelled):
                pass
            seconds = time.monotonic() - started
            box.wait_execution(job.job_id, timeout=60)
            final = job.status().value
            return BoxRun(
                job_id=job.job_id,
                status=str(final),
                states=box.entered_states(job.job_id),
                result=result,
                error=None if final == "DONE" else job.error(),
                logs=job.logs(),
                seconds=seconds,
                endpoint=box.server.endpoint,
            )
