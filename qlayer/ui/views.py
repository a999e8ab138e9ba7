"""What the dashboard shows, read through the client protocol (:mod:`qlayer.client`).

Nothing here knows a substrate: every function takes a client or a job handle and calls
only the methods :class:`qlayer.client.QlayerClient` and :class:`qlayer.client.Job` name,
so the same pages serve ``qlayer ui`` and ``qlayer --target aws ui``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlayer.client import Job, QlayerClient
from qlayer.errors import QlayerError
from qlayer.status import JobStatus

#: Saved files shown inline as images, by suffix, with the type they are served as.
IMAGE_TYPES = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
#: Longest result or argument text a page shows (the rest: ``qlayer result``).
MAX_SHOWN = 20_000
#: Children listed on a job's page (the rest are counted).
MAX_CHILDREN = 50


@dataclass(frozen=True)
class Filters:
    """The jobs list's search box and filters (empty: no filter).

    Attributes:
        q: Words that must all appear in a job's id, workflow, backend, stage, status,
            message or arguments (case-insensitive).
        status: One :class:`~qlayer.status.JobStatus` value.
        workflow: A workflow's name, exactly.
        backend: A backend's name, exactly.
        limit: How many of the newest top-level jobs are searched.
    """

    q: str = ""
    status: str = ""
    workflow: str = ""
    backend: str = ""
    limit: int = 200

    def matches(self, info: dict[str, Any]) -> bool:
        """True if the job whose ``info()`` this is passes every filter."""
        if self.status and info.get("status") != self.status:
            return False
        if self.workflow and info.get("workflow") != self.workflow:
            return False
        if self.backend and info.get("backend") != self.backend:
            return False
        if self.q:
            text = " ".join(
                str(info.get(key) or "")
                for key in ("job_id", "workflow", "backend", "stage", "status", "message")
            )
            text = (text + " " + json.dumps(info.get("arguments"), default=str)).lower()
            return all(word in text for word in self.q.lower().split())
        return True


@dataclass
class JobList:
    """The jobs page: the jobs that passed, and the choices each filter offers."""

    jobs: list[dict[str, Any]]
    searched: int
    statuses: list[str] = field(default_factory=lambda: [s.value for s in JobStatus])
    workflows: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)


def list_jobs(client: QlayerClient, filters: Filters) -> JobList:
    """The newest top-level jobs that pass ``filters``, newest first.

    The status filter is handed to the client (it is indexed on both substrates); the
    others are applied to the ``filters.limit`` newest jobs of that status.

    Raises:
        QlayerError: ``filters.status`` is not a status.
    """
    if filters.status and filters.status not in {s.value for s in JobStatus}:
        raise QlayerError(
            f"unknown status {filters.status!r}; use one of {', '.join(s.value for s in JobStatus)}"
        )
    infos = [job.info() for job in client.jobs(limit=filters.limit, status=filters.status or None)]
    return JobList(
        jobs=[info for info in infos if filters.matches(info)],
        searched=len(infos),
        workflows=sorted({str(i["workflow"]) for i in infos if i.get("workflow")}),
        backends=sorted({str(i["backend"]) for i in infos if i.get("backend")}),
    )


def is_image(name: str) -> bool:
    """True for a saved file the page shows inline."""
    return Path(name).suffix.lower() in IMAGE_TYPES


def shown(value: Any) -> str:
    """A value as indented JSON for the page, cut at :data:`MAX_SHOWN` characters."""
    from qlayer.plain import plain

    try:
        text = json.dumps(plain(value), indent=2, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN] + f"\n… ({len(text) - MAX_SHOWN} more characters)"
    return text


def outcome(job: Job, info: dict[str, Any]) -> dict[str, Any]:
    """The result (DONE) or the error (ERROR) of a job, as text; empty while it runs."""
    status = info.get("status")
    if status == JobStatus.DONE.value:
        try:
            return {"result": shown(job.result(wait=False))}
        except QlayerError as exc:
            return {"error": f"the result could not be read: {exc}"}
    if status == JobStatus.ERROR.value:
        detail = job.error()
        reason = f"{info.get('error_type') or 'error'}: {info.get('message') or ''}"
        return {"error": reason, "error_detail": shown(detail) if detail else ""}
    return {}


def children_summary(job: Job, info: dict[str, Any]) -> dict[str, Any] | None:
    """Counts of the job's latest fan-out children by status, and the first few of them."""
    counts = info.get("children")
    if not counts:
        return None
    children: Sequence[Job] = job.children()
    by_status: dict[str, int] = {}
    listed = []
    for index, child in enumerate(children):
        status = child.status().value
        by_status[status] = by_status.get(status, 0) + 1
        if index < MAX_CHILDREN:
            listed.append({"job_id": child.job_id, "status": status, "index": index})
    return {
        "done": counts.get("done", 0),
        "total": counts.get("total", len(children)),
        "by_status": dict(sorted(by_status.items())),
        "listed": listed,
        "more": max(len(children) - MAX_CHILDREN, 0),
    }


def file_bytes(job: Job, name: str) -> bytes:
    """A saved file's bytes, through :meth:`~qlayer.client.Job.download` (any substrate).

    Raises:
        FileNameError: ``name`` is not a name a job can save.
        ArtifactError: The job saved no file of that name.
    """
    with tempfile.TemporaryDirectory(prefix="qlayer-ui-") as folder:
        target = job.download(name, Path(folder) / "file")
        return target.read_bytes()
