"""The events each handler receives, as Pydantic models: parse at the edge, fail clearly.

:func:`parse` turns a raw event into a model or raises :class:`EventError` whose
message names each bad field and says what was expected.

The job spec (an ``inbox/*.json`` upload that starts a job)::

    {"program": "programs/<id>/" | "<key of a .py in the bucket>",
     "arguments": {...},            # optional
     "backend": "aer"}              # optional: the workflow's default
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qlayer.errors import QlayerError
from qlayer.interpreter import DECISION_KINDS

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"
# \Z, not $: "$" also matches before a trailing newline ("inbox/x.py\n").
_PROGRAM_DIR = re.compile(r"^programs/([A-Za-z0-9_-]{1,64})/?\Z")
_PY_KEY = re.compile(r"^(programs|inbox)/[A-Za-z0-9_.\-/]+\.py\Z")

M = TypeVar("M", bound=BaseModel)


class EventError(QlayerError, ValueError):
    """An event or a job spec does not have the expected shape."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class DecisionModel(BaseModel):
    """A :class:`~qlayer.interpreter.Decision` as it travels in the state (pointers only)."""

    model_config = ConfigDict(extra="allow")

    kind: str
    seq: int = 0
    stage: str | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in DECISION_KINDS:
            raise ValueError(f"must be one of {', '.join(DECISION_KINDS)}")
        return value


class ExecutionInput(_Model):
    """The input of one execution of the job state machine (its name is the job id)."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)


class LoadEvent(_Model):
    """The "Load job" step: the execution input plus the execution's ARN."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    execution: str | None = None


class StepEvent(_Model):
    """Every step after "Load job": ``{"job_id.$": "$.job_id", "decision.$": "$.decision"}``."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    decision: DecisionModel

    def decision_json(self) -> dict[str, Any]:
        return self.decision.model_dump(exclude_none=True)


class FailureEvent(_Model):
    """The "Fail job" step: an error decision, or "Record failure"'s caught error in ``failure``."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    decision: dict[str, Any] = Field(default_factory=dict)


class ExecutionStatusDetail(_Model):
    executionArn: str
    stateMachineArn: str | None = None
    name: str
    status: str
    cause: str | None = None
    error: str | None = None
    input: str | None = None


class ExecutionStatusChange(_Model):
    """EventBridge: "Step Functions Execution Status Change" (FAILED, TIMED_OUT, ABORTED)."""

    source: Literal["aws.states"]
    detail_type: str = Field(alias="detail-type")
    detail: ExecutionStatusDetail


class JobSpec(_Model):
    """The documented job spec: what an ``inbox/*.json`` upload holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    program: str = Field(min_length=1, max_length=1024)
    arguments: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("program")
    @classmethod
    def _program(cls, value: str) -> str:
        if _PROGRAM_DIR.match(value) or (_PY_KEY.match(value) and ".." not in value.split("/")):
            return value
        raise ValueError(
            "must be an uploaded program folder 'programs/<id>/' or the S3 key of a .py file "
            "under programs/ or inbox/ in this bucket (letters, digits, '_', '-', '.', '/')"
        )

    @property
    def program_id(self) -> str | None:
        """The id of an uploaded program, or None when ``program`` is a .py key."""
        found = _PROGRAM_DIR.match(self.program)
        return found.group(1) if found else None


class S3Object(_Model):
    key: str
    size: int | None = None
    sequencer: str | None = None
    versionId: str | None = None
    eTag: str | None = None


class S3Bucket(_Model):
    name: str


class S3Entity(_Model):
    bucket: S3Bucket
    object: S3Object


class S3Record(_Model):
    eventName: str = ""
    eventTime: str | None = None
    s3: S3Entity


class S3Event(_Model):
    """An S3 ObjectCreated notification (keys arrive URL-encoded)."""

    Records: list[S3Record]


#: In a ``submitted`` job event's detail: the request runs in a QPU session of its job's
#: own, which Finalise has the dispatcher close (``action: close``).
SESSION_HELD = "session_held"


class DispatchMessage(_Model):
    """One SQS message from "Wait for QPU" (or a cancel from "Fail job", or the close of a
    finished job's QPU session from "Finalise")."""

    action: Literal["execute", "cancel", "close"] = "execute"
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    seq: int | None = None
    task_token: str | None = None
    request_key: str | None = None
    backend: str | None = None
    execution: str | None = None
    heartbeat_s: int | None = Field(default=None, gt=0)
    #: ``close``: the session group to close when it is not the job's own (a fan-out's
    #: batch, ``<job-id>_<seq>``).
    group: str | None = Field(default=None, pattern=JOB_ID_PATTERN)

    def check(self) -> DispatchMessage:
        if self.action == "execute":
            missing = [
                n
                for n in ("seq", "task_token", "request_key", "backend")
                if getattr(self, n) is None
            ]
            if missing:
                raise EventError(f"dispatch message for {self.job_id} lacks {', '.join(missing)}")
        return self


class SqsRecord(_Model):
    messageId: str
    body: str
    receiptHandle: str | None = None


class SqsEvent(_Model):
    Records: list[SqsRecord]


def parse(model: type[M], event: Any, *, what: str | None = None) -> M:
    """Validate ``event`` as ``model``; raise :class:`EventError` naming every bad field."""
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        raise EventError(describe(exc, what or model.__name__)) from exc


def describe(exc: ValidationError, what: str) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(the event)"
        problems.append(f"{where}: {error['msg']}")
    return f"invalid {what}: " + "; ".join(problems)
