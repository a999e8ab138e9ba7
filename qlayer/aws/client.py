"""The client of the AWS substrate: the same methods as the local client and job.

Example:
    >>> from qlayer import Client
    >>> client = Client.aws(stack="Qlayer", region="eu-west-1")
    >>> job = client.run("examples/ghz_sampling.py", {"qubits": 3})
    >>> job.info()["console_url"]      # watch it in the Step Functions console
    >>> job.result(wait=True)

No network call happens until a method needs one: the stack's outputs are read
(one DescribeStacks call) on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from qlayer.aws.orchestrator import start_execution
from qlayer.aws.services import Services
from qlayer.core import transitions
from qlayer.core.ports import JobRecord, JobStore
from qlayer.job import BaseJob
from qlayer.store.base import ArtifactStore
from qlayer.workflow import Workflow


def console_url(execution_arn: str, region: str | None = None) -> str:
    """The Step Functions console page of one execution."""
    region = region or execution_arn.split(":")[3]
    return (
        f"https://{region}.console.aws.amazon.com/states/home?region={region}"
        f"#/v2/executions/details/{execution_arn}"
    )


def prepare_job(
    svc: Services,
    program: str | os.PathLike[str] | Workflow,
    arguments: Mapping[str, Any] | None,
    *,
    backend: str | None = None,
    max_cost_usd: float | None = None,
    job_id: str | None = None,
) -> str:
    """Upload the program, write the job's inputs (:func:`qlayer.submit.prepare_job`) and
    record the job. Returns the new job id; nothing is started (see :meth:`AwsClient.run`).

    The program's requirements, if any, are resolved against the stack's runner image
    (:func:`qlayer.aws.envs.stack_base`) and their lock stored under ``envs/``; the job's
    first step builds the environment if no job built it before.

    Raises:
        WorkflowError: A stage declares more than the deployment offers (checked before
            anything is written).
        RequirementError: The requirements cannot be resolved or clash with the base.
    """
    from qlayer.aws.envs import stack_base
    from qlayer.planner import check_stages
    from qlayer.submit import prepare_job as prepare

    def check(workflow: Workflow) -> list[str]:
        check_stages(workflow, svc.config.resources())
        return []

    job = prepare(
        svc.store,
        program,
        arguments,
        backend=backend,
        credentials_elsewhere=svc.config.providers_secret_arn is not None,
        check=check,
        max_cost_usd=max_cost_usd,
        # requirements resolve for the runner image (read only if the program has some:
        # the Serverless gateway's light function submits jobs and has no qiskit)
        base=lambda: stack_base(svc.store),
        job_id=job_id,
    )
    svc.jobs.create(job.record())
    return job.job_id


class AwsClient:
    """Entry point to a deployed qlayer stack.

    Args:
        stack: The CloudFormation stack name (``cdk deploy`` default: ``Qlayer``).
        region: AWS region (default: the session's).
        session: A ``boto3.Session`` (default: a new one).
        services: Ready-made :class:`Services`; skips reading the stack.
    """

    def __init__(
        self,
        stack: str = "Qlayer",
        region: str | None = None,
        session: Any = None,
        *,
        services: Services | None = None,
    ) -> None:
        self.stack = stack
        self.region = region
        self._session = session
        self._services = services

    def __repr__(self) -> str:
        return f"<AwsClient stack={self.stack!r} region={self.region!r}>"

    @property
    def services(self) -> Services:
        if self._services is None:
            import boto3

            from qlayer.aws.config import AwsConfig

            session = self._session or boto3.Session(region_name=self.region)
            region = self.region or session.region_name
            config = AwsConfig.from_stack(self.stack, session.client("cloudformation"), region)
            self._services = Services.create(config, session)
        return self._services

    # -- jobs ------------------------------------------------------------------------
    def run(
        self,
        program: str | os.PathLike[str] | Workflow,
        arguments: Mapping[str, Any] | None = None,
        *,
        backend: str | None = None,
        notify: Sequence[str] | str | None = None,
        max_cost_usd: float | None = None,
        job_id: str | None = None,
    ) -> AwsJob:
        """Submit a program and return at once (the execution is named by the job id).

        Args:
            job_id: The job's id, made in advance by :func:`qlayer.keys.new_job_id`
                (default: a new one).
            notify: Not delivered on AWS yet: giving targets here is refused rather
                than dropped (a workflow's own ``notify`` is only honoured locally).

        Raises:
            ConfigError: ``notify`` was given (see above).
            ProgramError: The program is missing, does not parse, or defines no Workflow.
            ArgumentError: The arguments do not match the declared parameters.
            BackendError: The backend name is unknown.
            WorkflowError: A stage declares more than the deployment offers.
        """
        if notify:
            from qlayer.errors import ConfigError

            raise ConfigError(
                "notify targets are delivered by the local substrate only; on AWS, "
                "subscribe to the stack's job-events topic (output JobEventsTopicArn; "
                "docs/deploy.md)"
            )
        svc = self.services
        job_id = prepare_job(
            svc, program, arguments, backend=backend, max_cost_usd=max_cost_usd, job_id=job_id
        )
        start_execution(svc, job_id)
        return AwsJob(self, job_id)

    def job(self, job_id: str) -> AwsJob:
        """A handle on an existing job (raises JobNotFound if there is none)."""
        return AwsJob(self, job_id, self.services.jobs.get(job_id))

    def jobs(self, *, limit: int = 50, status: str | None = None) -> list[AwsJob]:
        """Recent top-level jobs, newest first."""
        return [
            AwsJob(self, r.job_id, r)
            for r in self.services.jobs.list_jobs(limit=limit, status=status)
        ]

    def backends(self) -> list[dict[str, Any]]:
        """Every backend the configuration knows."""
        from qlayer.providers.registry import known_backends

        return [info.to_json() for info in known_backends()]


class AwsJob(BaseJob):
    """A handle on one job of the AWS substrate. Rebuild it with ``client.job(job_id)``."""

    poll_start_s = 0.5
    poll_max_s = 10.0

    def __init__(self, client: AwsClient, job_id: str, record: JobRecord | None = None) -> None:
        super().__init__(job_id)
        self.client = client
        self._record = record

    @property
    def _svc(self) -> Services:
        return self.client.services

    @property
    def store(self) -> ArtifactStore:
        return self._svc.store

    @property
    def _jobstore(self) -> JobStore:
        return self._svc.jobs

    def _fetch(self) -> JobRecord:
        self._record = self._svc.jobs.get(self.job_id)
        return self._record

    def console_url(self) -> str | None:
        record = self._record or self._fetch()
        if not record.execution_arn:
            return None
        return console_url(record.execution_arn, self._svc.config.region)

    def info(self) -> dict[str, Any]:
        """The job's status record as JSON, with the Step Functions console URL."""
        record = self._fetch()
        info = self._status_json(record)
        info["provider_job_ids"] = record.provider_job_ids
        info["execution_arn"] = record.execution_arn
        info["console_url"] = self.console_url()
        return info

    def cancel(self) -> bool:
        """Stop the execution, cancel the provider job and the children. False if it had ended."""
        return transitions.cancel(self._svc.ports(), self.job_id)

    def timeline(self) -> list[dict[str, Any]]:
        """Stage events in order: submitted, started, finished, errors, provider jobs."""
        return self._svc.jobs.timeline(self.job_id)

    def children(self) -> list[AwsJob]:
        """Children of the job's latest fan-out, in item order."""
        return [AwsJob(self.client, r.job_id, r) for r in self._svc.jobs.children(self.job_id)]
