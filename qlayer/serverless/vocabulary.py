"""The two status vocabularies and how qlayer's maps onto the gateway's.

The gateway speaks Ray's words (``QUEUED``, ``PENDING``, ``RUNNING``, ``SUCCEEDED``,
``FAILED``, ``STOPPED``) and a RUNNING job may carry a sub-status (``MAPPING``,
``OPTIMIZING_HARDWARE``, ``WAITING_QPU``, ``EXECUTING_QPU``, ``POST_PROCESSING``); the
client turns them into ``QUEUED``, ``INITIALIZING``, ``RUNNING: MAPPING``..., ``DONE``,
``ERROR``, ``CANCELED``. A job whose environment is being built (``BUILDING``) is
``PENDING`` (``INITIALIZING``). A qlayer job keeps a sub-status as its stage, in the client's
spelling (``MAPPING``, ``OPTIMIZING_FOR_HARDWARE``, ``WAITING_FOR_QPU``,
``EXECUTING_QPU``, ``POST_PROCESSING``), so ``qlayer status`` and the timeline show it.
"""

from __future__ import annotations

from qlayer.status import JobStatus

#: A sub-status as the job sends it -> the stage qlayer shows.
SUB_STATUS_STAGE = {
    "MAPPING": "MAPPING",
    "OPTIMIZING_HARDWARE": "OPTIMIZING_FOR_HARDWARE",
    "WAITING_QPU": "WAITING_FOR_QPU",
    "EXECUTING_QPU": "EXECUTING_QPU",
    "POST_PROCESSING": "POST_PROCESSING",
}
STAGE_SUB_STATUS = {stage: sub for sub, stage in SUB_STATUS_STAGE.items()}

_GATEWAY_STATUS = {
    JobStatus.QUEUED: "QUEUED",
    JobStatus.BUILDING: "PENDING",  # its environment is being built: INITIALIZING
    JobStatus.RUNNING: "RUNNING",
    JobStatus.WAITING_FOR_QPU: "RUNNING",
    JobStatus.DONE: "SUCCEEDED",
    JobStatus.ERROR: "FAILED",
    JobStatus.CANCELLED: "STOPPED",
}

#: What a client's ``jobs(status=...)`` filter (in gateway words) means in qlayer's.
GATEWAY_TO_QLAYER = {
    "QUEUED": {JobStatus.QUEUED},
    "PENDING": {JobStatus.BUILDING},
    "RUNNING": {JobStatus.RUNNING, JobStatus.WAITING_FOR_QPU},
    "SUCCEEDED": {JobStatus.DONE},
    "FAILED": {JobStatus.ERROR},
    "STOPPED": {JobStatus.CANCELLED},
}


def gateway_status(status: JobStatus, stage: str | None) -> tuple[str, str | None]:
    """``(status, sub_status)`` in the gateway's words for a qlayer job."""
    word = _GATEWAY_STATUS[JobStatus(status)]
    if status == JobStatus.WAITING_FOR_QPU:
        return word, "WAITING_QPU"
    if word == "RUNNING" and stage in STAGE_SUB_STATUS:
        return word, STAGE_SUB_STATUS[stage]
    return word, None
