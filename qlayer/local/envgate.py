"""The daemon's half of program environments: jobs wait, BUILDING, while theirs is built.

A stage step of a job whose environment is not built yet does not go to a worker: the
step waits (``steps.state = 'waiting'``), the job shows ``BUILDING`` with a ``building
environment`` event, and the build starts (:class:`qlayer.local.envs.Builds`: one per
hash, however many jobs wait for it). When it ends, every job waiting for it goes on
(``environment ready``, back to QUEUED, its step pending) or, if it failed, ends in
ERROR with the installer's message (``EnvBuildError``) before any stage of it ran. A
failed build is not retried for those jobs; a job submitted later tries again.

A daemon restarted mid-build puts the waiting steps back to pending (:meth:`recover`):
they wait again, and the build starts again from nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from qlayer import keys
from qlayer.core import transitions
from qlayer.core.ports import Event, JobRecord, Ports
from qlayer.envs import load_lock
from qlayer.errors import QlayerError
from qlayer.local import envs
from qlayer.local.state import transaction
from qlayer.status import JobStatus


class EnvGate:
    """Holds back the stages of jobs whose environment is not built, and builds it.

    Args:
        conn: The daemon's connection.
        ports: The engine's ports (jobs, artifacts).
        envs_dir: ``$QLAYER_HOME/envs``.
    """

    def __init__(self, conn: sqlite3.Connection, ports: Ports, envs_dir: Path) -> None:
        self.conn = conn
        self.ports = ports
        self.envs_dir = envs_dir
        self.builds = envs.Builds(envs_dir, ports.store)

    def site(self, job: JobRecord, step: sqlite3.Row) -> str | None:
        """The ``site/`` folder a stage of ``job`` runs with, once built; None when the
        step must wait (it has been made to: :meth:`hold`). Caller: a job with an env."""
        assert job.env is not None
        if envs.is_built(self.envs_dir, job.env):
            envs.touch(self.envs_dir, job.env)
            return str(envs.site_dir(self.envs_dir, job.env))
        self.hold(job, step)
        return None

    def hold(self, job: JobRecord, step: sqlite3.Row) -> None:
        """Make ``step`` wait for the job's environment, and start building it."""
        assert job.env is not None
        with transaction(self.conn):  # BUILDING first: starting a build takes a moment
            self.conn.execute(
                "UPDATE steps SET state = 'waiting' WHERE step_id = ?", (step["step_id"],)
            )
            detail = {"env": job.env, "packages": self._packages(job.env)}
            self.ports.jobs.update(
                job.job_id,
                status=JobStatus.BUILDING,
                event=Event(step["seq"], step["stage"], "building environment", detail),
            )
        failed = self.builds.start(job.env)
        if failed is not None:
            self.ended(failed)

    def poll(self) -> None:
        """Carry on (or fail) the jobs whose environment's build ended."""
        for finished in self.builds.poll():
            self.ended(finished)

    def pending(self) -> bool:
        """Whether a build is under way (the daemon looks again soon)."""
        return self.builds.pending()

    def ended(self, finished: envs.Finished) -> None:
        """Every job waiting for ``finished.env`` goes on, or ends in ERROR."""
        rows = self.conn.execute(
            "SELECT steps.step_id, steps.job_id, steps.seq, steps.stage FROM steps"
            " JOIN jobs ON jobs.job_id = steps.job_id WHERE steps.kind = 'stage'"
            " AND steps.state = 'waiting' AND jobs.env = ?",
            (finished.env,),
        ).fetchall()
        for row in rows:
            with transaction(self.conn):
                if finished.ok:
                    self.conn.execute(
                        "UPDATE steps SET state = 'pending' WHERE step_id = ?", (row["step_id"],)
                    )
                    self.ports.jobs.update(
                        row["job_id"],
                        status=JobStatus.QUEUED,
                        event=Event(
                            row["seq"],
                            row["stage"],
                            "environment ready",
                            {"env": finished.env, "build_s": round(finished.seconds, 3)},
                        ),
                    )
                    continue
                self.conn.execute(
                    "UPDATE steps SET state = 'done' WHERE step_id = ?", (row["step_id"],)
                )
                self.ports.store.append_text(
                    keys.log_key(row["job_id"], row["seq"], row["stage"]),
                    f"building environment {finished.env} failed:\n{finished.message}\n",
                )
                transitions.fail(
                    self.ports,
                    row["job_id"],
                    "EnvBuildError",
                    f"building the program's environment failed: {finished.message}",
                    seq=row["seq"],
                    stage=row["stage"],
                )

    def recover(self) -> None:
        """After a restart: steps that waited for a build are pending again (they wait
        again, and the build starts again, when the scheduler reaches them)."""
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE steps SET state = 'pending' WHERE kind = 'stage' AND state = 'waiting'"
            )

    def shutdown(self) -> None:
        self.builds.shutdown()

    def _packages(self, env: str) -> list[str]:
        """The pins the environment installs (for the timeline; [] if its lock is gone:
        the build then fails saying so)."""
        build = self.builds.running.get(env)
        if build is not None:
            return list(build.lock.install)
        try:
            return list(load_lock(self.ports.store, env).install)
        except QlayerError:
            return []
