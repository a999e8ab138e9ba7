"""How the engine stops a job's work on the local substrate: its workers, its simulated
device jobs and its remote QPU jobs (the :class:`~qlayer.core.ports.Orchestrator` port)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qlayer.core.ports import JobRecord, Orchestrator

if TYPE_CHECKING:
    from qlayer.local.daemon import Daemon


class LocalOrchestrator(Orchestrator):
    """How the engine stops a job's work here: its workers, device jobs and QPU jobs."""

    loads_job_inputs = False  # the daemon starts a child from its row, not its input.json
    keeps_first_inputs = True  # and a child's small item stays in its step's row

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def stop(self, job: JobRecord) -> None:
        daemon = self.daemon
        for busy in daemon.pool.stop_job(job.job_id):
            if busy.kind == "device":  # the others it was running wait for the device again
                for member in busy.members():
                    if member["job_id"] != job.job_id:
                        daemon.devices.requeue(member["device_job_id"])
        self.cancel_provider_jobs(job)
        daemon.conn.execute(
            "UPDATE steps SET state = 'done' WHERE job_id = ? AND state != 'done'", (job.job_id,)
        )

    def cancel_provider_jobs(self, job: JobRecord) -> None:
        self.daemon.devices.cancel_job(job.job_id)
        self.daemon.remote.cancel_job(job.job_id)
