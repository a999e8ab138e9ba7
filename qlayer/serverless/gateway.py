"""The Qiskit Serverless gateway's routes, as plain functions over qlayer's ports.

Nothing here knows HTTP frameworks: each method takes the request's already-bounded
fields and returns the JSON body the client 0.37 expects, or raises
:class:`~qlayer.serverless.errors.GatewayError` (a 4xx with a message). The local server
(:mod:`qlayer.serverless.app`) and an AWS Lambda resolver both call them.

Two kinds of caller hold tokens:

* **the user**: the server's token (``$QLAYER_HOME/token`` locally); every route.
* **a running function**: its job's token (``ENV_JOB_GATEWAY_TOKEN`` in its process),
  derived from the user's token and the job id where the function starts
  (:mod:`qlayer.serverless.tokens`), never stored; it only reaches that job's in-job
  routes: sub-status, error events and runtime-job registration (and reading them back).

A function's job is an ordinary qlayer job of the program its upload became
(:mod:`qlayer.serverless.functions`); its arguments hold the client's arguments as the
library encoded them (opaque JSON text, decoded only inside the job by the library), the
function's name, where the gateway is and where the job's stage reads the secret its
token is derived from (``token_source``: a path, not the secret).
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlayer import keys
from qlayer.client import QlayerClient
from qlayer.core.ports import Event, JobRecord, JobStore
from qlayer.envs.base import Base
from qlayer.errors import ArtifactError, JobNotFound, QlayerError, RequirementError
from qlayer.serverless import functions as fn
from qlayer.serverless import tokens
from qlayer.serverless.errors import GatewayError
from qlayer.serverless.vocabulary import (
    GATEWAY_TO_QLAYER,
    SUB_STATUS_STAGE,
    gateway_status,
)
from qlayer.status import JobStatus
from qlayer.store.base import ArtifactStore

#: The largest arguments text a run accepts.
MAX_ARGUMENTS_BYTES = 16 * 1024 * 1024
#: The largest user file accepted.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: The most error events or runtime jobs one job may record.
MAX_RECORDS_PER_JOB = 10000


def events_key(job_id: str) -> str:
    return keys.job_prefix(job_id) + "serverless/events.jsonl"


def runtime_jobs_key(job_id: str) -> str:
    return keys.job_prefix(job_id) + "serverless/runtime_jobs.jsonl"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the user, or the function running as job ``job_id``."""

    kind: str  # "user" | "job"
    job_id: str | None = None


def _iso(stamp: float | None) -> str | None:
    if not stamp:
        return None
    return dt.datetime.fromtimestamp(stamp, tz=dt.UTC).isoformat()


def _read_lines(store: ArtifactStore, key: str) -> list[dict[str, Any]]:
    try:
        text = store.get_text(key)
    except ArtifactError:
        return []
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


