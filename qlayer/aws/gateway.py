"""The Qiskit Serverless gateway behind API Gateway: a Powertools resolver over the routes.

``functions/gateway/app.py`` resolves each API Gateway (REST, Lambda proxy) event with
:data:`app`. Every route does the same three things: check the bearer token, bound and
parse the request (JSON, forms, ``multipart/form-data``, query strings), and call one method of
the shared routes (:class:`qlayer.serverless.gateway.Gateway`) over the stack's stores,
the AWS client and the token from Secrets Manager (:func:`qlayer.aws.secrets.gateway_token`).
A :class:`~qlayer.serverless.errors.GatewayError` becomes its 4xx with
``{"message": ...}``; anything else is a 500 whose detail goes to the function's log,
never to the caller. Nothing here logs a header or a body.

Where a running function calls back (sub-status, error events, runtime jobs), the URL
it is given is this API's own: ``<X-Forwarded-Proto>://<Host>/<stage>``, as API
Gateway forwards them.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import json
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types

from qlayer.serverless.errors import GatewayError

log = logging.getLogger("qlayer.aws.gateway")

#: The largest request body decoded (Lambda takes at most 6 MB per synchronous event,
#: base64 included: an upload's tar is smaller still).
MAX_BODY_BYTES = 4 * 1024 * 1024
#: The most parts a multipart/form-data body may have (an upload has about a dozen).
MAX_FORM_PARTS = 64
#: The most characters a form field (not a file) may hold.
MAX_FIELD_CHARS = 1024 * 1024
#: The most query-string characters read.
MAX_QUERY_CHARS = 8192

app = APIGatewayRestResolver()


@dataclass
class Form:
    """A ``multipart/form-data`` body: its text fields, and its files as (name, bytes)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)


