"""Every exception qlayer raises, in one place.

Errors are things a user can act on; each message says what was wrong and how to
fix it. Control-flow signals are not errors and do not live here.
"""

from __future__ import annotations


class QlayerError(Exception):
    """Base class of every qlayer error."""


class ProgramError(QlayerError):
    """The program cannot be loaded: missing file, syntax error, no Workflow."""


class WorkflowError(QlayerError):
    """The workflow is malformed: unknown stage, bad decorator arguments."""


class ArgumentError(QlayerError):
    """Job arguments do not match what the workflow declares."""


class CodecError(QlayerError):
    """A value cannot be serialised or deserialised safely."""


class ArtifactError(QlayerError):
    """An artifact is missing or corrupted."""


class PlannerError(QlayerError):
    """No compute tier can serve an execute request."""


class BackendError(QlayerError):
    """Unknown backend name, or the backend refused the request."""


class StageFailed(QlayerError):
    """A stage raised; carries the original exception's type and message."""


class JobFailed(QlayerError):
    """Raised by ``Job.result()`` when the job ended in ERROR.

    Attributes:
        job_id: The job that failed.
        reason: The message recorded with the job's ERROR status.
    """

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} failed: {reason}")
        self.job_id = job_id
        self.reason = reason


class JobCancelled(QlayerError):
    """Raised by ``Job.result()`` when the job was cancelled."""


class JobNotFound(QlayerError):
    """No job with that id exists in this substrate."""


class ConfigError(QlayerError):
    """A setting is missing or malformed: an environment variable, a stack output."""


class DaemonError(QlayerError):
    """The local daemon could not be started or reached."""


class FileNameError(QlayerError, ValueError):
    """A file name a job may not use (traversal, an absolute path, control characters).

    Also a ``ValueError``, which is what it was before it had a name of its own.
    """


class StateError(QlayerError):
    """The local state database is corrupt, or cannot be written (``qlayer doctor``)."""


class StateBusy(QlayerError):
    """The local state database stayed locked by another process past its busy timeout."""


class RequirementError(WorkflowError):
    """A program's requirements are malformed, cannot be resolved, or cannot coexist
    with the base qlayer runs on (a different qiskit major); the message says which.

    A ``WorkflowError`` too: requirements are part of what a program declares.
    """


class EnvBuildError(QlayerError):
    """Building a program's environment failed; the message is the installer's."""
