"""What a job handle does on every substrate, over the artifact store and a status record.

:class:`BaseJob` holds everything that reads artifacts (result, logs, files, usage) and the
wait loop. A substrate's job class says how to fetch the status record, the timeline and
the children, and how to cancel.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlayer import keys
from qlayer.errors import ArtifactError, FileNameError, JobCancelled, JobFailed
from qlayer.status import JobStatus
from qlayer.store.base import ArtifactStore

if TYPE_CHECKING:
    from qlayer.core.ports import JobRecord, JobStore

ProgressCallback = Callable[[dict[str, Any]], None]


class BaseJob(ABC):
    """A handle on one job. Rebuild it from its id alone with ``client.job(job_id)``."""

    #: First and longest pause between status reads while waiting.
    poll_start_s = 0.005
    poll_max_s = 0.2

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.job_id}>"

    # -- what a substrate provides -------------------------------------------------------
    @property
    @abstractmethod
    def store(self) -> ArtifactStore:
        """The artifact store the job's artifacts live in."""

    @property
    @abstractmethod
    def _jobstore(self) -> JobStore:
        """The job store the job's record lives in."""

    @abstractmethod
    def _fetch(self) -> JobRecord:
        """Read the job's status record now."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """The job's status record as JSON (what ``qlayer status --json`` prints)."""

    @abstractmethod
    def timeline(self) -> list[dict[str, Any]]:
        """Stage events in order: submitted, started, finished, errors, provider jobs."""

    @abstractmethod
    def children(self) -> Sequence[BaseJob]:
        """Fan-out children, in item order."""

    @abstractmethod
    def cancel(self) -> bool:
        """Cancel the job, its children and its provider jobs. False if it had ended."""

    def _progress_key(self, row: Any) -> tuple[Any, ...]:
        """What, when it changes, is worth reporting to a progress callback."""
        return (row.status, row.stage, row.seq)

    def _keep_alive(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Called every few seconds while waiting (the local client restarts a dead daemon)."""

    # -- shared behaviour ----------------------------------------------------------------
    @staticmethod
    def _status_json(row: JobRecord) -> dict[str, Any]:
        """The fields every substrate's status record has, as ``info()`` shows them."""
        from qlayer.core.transitions import status_json

        info = status_json(row)
        if row.children_total:
            info["children"] = {"total": row.children_total, "done": row.children_done}
        if row.parent_id:
            info["parent_id"] = row.parent_id
            info["item_index"] = row.item_index
        if row.env:
            info["env"] = row.env  # its program environment (qlayer.envs)
        return info

    def status(self) -> JobStatus:
        """The job's status, one of :class:`JobStatus`."""
        return self._fetch().status

    def result(
        self,
        wait: bool = True,
        timeout: float | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """The job's final result.

        Args:
            wait: Block until the job ends (else raise if it has not).
            timeout: Give up after this many seconds (TimeoutError).
            progress: Called with :meth:`info` whenever the stage changes.

        Raises:
            JobFailed: The job ended in ERROR; the message is the recorded reason.
            JobCancelled: The job was cancelled.
            TimeoutError: ``timeout`` passed first.
        """
        row = self.wait(timeout=timeout, progress=progress) if wait else self._fetch()
        if row.status == JobStatus.DONE:
            return self.store.get_value(keys.job_result(self.job_id))
        if row.status == JobStatus.ERROR:
            reason = f"{row.error_type}: {row.message}" if row.error_type else str(row.message)
            raise JobFailed(self.job_id, reason)
        if row.status == JobStatus.CANCELLED:
            raise JobCancelled(f"job {self.job_id} was cancelled")
        raise RuntimeError(
            f"job {self.job_id} has not finished (status {row.status.value}); use wait=True"
        )

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: ProgressCallback | None = None,
        poll_s: float | None = None,
        max_poll_s: float | None = None,
    ) -> Any:
        """Block until the job ends; returns its final status record.

        Args:
            timeout: Give up after this many seconds (TimeoutError).
            progress: Called with :meth:`info` whenever the stage changes.
            poll_s: First pause between status reads (default: the substrate's).
            max_poll_s: Longest pause between status reads (default: the substrate's).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_s if poll_s is not None else self.poll_start_s
        longest = max_poll_s if max_poll_s is not None else self.poll_max_s
        last_seen: tuple[Any, ...] | None = None
        last_check = time.monotonic()
        while True:
            row = self._fetch()
            seen = self._progress_key(row)
            if progress is not None and seen != last_seen:
                progress(self.info())
            last_seen = seen
            if row.status.is_final:
                return row
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"job {self.job_id} still {row.status.value} after {timeout} s")
            if now - last_check > 2.0:
                self._keep_alive()
                last_check = now
            time.sleep(delay if deadline is None else min(delay, max(0.0, deadline - now)))
            delay = min(delay * 1.5, longest)

    def logs(self, *, children: bool = False) -> str:
        """Everything the stages logged (tracebacks included), in step order.

        Args:
            children: Also include the logs of fan-out children, after the job's own.
        """
        parts = []
        for key in self.store.list(keys.logs_prefix(self.job_id)):
            name = key.rsplit("/", 1)[-1].removesuffix(".log")
            seq, _, stage = name.partition("-")
            parts.append(f"── step {int(seq)}: {stage} ──\n{self.store.get_text(key)}")
        text = "\n".join(parts)
        if children:
            for child in self.children():
                text += f"\n══ child {child.job_id} ══\n" + child.logs(children=True)
        return text

    def usage(self) -> dict[str, Any]:
        """Shots, QPU / simulator / stage seconds and dollars, children included."""
        from qlayer import usage

        return usage.of_job(self._jobstore, self.store, self.job_id)

    def files(self) -> list[str]:
        """Names of the files and plots the stages saved."""
        prefix = keys.files_prefix(self.job_id)
        return [key[len(prefix) :] for key in self.store.list(prefix)]

    def download(self, name: str, destination: str | os.PathLike[str] | None = None) -> Path:
        """Copy a saved file to ``destination`` (default: the current folder).

        Raises:
            FileNameError: ``name`` is not a name a job can save (see
                :func:`qlayer.keys.check_relative_path`).
            ArtifactError: The job saved no file of that name, or ``destination``
                cannot be written.
        """
        hint = f"`qlayer files {self.job_id}` lists the files it saved"
        try:
            key = keys.file_key(self.job_id, name)
        except FileNameError as exc:
            raise FileNameError(f"{exc}; {hint}") from exc
        if not self.store.exists(key):
            saved = self.files()
            raise ArtifactError(
                f"job {self.job_id} saved no file named {name!r}; "
                + (
                    f"it saved {len(saved)}: {', '.join(saved[:10])}"
                    + (", ..." if len(saved) > 10 else "")
                    if saved
                    else "it saved no files"
                )
            )
        data = self.store.get_bytes(key)
        target = Path(destination) if destination else Path(Path(name).name)
        if target.is_dir():
            target = target / Path(name).name
        try:
            target.write_bytes(data)
        except OSError as exc:
            raise ArtifactError(f"cannot write {target}: {exc.strerror or exc}") from exc
        return target

    def error(self) -> dict[str, Any] | None:
        """``jobs/<id>/error.json``: why the job failed, or None."""
        key = keys.job_error(self.job_id)
        return self.store.get_json(key) if self.store.exists(key) else None