def body_bytes(event: Mapping[str, Any]) -> bytes:
    """The request body, bounded before it is decoded (413 past :data:`MAX_BODY_BYTES`).

    Raises:
        GatewayError: 413 for a body too large, 400 for base64 that does not decode.
    """
    raw = event.get("body")
    if raw is None:
        return b""
    if not isinstance(raw, str):
        raise GatewayError(400, "the request body is not text or base64")
    encoded = bool(event.get("isBase64Encoded"))
    if len(raw) > (MAX_BODY_BYTES * 4 // 3 + 4 if encoded else MAX_BODY_BYTES):
        raise GatewayError(413, f"request bodies hold at most {MAX_BODY_BYTES // 2**20} MiB")
    if not encoded:
        return raw.encode()
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(400, "the request body is not valid base64") from None


def json_body(data: bytes, content_type: str | None = None) -> dict[str, Any]:
    """A JSON object body, or a form's text fields (the library sends ``sub_status`` as
    ``application/x-www-form-urlencoded``); 400 for anything else."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return dict(form_body(content_type, data).fields)
    if media == "application/x-www-form-urlencoded":
        try:
            pairs = urllib.parse.parse_qsl(
                data.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_PARTS
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise GatewayError(400, f"the form body is malformed: {exc}") from None
        return dict(pairs)
    try:
        value = json.loads(data or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise GatewayError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise GatewayError(400, "the body must be a JSON object")
    return value


def form_body(content_type: str | None, data: bytes) -> Form:
    """A ``multipart/form-data`` body's fields and files (400 when malformed).

    Raises:
        GatewayError: Not multipart/form-data, no boundary, too many parts, a field too
            long or not UTF-8, or a part without a name.
    """
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "multipart/form-data" or "boundary=" not in (content_type or ""):
        raise GatewayError(400, "send the upload as multipart/form-data")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + data)
    if not message.is_multipart():
        raise GatewayError(400, "the multipart/form-data body has no parts")
    parts = list(message.iter_parts())  # type: ignore[attr-defined]
    if len(parts) > MAX_FORM_PARTS:
        raise GatewayError(400, f"a form holds at most {MAX_FORM_PARTS} parts")
    form = Form()
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise GatewayError(400, "every form part needs a name")
        payload = part.get_payload(decode=True) or b""
        if not isinstance(payload, bytes):  # a nested multipart: no form sends one
            raise GatewayError(400, f"form part {name[:40]!r} is not a plain value or file")
        filename = part.get_filename()
        if filename is not None:
            form.files[name] = (str(filename), payload)
            continue
        if len(payload) > MAX_FIELD_CHARS:
            raise GatewayError(400, f"form field {name[:40]!r} is too long")
        try:
            form.fields[name] = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise GatewayError(400, f"form field {name[:40]!r} is not UTF-8 text") from None
    return form


def query(event: Mapping[str, Any]) -> dict[str, str]:
    """The query string's parameters (the last of repeated ones), bounded."""
    params = event.get("queryStringParameters") or {}
    if sum(len(str(k)) + len(str(v)) for k, v in params.items()) > MAX_QUERY_CHARS:
        raise GatewayError(414, "the query string is too long")
    return {str(k): str(v) for k, v in params.items()}


def public_url(event: Mapping[str, Any]) -> str:
    """This API's URL as the caller reached it: where a running function calls back."""
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    context = event.get("requestContext") or {}
    host = headers.get("host") or str(context.get("domainName") or "")
    proto = headers.get("x-forwarded-proto", "https").split(",")[0].strip() or "https"
    stage = str(context.get("stage") or "")
    base = f"{proto}://{host}"
    return f"{base}/{stage}" if stage and stage != "$default" else base


# -- the routes' shared parts --------------------------------------------------------------
def _gateway() -> Any:
    """The shared routes over this stack, with the current token and this API's URL."""
    from qlayer.aws.client import AwsClient
    from qlayer.aws.secrets import gateway_token
    from qlayer.aws.services import services
    from qlayer.serverless.gateway import Gateway

    svc = services()
    token = gateway_token(svc.config.require("gateway_token_secret_arn")).decode()
    return Gateway(
        AwsClient(services=svc),
        svc.jobs,
        svc.store,
        secret=token,
        public_url=public_url(app.current_event.raw_event),
    )


def _caller(gateway: Any, *, user: bool = True) -> Any:
    caller = gateway.authenticate(app.current_event.headers.get("authorization"))
    if user:
        gateway.require_user(caller)
    return caller


def _body() -> bytes:
    return body_bytes(app.current_event.raw_event)


def _fields(data: bytes) -> dict[str, Any]:
    return json_body(data, app.current_event.headers.get("content-type"))


def _query() -> dict[str, str]:
    return query(app.current_event.raw_event)


def _user() -> Any:
    gateway = _gateway()
    _caller(gateway)
    return gateway


def _text_json(text: str, status: int = 200) -> Response[str]:
    return Response(status, content_types.APPLICATION_JSON, text)


@app.exception_handler(GatewayError)
def _refused(exc: GatewayError) -> Response[str]:
    return _text_json(json.dumps(exc.body()), exc.status)


@app.exception_handler(Exception)
def _failed(exc: Exception) -> Response[str]:
    log.error("gateway route failed: %s", type(exc).__name__, exc_info=exc)
    return _text_json(
        json.dumps({"message": "internal error; see the gateway function's log"}), 500
    )


@app.not_found
def _no_route(exc: Exception) -> Response[str]:
    return _text_json(json.dumps({"message": "no such route"}), 404)


# -- programs -------------------------------------------------------------------------------
@app.get("/api/v1/programs")
def list_programs() -> Any:
    return _user().functions(_query().get("provider") or None)


@app.get("/api/v1/dependencies-versions")
def dependencies_versions() -> Any:
    _user()
    return []


@app.post("/api/v1/programs/upload")
def upload_program() -> Any:
    gateway = _user()
    form = form_body(app.current_event.headers.get("content-type"), _body())
    artifact = form.files.get("artifact")
    return gateway.upload(form.fields, artifact[1] if artifact else None)


@app.get("/api/v1/programs/get_by_title/<title>")
def program_by_title(title: str) -> Any:
    return _user().function(title, _query().get("provider") or None)


@app.post("/api/v1/programs/validate_arguments")
def validate_arguments() -> Any:
    gateway = _user()
    return gateway.validate_arguments(_fields(_body()))


@app.post("/api/v1/programs/run")
def run_program() -> Any:
    gateway = _user()
    return gateway.run(_fields(_body()))


# -- jobs -----------------------------------------------------------------------------------
@app.get("/api/v1/jobs")
def list_jobs() -> Any:
    return _user().jobs_list(_query())


@app.get("/api/v1/jobs/provider")
def list_provider_jobs() -> Any:
    gateway = _user()
    params = _query()
    if not params.get("provider") or not params.get("function"):
        raise GatewayError(400, "`function` doesn't have a provider.")
    return gateway.jobs_list(params)


@app.get("/api/v1/jobs/<job_id>")
def get_job(job_id: str) -> Any:
    gateway = _gateway()
    caller = _caller(gateway, user=False)  # a job may read its own status (cancel wind-down)
    with_result = _query().get("with_result", "false").lower() == "true"
    return gateway.job(job_id, with_result=with_result, caller=caller)


@app.get("/api/v1/jobs/<job_id>/result")
def job_result(job_id: str) -> Any:
    return _user().result(job_id)


@app.get("/api/v1/jobs/<job_id>/logs")
def job_logs(job_id: str) -> Any:
    return _user().logs(job_id)


@app.get("/api/v1/jobs/<job_id>/provider-logs")
def job_provider_logs(job_id: str) -> Any:
    return _user().provider_logs(job_id)


@app.post("/api/v1/jobs/<job_id>/stop")
def stop_job(job_id: str) -> Any:
    return _user().stop(job_id)


@app.patch("/api/v1/jobs/<job_id>/sub_status")
def set_sub_status(job_id: str) -> Any:
    gateway = _gateway()
    caller = _caller(gateway, user=False)
    return gateway.set_sub_status(caller, job_id, _fields(_body()).get("sub_status"))


@app.post("/api/v1/jobs/<job_id>/event")
def add_event(job_id: str) -> Any:
    gateway = _gateway()
    caller = _caller(gateway, user=False)
    gateway.add_event(caller, job_id, _fields(_body()))
    return _text_json("null")


@app.get("/api/v1/jobs/<job_id>/events")
def job_events(job_id: str) -> Any:
    gateway = _gateway()
    caller = _caller(gateway, user=False)
    return gateway.events(caller, job_id, _query().get("type") or None)


@app.post("/api/v1/jobs/<job_id>/runtime_jobs")
def add_runtime_job(job_id: str) -> Any:
    gateway = _gateway()
    caller = _caller(gateway, user=False)
    return gateway.add_runtime_job(caller, job_id, _fields(_body()))


@app.get("/api/v1/jobs/<job_id>/runtime_jobs")
def runtime_jobs(job_id: str) -> Any:
    gateway = _gateway()
    caller = _caller(gateway, user=False)
    return gateway.runtime_jobs(caller, job_id)


# -- files (the function's, and its provider's private ones) -------------------------------
def _files_routes(base: str, private: bool) -> None:
    def listing() -> Any:
        return _user().files(_query(), private=private)

    def upload() -> Any:
        gateway = _user()
        form = form_body(app.current_event.headers.get("content-type"), _body())
        if "file" not in form.files:
            raise GatewayError(400, "send the file as the form's 'file' part")
        name, content = form.files["file"]
        text = gateway.file_upload(_query(), name, content, private=private)
        return Response(200, content_types.TEXT_PLAIN, text)

    def download() -> Any:
        name, content = _user().file_download(_query(), private=private)
        return Response(
            200,
            "application/octet-stream",
            content,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def delete() -> Any:
        return _user().file_delete(_query(), private=private)

    app.get(base)(listing)
    app.post(f"{base}/upload")(upload)
    app.get(f"{base}/download")(download)
    app.delete(f"{base}/delete")(delete)


_files_routes("/api/v1/files/provider", private=True)
_files_routes("/api/v1/files", private=False)