class Gateway:
    """The routes over one substrate.

    Args:
        client: Submits and reads jobs (any substrate's client).
        jobs: The substrate's job store (sub-status, provider job ids, listings).
        store: The substrate's artifact store (functions, files, events).
        secret: The user's token; job tokens are derived from it.
        public_url: Where a running function reaches this gateway
            (``ENV_JOB_GATEWAY_HOST``), e.g. ``http://127.0.0.1:8000``.
        overlay: A folder holding the ``qiskit_serverless`` library for the job's process
            (:mod:`qlayer.serverless.overlay`), or None if the job's Python has it.
        token_source: Where a job's stage reads ``secret`` to derive the job's token
            (:func:`qlayer.serverless.tokens.read_secret`; ``{"file": PATH}`` locally), or
            None where stages may not read the secret (AWS: the role that runs user code
            has no access to it): then the job's id is made here, its token derived
            from it and handed to the job as ``{"token": ...}`` — a token that reaches
            that job's in-job routes only, never the secret.
        base: What the substrate's stages run on, to resolve functions' dependencies
            against (default: this interpreter, :meth:`qlayer.envs.Base.current`).
        dependencies: Whether functions may declare dependencies here (False on AWS for
            now: its gateway function has no resolver; uploads with some get a 400).
    """

    def __init__(
        self,
        client: QlayerClient,
        jobs: JobStore,
        store: ArtifactStore,
        *,
        secret: str,
        public_url: str,
        overlay: str | None = None,
        token_source: Mapping[str, str] | None = None,
        base: Base | None = None,
        dependencies: bool = True,
    ) -> None:
        if len(secret) < 16:
            raise QlayerError("the gateway's token must have at least 16 characters")
        self.client = client
        self.jobs = jobs
        self.store = store
        self.secret = secret
        self.public_url = public_url.rstrip("/")
        self.overlay = overlay
        self.token_source = dict(token_source) if token_source else None
        self.base = base
        self.dependencies = dependencies

    # -- tokens ------------------------------------------------------------------------
    def job_token(self, job_id: str) -> str:
        """The token of job ``job_id`` (what its stage derives; for tests and tools)."""
        return tokens.job_token(self.secret, job_id)

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization: Bearer ...`` header names (401 otherwise)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 512:
            raise GatewayError(401, "send 'Authorization: Bearer <token>' (qlayer serve prints it)")
        if hmac.compare_digest(token.encode(), self.secret.encode()):
            return Caller("user")
        job_id = tokens.job_of(self.secret, token)
        if job_id is not None:
            return Caller("job", job_id)
        raise GatewayError(401, "invalid token")

    @staticmethod
    def require_user(caller: Caller) -> None:
        if caller.kind != "user":
            raise GatewayError(403, "a job's token reaches only its own in-job routes")

    def _job_for(self, caller: Caller, job_id: str) -> JobRecord:
        record = self._function_job(job_id)
        if caller.kind == "job" and not hmac.compare_digest(
            str(caller.job_id).encode(), record.job_id.encode()
        ):
            raise GatewayError(403, "this token belongs to another job")
        return record

    def _function_job(self, job_id: str) -> JobRecord:
        if not isinstance(job_id, str) or not job_id or len(job_id) > 128:
            raise GatewayError(404, "job not found")
        try:
            keys.check_name(job_id, "job id")
            record = self.jobs.get(job_id)
        except (ValueError, JobNotFound):
            raise GatewayError(404, f"job {job_id[:80]!r} not found") from None
        if not isinstance(record.arguments.get("serverless"), Mapping):
            raise GatewayError(404, f"job {job_id!r} is not a Qiskit Serverless job")
        return record

    # -- programs ----------------------------------------------------------------------
    def upload(self, form: Mapping[str, Any], artifact: bytes | None) -> dict[str, Any]:
        """``POST programs/upload/``: store a function (replacing one of the same name)."""
        title, provider = fn.split_title(form.get("title"), form.get("provider"))
        if form.get("image"):
            raise GatewayError(
                400,
                "functions from container images are not supported by qlayer; upload the "
                "function's files with an entrypoint (a Runner class works as entrypoint)",
            )
        if artifact is None:
            raise GatewayError(400, "upload the function's working_dir as 'artifact'")
        entrypoint = fn.check_entrypoint(form.get("entrypoint"))
        schema = form.get("arguments_schema")
        record = fn.FunctionRecord(
            title=title,
            provider=provider,
            entrypoint=entrypoint,
            program_id="",
            dependencies=fn.check_dependencies(
                fn.parse_json_field(form.get("dependencies"), "dependencies", [], list)
            ),
            env_vars=fn.check_env_vars(
                fn.parse_json_field(form.get("env_vars"), "env_vars", {}, dict)
            ),
            description=_text(form.get("description"), "description", 10000),
            version=_text(form.get("version"), "version", 100),
            type=_text(form.get("type"), "type", 20) or "GENERIC",
            arguments_schema=fn.parse_json_field(schema, "arguments_schema", None, object)
            if schema
            else None,
            created=fn.now(),
        )
        files = fn.read_artifact(artifact)
        self._resolve(record.dependencies)
        record.program_id = fn.make_program(self.store, record, files)
        fn.save(self.store, record)
        return record.public()

    def _resolve(self, dependencies: list[str]) -> None:
        """Resolve a function's dependencies now (once per set: the lock is kept, and its
        jobs read it), so that one the index lacks or that clashes with the base (another
        qiskit) is refused at upload, with the reason."""
        if not dependencies:
            return
        if not self.dependencies:
            raise GatewayError(
                400,
                "functions with dependencies run on qlayer serve only for now; on the AWS "
                "stack, give a qlayer program its requirements instead (docs/deploy.md, "
                "section 5)",
            )
        from qlayer.envs import lock_for

        try:
            lock_for(self.store, dependencies, self.base)
        except RequirementError as exc:
            raise GatewayError(400, f"dependencies refused: {exc}") from exc

    def functions(self, provider: str | None = None) -> list[dict[str, Any]]:
        """``GET programs``: every function (of one provider if named)."""
        records = fn.all_records(self.store)
        if provider:
            records = [r for r in records if r.provider == provider]
        return [r.public() for r in records]

    def function(self, title: str, provider: str | None) -> dict[str, Any]:
        """``GET programs/get_by_title/<title>``."""
        name, owner = fn.split_title(title, provider)
        return fn.load(self.store, name, owner).public()

    def validate_arguments(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST programs/validate_arguments/``: the arguments are a JSON object."""
        title, provider = fn.split_title(body.get("title"), body.get("provider"))
        fn.load(self.store, title, provider)
        _arguments_object(body.get("arguments"))
        return {"valid": True}

    def run(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST programs/run/``: start a job of a function; the new job as JSON."""
        title, provider = fn.split_title(body.get("title"), body.get("provider"))
        record = fn.load(self.store, title, provider)
        text = _arguments_object(body.get("arguments"))
        job_id = keys.new_job_id()
        source = self.token_source or {"token": self.job_token(job_id)}
        arguments = {
            "serverless": {"title": title, "provider": provider},
            "arguments": text,
            "gateway": self.public_url,
            "overlay": self.overlay,
            "token_source": source,
        }
        with tempfile.TemporaryDirectory(prefix="qlayer-run-") as scratch:
            folder = self._program_folder(record.program_id, Path(scratch))
            try:
                job = self.client.run(folder, arguments, job_id=job_id)
            except QlayerError as exc:
                raise GatewayError(400, f"the function could not start: {exc}") from exc
        return self._job_json(self.jobs.get(job.job_id), with_result=False)

    def _program_folder(self, program_id: str, scratch: Path) -> Path:
        prefix = keys.program_prefix(program_id)
        root = getattr(self.store, "root", None)
        if root is not None:
            return Path(root) / prefix / "src"
        manifest = self.store.get_json(prefix + "manifest.json")
        for name in manifest["files"]:
            target = scratch / keys.check_relative_path(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.store.get_bytes(prefix + "src/" + name))
        return scratch

    # -- jobs --------------------------------------------------------------------------
    def _job_json(self, record: JobRecord, *, with_result: bool) -> dict[str, Any]:
        status, sub_status = gateway_status(record.status, record.stage)
        named = record.arguments.get("serverless") or {}
        title, provider = named.get("title"), named.get("provider")
        out: dict[str, Any] = {
            "id": record.job_id,
            "status": status,
            "sub_status": sub_status,
            "program": {
                "id": f"{fn.provider_segment(provider)}/{title}",
                "title": title,
                "provider": provider,
            },
            "created": _iso(record.created_at),
        }
        if with_result:
            out["result"] = self._result_text(record)
        return out

    def jobs_list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET jobs/``: the user's function jobs, newest first, paginated."""
        limit = _int(params.get("limit"), 10, "limit", 0, 1000)
        offset = _int(params.get("offset"), 0, "offset", 0, 100000)
        wanted = params.get("status")
        statuses = GATEWAY_TO_QLAYER.get(str(wanted)) if wanted else None
        if wanted and statuses is None:
            raise GatewayError(400, f"unknown status {str(wanted)[:40]!r}")
        title, provider = params.get("function"), params.get("provider") or None
        found = []
        for record in self.jobs.list_jobs(limit=10000):
            named = record.arguments.get("serverless")
            if not isinstance(named, Mapping):
                continue
            if title and (named.get("title"), named.get("provider")) != (title, provider):
                continue
            if statuses is not None and record.status not in statuses:
                continue
            found.append(record)
        page = found[offset : offset + limit]
        return {
            "count": len(found),
            "next": None,
            "previous": None,
            "results": [self._job_json(r, with_result=False) for r in page],
        }

    def job(
        self, job_id: str, *, with_result: bool = False, caller: Caller | None = None
    ) -> dict[str, Any]:
        """``GET jobs/<id>/`` (the user, or the job itself without its result)."""
        if caller is not None and caller.kind == "job":
            record = self._job_for(caller, job_id)
            # the job winds down on this: was it cancelled (or is it being cancelled)?
            return {
                **self._job_json(record, with_result=False),
                "cancel_requested": record.cancel_requested,
            }
        return self._job_json(self._function_job(job_id), with_result=with_result)

    def _result_text(self, record: JobRecord) -> str | None:
        if record.status == JobStatus.DONE:
            try:
                value = self.store.get_value(keys.job_result(record.job_id))
            except ArtifactError:
                return None
            return value if isinstance(value, str) or value is None else json.dumps(value)
        if record.status == JobStatus.ERROR:
            return json.dumps(f"{record.error_type or 'Error'}: {record.message or ''}")
        return None

    def result(self, job_id: str) -> dict[str, Any]:
        """``GET jobs/<id>/result/``: ``{"result": <JSON text or null>}``."""
        return {"result": self._result_text(self._function_job(job_id))}

    def _all_logs(self, job_id: str) -> str:
        self._function_job(job_id)
        return self.client.job(job_id).logs()

    def logs(self, job_id: str) -> dict[str, Any]:
        """``GET jobs/<id>/logs/``: everything but the provider's private lines."""
        lines = self._all_logs(job_id).splitlines()
        return {"logs": "\n".join(line for line in lines if "[PRIVATE]" not in line)}

    def provider_logs(self, job_id: str) -> dict[str, Any]:
        """``GET jobs/<id>/provider-logs/``: every line."""
        return {"logs": self._all_logs(job_id)}

    def stop(self, job_id: str) -> dict[str, Any]:
        """``POST jobs/<id>/stop/``: cancel the job, its process and its provider jobs."""
        self._function_job(job_id)
        stopped = self.client.job(job_id).cancel()
        return {"message": "Job has been stopped." if stopped else "Job already finished."}

    # -- what a running function sends -------------------------------------------------
    def set_sub_status(self, caller: Caller, job_id: str, sub_status: Any) -> dict[str, Any]:
        """``PATCH jobs/<id>/sub_status/``: the job's stage becomes the sub-status."""
        record = self._job_for(caller, job_id)
        stage = SUB_STATUS_STAGE.get(str(sub_status))
        if stage is None:
            raise GatewayError(400, f"'sub_status' must be one of {', '.join(SUB_STATUS_STAGE)}")
        if record.status not in (JobStatus.RUNNING, JobStatus.WAITING_FOR_QPU):
            raise GatewayError(403, "Cannot update 'sub_status' when job is not RUNNING.")
        event = Event(record.seq, stage, "sub-status", {"sub_status": str(sub_status)})
        if not self.jobs.update(job_id, stage=stage, event=event):
            raise GatewayError(403, "Cannot update 'sub_status' when job is not RUNNING.")
        return {"job": self._job_json(self.jobs.get(job_id), with_result=False)}

    def add_event(self, caller: Caller, job_id: str, body: Mapping[str, Any]) -> None:
        """``POST jobs/<id>/event/``: an error event (``send_error``)."""
        record = self._job_for(caller, job_id)
        if str(body.get("type", "")).upper() != "ERROR":
            raise GatewayError(400, "Type is not valid. Valid types: ['ERROR']")
        data: dict[str, Any] = {}
        for name in ("code", "message", "exception"):
            value = body.get(name)
            if value is None or isinstance(value, (dict, list)):
                raise GatewayError(400, f"'{name}' is required (a string)")
            data[name] = str(value)[:20000]
        if body.get("args") is not None:
            data["args"] = body["args"]
        if len(_read_lines(self.store, events_key(job_id))) >= MAX_RECORDS_PER_JOB:
            raise GatewayError(409, "this job has recorded too many events")
        event = {
            "event_type": "ERROR",
            "origin": "API",
            "context": "SEND_ERROR",
            "created": _iso(fn.now()),
            "data": data,
        }
        self.store.append_text(events_key(job_id), json.dumps(event) + "\n")
        self.jobs.add_event(job_id, Event(record.seq, record.stage, "error event", data))

    def events(self, caller: Caller, job_id: str, event_type: str | None) -> list[Any]:
        """``GET jobs/<id>/events/``: the job's events (``type=ERROR`` filters)."""
        self._job_for(caller, job_id)
        if event_type and event_type.upper() != "ERROR":
            raise GatewayError(400, "Type is not valid. Valid types: ['ERROR']")
        return _read_lines(self.store, events_key(job_id))

    def add_runtime_job(
        self, caller: Caller, job_id: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``POST jobs/<id>/runtime_jobs/``: an IBM Runtime job this function started."""
        record = self._job_for(caller, job_id)
        runtime_job = body.get("runtime_job")
        session = body.get("runtime_session")
        if not isinstance(runtime_job, str) or not runtime_job or len(runtime_job) > 200:
            raise GatewayError(400, "Got empty `runtime_job` field. Please, specify `runtime_job`.")
        if session is not None and (not isinstance(session, str) or len(session) > 200):
            raise GatewayError(400, "'runtime_session' must be a string")
        known = _read_lines(self.store, runtime_jobs_key(job_id))
        if any(entry.get("runtime_job") == runtime_job for entry in known):
            return {"message": "Runtime job already associated."}
        if len(known) >= MAX_RECORDS_PER_JOB:
            raise GatewayError(409, "this job has recorded too many runtime jobs")
        entry = {"runtime_job": runtime_job, "runtime_session": session or None}
        self.store.append_text(runtime_jobs_key(job_id), json.dumps(entry) + "\n")
        event = Event(record.seq, record.stage, "submitted", {"provider_job_id": runtime_job})
        if not self.jobs.update(job_id, provider_job_id=runtime_job, event=event):
            self.jobs.add_event(job_id, event)
        return {"message": "Runtime job associated."}

    def runtime_jobs(self, caller: Caller, job_id: str) -> dict[str, Any]:
        """``GET jobs/<id>/runtime_jobs/``."""
        self._job_for(caller, job_id)
        return {"runtime_jobs": _read_lines(self.store, runtime_jobs_key(job_id))}

    # -- files -------------------------------------------------------------------------
    def _files_of(self, params: Mapping[str, Any], private: bool) -> str:
        title, provider = fn.split_title(params.get("function"), params.get("provider"))
        if private and not provider:
            raise GatewayError(400, "`function` doesn't have a provider.")
        fn.load(self.store, title, provider)
        return fn.files_prefix(title, provider, private=private)

    def files(self, params: Mapping[str, Any], *, private: bool = False) -> dict[str, Any]:
        """``GET files/``: the names of the function's files."""
        prefix = self._files_of(params, private)
        return {"results": [key[len(prefix) :] for key in self.store.list(prefix)]}

    def file_upload(
        self, params: Mapping[str, Any], name: Any, data: bytes, *, private: bool = False
    ) -> str:
        """``POST files/upload/``: keep one file for the function (replacing one so named)."""
        prefix = self._files_of(params, private)
        name = fn.check_file_name(os.path.basename(str(name or "")))
        if len(data) > MAX_FILE_BYTES:
            raise GatewayError(413, f"a file may hold at most {MAX_FILE_BYTES // 2**20} MiB")
        self.store.put_bytes(prefix + name, data)
        return json.dumps({"message": f"{name} uploaded"})

    def file_download(
        self, params: Mapping[str, Any], *, private: bool = False
    ) -> tuple[str, bytes]:
        """``GET files/download/``: ``(name, bytes)`` of one file."""
        prefix = self._files_of(params, private)
        name = fn.check_file_name(params.get("file"))
        try:
            return name, self.store.get_bytes(prefix + name)
        except ArtifactError:
            raise GatewayError(404, f"file {name!r} not found") from None

    def file_delete(self, params: Mapping[str, Any], *, private: bool = False) -> dict[str, Any]:
        """``DELETE files/delete/``."""
        prefix = self._files_of(params, private)
        name = fn.check_file_name(params.get("file"))
        if not self.store.exists(prefix + name):
            raise GatewayError(404, f"file {name!r} not found")
        self.store.delete(prefix + name)
        return {"message": "Requested file was deleted."}


def _text(value: Any, what: str, limit: int) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise GatewayError(400, f"'{what}' must be text of at most {limit} characters")
    return value


def _int(value: Any, default: int, what: str, low: int, high: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise GatewayError(400, f"'{what}' must be an integer") from None
    if not low <= number <= high:
        raise GatewayError(400, f"'{what}' must be between {low} and {high}")
    return number


def _arguments_object(value: Any) -> str:
    """The run's ``arguments``: JSON text of an object (kept as text: only the library,
    inside the job, decodes its Qiskit types)."""
    if value in (None, ""):
        return "{}"
    if not isinstance(value, str):
        raise GatewayError(400, "'arguments' must be JSON text (the client encodes it)")
    if len(value.encode()) > MAX_ARGUMENTS_BYTES:
        raise GatewayError(413, f"arguments are larger than {MAX_ARGUMENTS_BYTES // 2**20} MiB")
    try:
        parsed = json.loads(value)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise GatewayError(400, f"'arguments' is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise GatewayError(400, "'arguments' must be a JSON object")
    return value
