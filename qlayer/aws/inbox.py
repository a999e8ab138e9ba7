"""The S3 inbox: an upload to ``inbox/*.json`` starts a job; its outcome is written beside it.

The spec (see :class:`qlayer.aws.events.JobSpec`)::

    {"program": "programs/<id>/" | "<key of a .py in the bucket>",
     "arguments": {...}, "backend": "aer"}

Next to ``inbox/<name>.json`` appear ``<name>.json.job.json`` (the job id, when it
starts), then ``<name>.json.result.json`` (how it ended), or ``<name>.json.error.json``
for a malformed spec (which also gets a job in ERROR, visible to ``qlayer status``).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from qlayer import bounds, keys
from qlayer.aws.events import EventError, JobSpec, S3Event, parse
from qlayer.aws.orchestrator import start_execution
from qlayer.aws.services import Services
from qlayer.core import transitions
from qlayer.core.ports import NewJob
from qlayer.errors import ArtifactError, QlayerError
from qlayer.status import JobStatus

#: Key suffix of the error report written next to a malformed inbox spec.
SPEC_ERROR_SUFFIX = ".error.json"
#: Written next to a spec when its job starts, and when it ends.
SPEC_JOB_SUFFIX = ".job.json"
SPEC_RESULT_SUFFIX = ".result.json"
_OWN_REPORTS = (SPEC_ERROR_SUFFIX, SPEC_JOB_SUFFIX, SPEC_RESULT_SUFFIX)


def spec_job_id(bucket: str, key: str, record_id: str, event_time: str | None) -> str:
    """A job id derived from the upload, so a redelivered S3 event starts no second job."""
    stamp = time.gmtime()
    if event_time:
        try:
            stamp = datetime.fromisoformat(event_time.replace("Z", "+00:00")).utctimetuple()
        except ValueError:
            pass
    digest = hashlib.sha256(f"{bucket}/{key}/{record_id}".encode()).hexdigest()[:6]
    return time.strftime("%Y%m%d-%H%M%S", stamp) + "-" + digest


def trigger_from_s3(event: Mapping[str, Any], svc: Services) -> list[dict[str, Any]]:
    """An upload to ``inbox/*.json`` starts a job; a malformed spec gets ``<key>.error.json``."""
    parsed = parse(S3Event, event, what="S3 event")
    started = []
    for record in parsed.Records:
        key = urllib.parse.unquote_plus(record.s3.object.key)
        if key.endswith(_OWN_REPORTS):
            continue  # our own reports next to a spec
        obj = record.s3.object
        job_id = spec_job_id(
            record.s3.bucket.name,
            key,
            obj.sequencer or obj.versionId or obj.eTag or "",
            record.eventTime,
        )
        started.append(start_from_spec(svc, key, job_id))
    return started


def start_from_spec(svc: Services, key: str, job_id: str) -> dict[str, Any]:
    existing = svc.jobs.find(job_id)
    if existing is not None:  # a redelivered event: make sure it started, once
        if existing.status == JobStatus.QUEUED:
            start_execution(svc, job_id)
        return {"key": key, "job_id": job_id, "duplicate": True}
    try:
        raw = svc.store.get_bytes(key)
        bounds.check_size(len(raw), f"job spec {key}")  # from outside: bounded first
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventError(f"invalid job spec: {key} is not JSON ({exc})") from exc
        except RecursionError as exc:
            raise EventError(f"invalid job spec: {key} is nested too deeply") from exc
        spec = parse(JobSpec, body, what=f"job spec {key}")
        program_id = _spec_program(svc, spec)
        if spec.backend is not None:
            _check_backend_name(spec.backend)
    except QlayerError as exc:
        message = str(exc)
        # The job first, then the report: whoever sees the report finds the job.
        transitions.fail(svc.ports(), job_id, type(exc).__name__, message)
        svc.store.put_json(
            key + SPEC_ERROR_SUFFIX,
            {
                "spec_key": key,
                "job_id": job_id,
                "error_type": type(exc).__name__,
                "message": message,
                "expected": {
                    "program": "programs/<id>/ or the key of a .py in this bucket",
                    "arguments": {},
                    "backend": "aer",
                },
            },
        )
        return {"key": key, "job_id": job_id, "error": message}
    svc.store.put_json(
        keys.job_input(job_id),
        {
            "program_id": program_id,
            "workflow": None,
            "arguments": spec.arguments,
            "backend": spec.backend,
            "prepared": False,
            "spec_key": key,
        },
    )
    svc.jobs.create(
        NewJob(
            job_id,
            program_id=program_id,
            workflow="",
            arguments=spec.arguments,
            backend=spec.backend or "",
        )
    )
    arn = start_execution(svc, job_id)
    svc.store.put_json(
        key + SPEC_JOB_SUFFIX,
        {"job_id": job_id, "execution_arn": arn, "job_prefix": keys.job_prefix(job_id)},
    )
    return {"key": key, "job_id": job_id}


def report_to_spec(svc: Services, job_id: str) -> None:
    """If the job came from an inbox spec, write how it ended next to the spec.

    ``<spec>.result.json`` holds the status, the result's key and the result itself as
    stored (plain JSON for plain values; see :mod:`qlayer.codec` for tagged ones), or the
    error. Nothing is decoded, so this needs no qiskit.
    """
    try:
        spec_key = svc.store.get_json(keys.job_input(job_id)).get("spec_key")
    except ArtifactError:
        return
    if not spec_key:
        return
    record = svc.jobs.get(job_id)
    report: dict[str, Any] = {"job_id": job_id, "status": record.status.value}
    if record.status == JobStatus.DONE:
        report["result_key"] = keys.job_result(job_id)
        report["result"] = svc.store.get_json(keys.job_result(job_id))
    else:
        report["error_type"] = record.error_type
        report["message"] = record.message
    svc.store.put_json(spec_key + SPEC_RESULT_SUFFIX, report)


def _spec_program(svc: Services, spec: JobSpec) -> str:
    from qlayer.errors import ProgramError
    from qlayer.program import bundle, upload

    if spec.program_id is not None:
        if not svc.store.exists(keys.program_prefix(spec.program_id) + "manifest.json"):
            raise ProgramError(
                f"program {spec.program!r} is not uploaded (no manifest.json); upload it with "
                "Client.aws().run(...) or point 'program' at a .py key"
            )
        return spec.program_id
    try:
        source = svc.store.get_bytes(spec.program)
    except ArtifactError as exc:
        raise ProgramError(f"program {spec.program!r} does not exist in the bucket") from exc
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(spec.program).name
        path.write_bytes(source)
        program = bundle(path)
    return upload(svc.store, program)


_BACKEND_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}\Z")  # \Z: no "\n" after


def _check_backend_name(backend: str) -> None:
    """The name's shape only (this function runs without qiskit or the providers' plugins);
    the stage runner resolves it when it prepares the job, and an unknown name ends the
    job there with the list of known ones."""
    from qlayer.errors import BackendError

    if not _BACKEND_NAME.match(backend):
        raise BackendError(
            f"invalid backend name {backend!r}: letters, digits and '_.:/-' (e.g. aer, "
            "fake_brisbane, ibm_torino, a Braket device ARN)"
        )
