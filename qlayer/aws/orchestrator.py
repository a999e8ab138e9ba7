"""How the engine stops a job's work on AWS: its Step Functions execution, its QPU task."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from qlayer.core.ports import JobRecord, Orchestrator

if TYPE_CHECKING:
    from qlayer.aws.services import Services

log = logging.getLogger("qlayer.aws")


class AwsOrchestrator(Orchestrator):
    """Stops executions and asks the dispatcher to cancel provider jobs.

    Args:
        svc: The process's services (a Step Functions client; the dispatch queue where
            the function has it).
    """

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def stop(self, job: JobRecord) -> None:
        """Stop the job's execution (the job is already CANCELLED), then its provider jobs."""
        from botocore.exceptions import ClientError

        if job.execution_arn and self.svc.sfn is not None:
            try:
                self.svc.sfn.stop_execution(executionArn=job.execution_arn, cause="cancelled")
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ExecutionDoesNotExist":
                    raise
        self.cancel_provider_jobs(job)

    def cancel_provider_jobs(self, job: JobRecord) -> None:
        """Ask the dispatcher to cancel the job's open provider task (cancel reaches the QPU).

        Only a job at an execute step can have one. A function without the dispatch queue
        never ends a job with provider work open: the states that can (Fail job, a
        client's cancel) have it.
        """
        url = self.svc.config.dispatch_queue_url
        if self.svc.sqs is None or not url or job.stage != "execute":
            return
        self.svc.sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps({"action": "cancel", "job_id": job.job_id, "seq": job.seq}),
        )

    def ended(self, job: JobRecord) -> None:
        """A job from an inbox spec gets its outcome written next to the spec; a job that
        held a QPU session (a ``submitted`` event says so), or whose fan-out's items held a
        batch (a ``batch held`` event), has the dispatcher close it."""
        from qlayer.aws.events import SESSION_HELD
        from qlayer.aws.inbox import report_to_spec

        if job.parent_id is None:  # a fan-out child never comes from a spec
            report_to_spec(self.svc, job.job_id)
        url = self.svc.config.dispatch_queue_url
        if self.svc.sqs is None or not url:
            return
        held = {
            (str(detail["backend"]), detail.get("group"))
            for event in self.svc.jobs.timeline(job.job_id)
            if event.get("event") in ("submitted", "batch held")
            and (detail := event.get("detail") or {}).get(SESSION_HELD)
        }
        for backend, group in sorted(held, key=lambda pair: (pair[0], pair[1] or "")):
            message = {"action": "close", "job_id": job.job_id, "backend": backend}
            if group:  # its fan-out's batch (a "batch held" event)
                message["group"] = str(group)
            self.svc.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(message))


def start_execution(svc: Services, job_id: str) -> str:
    """Start the job's execution, named by the job id (idempotent for the same input)."""
    response = svc.sfn.start_execution(
        stateMachineArn=svc.config.require("state_machine_arn"),
        name=job_id,
        input=json.dumps({"job_id": job_id}),
    )
    arn: str = response["executionArn"]
    svc.jobs.set(job_id, attrs={"execution_arn": arn})
    return arn
