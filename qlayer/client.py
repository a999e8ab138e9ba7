"""The client API: one protocol every substrate's client and job handle satisfy.

Example:
    >>> from qlayer import Client
    >>> client = Client.local()                    # or Client.aws(stack="Qlayer")
    >>> job = client.run("examples/qaoa_maxcut.py", {"nodes": 8})
    >>> job.status()
    <JobStatus.RUNNING: 'RUNNING'>
    >>> job.result(wait=True)["cut"]

A substrate is chosen by name (:func:`connect`, ``qlayer --target``) through
:data:`SUBSTRATES`; its client module is imported only then, so this module imports no
substrate.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qlayer.errors import QlayerError
from qlayer.status import JobStatus

if TYPE_CHECKING:
    from qlayer.aws.client import AwsClient
    from qlayer.local.client import LocalClient
    from qlayer.workflow import Workflow

ProgressCallback = Callable[[dict[str, Any]], None]

#: Substrate name -> ``module:class`` of its client (constructed with keyword options).
SUBSTRATES: dict[str, str] = {
    "local": "qlayer.local.client:LocalClient",
    "aws": "qlayer.aws.client:AwsClient",
}


class Job(Protocol):
    """A handle on one job, on any substrate. Rebuild it from its id with ``client.job(id)``."""

    job_id: str

    def status(self) -> JobStatus:
        """The job's status, one of :class:`~qlayer.status.JobStatus`."""
        ...

    def info(self) -> dict[str, Any]:
        """The job's status record as JSON (what ``qlayer status --json`` prints)."""
        ...

    def result(
        self,
        wait: bool = True,
        timeout: float | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """The job's final result (``JobFailed``/``JobCancelled`` when it did not succeed)."""
        ...

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: ProgressCallback | None = None,
        poll_s: float | None = None,
        max_poll_s: float | None = None,
    ) -> Any:
        """Block until the job ends; its final status record."""
        ...

    def logs(self, *, children: bool = False) -> str:
        """Everything the stages logged, in step order."""
        ...

    def usage(self) -> dict[str, Any]:
        """Shots, QPU, simulator and stage seconds, children included."""
        ...

    def files(self) -> list[str]:
        """Names of the files and plots the stages saved."""
        ...

    def download(self, name: str, destination: str | os.PathLike[str] | None = None) -> Path:
        """Copy a saved file to ``destination``."""
        ...

    def timeline(self) -> list[dict[str, Any]]:
        """Stage events in order."""
        ...

    def children(self) -> Sequence[Job]:
        """Fan-out children, in item order."""
        ...

    def cancel(self) -> bool:
        """Cancel the job, its children and its provider jobs; False if it had ended."""
        ...

    def error(self) -> dict[str, Any] | None:
        """Why the job failed (``error.json``), or None."""
        ...


class QlayerClient(Protocol):
    """What every substrate's client offers."""

    def run(
        self,
        program: str | os.PathLike[str] | Workflow,
        arguments: Mapping[str, Any] | None = None,
        *,
        backend: str | None = None,
        notify: Sequence[str] | str | None = None,
        max_cost_usd: float | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Submit a program and return at once (``notify``: :mod:`qlayer.notify`;
        ``max_cost_usd``: a budget, see :class:`~qlayer.workflow.Workflow`; ``job_id``:
        one made in advance by :func:`qlayer.keys.new_job_id`)."""
        ...

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (``JobNotFound`` if there is none)."""
        ...

    def jobs(self, *, limit: int = 50, status: str | None = None) -> Sequence[Job]:
        """Recent top-level jobs, newest first."""
        ...

    def backends(self) -> list[dict[str, Any]]:
        """Every backend the configuration knows."""
        ...


def connect(substrate: str, **options: Any) -> QlayerClient:
    """The client of the substrate named ``substrate`` (a key of :data:`SUBSTRATES`).

    Args:
        options: The substrate client's keyword arguments (``home=`` locally; ``stack=``,
            ``region=``, ``session=`` on AWS).

    Raises:
        QlayerError: No substrate has that name.
    """
    target = SUBSTRATES.get(substrate)
    if target is None:
        raise QlayerError(
            f"unknown substrate {substrate!r}; use one of {', '.join(sorted(SUBSTRATES))}"
        )
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    client: QlayerClient = cls(**options)
    return client


class Client:
    """Entry points to the substrates (nothing is created until one is chosen)."""

    @staticmethod
    def local(
        home: str | os.PathLike[str] | None = None,
        *,
        autostart: bool = True,
        workers: int | None = None,
    ) -> LocalClient:
        """A client of the local substrate.

        Args:
            home: State folder (default ``$QLAYER_HOME`` or ``~/.qlayer``).
            autostart: Start the daemon when a job needs it.
            workers: Worker processes for a daemon this client starts.
        """
        from qlayer.local.client import LocalClient

        return LocalClient(home, autostart=autostart, workers=workers)

    @staticmethod
    def aws(stack: str = "Qlayer", region: str | None = None, session: Any = None) -> AwsClient:
        """A client of a deployed AWS stack (same methods; needs the ``aws`` extra).

        Args:
            stack: The CloudFormation stack name given to ``cdk deploy``.
            region: AWS region (default: the session's).
            session: A ``boto3.Session`` (default: a new one). Nothing is called until used.
        """
        from qlayer.aws.client import AwsClient

        return AwsClient(stack=stack, region=region, session=session)

    connect = staticmethod(connect)
