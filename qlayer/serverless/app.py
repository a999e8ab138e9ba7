"""The gateway over HTTP: the routes qiskit-serverless 0.37's client calls, on FastAPI.

Every route is a thin call into :class:`~qlayer.serverless.gateway.Gateway`; this module
only reads the request (bounded first: see :class:`BodyLimit`), checks the bearer token
and turns a :class:`~qlayer.serverless.errors.GatewayError` into its status and
``{"message": ...}``. Routes answer with and without their trailing slash, as the client
uses both. Anything malformed is a 4xx; an unexpected failure is a 500 that says so.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qlayer.serverless.errors import GatewayError
from qlayer.serverless.gateway import Caller, Gateway

log = logging.getLogger("qlayer.serverless")

#: The largest request body of an upload (function artifact, user file).
MAX_UPLOAD_BODY = 80 * 1024 * 1024
#: The largest request body of any other route.
MAX_BODY = 17 * 1024 * 1024
_UPLOADS = ("/programs/upload", "/files/upload", "/files/provider/upload")
PREFIX = "/api/v1"


class BodyLimit:
    """ASGI middleware in front of every route: a request without a valid token gets 401
    before a byte of its body is read; a body past its route's limit gets 413 before any
    route sees it (a declared ``Content-Length`` at once; a streamed one as it passes)."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                authorization = value.decode("latin-1")
        try:
            self.gateway.authenticate(authorization)
        except GatewayError as exc:
            await _reply(scope, receive, send, exc.status, exc.message)
            return
        path = scope.get("path", "").rstrip("/")
        limit = MAX_UPLOAD_BODY if path.endswith(_UPLOADS) else MAX_BODY
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reply(scope, receive, send, 400, "invalid Content-Length")
                    return
                if declared > limit:
                    await _reply(scope, receive, send, 413, f"body over {limit} bytes")
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await _reply(scope, receive, send, 413, f"body over {limit} bytes")
                return
            chunks.append(body)
            if not message.get("more_body"):
                break
        whole = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _reply(scope: Scope, receive: Receive, send: Send, status: int, text: str) -> None:
    await JSONResponse({"message": text}, status_code=status)(scope, receive, send)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    kind = request.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" in kind or "multipart/form-data" in kind:
        form = await _form(request)
        return {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise GatewayError(400, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise GatewayError(400, "the body must be a JSON object")
    return value


async def _form(request: Request) -> Any:
    try:
        return await request.form(max_files=2, max_fields=64, max_part_size=MAX_UPLOAD_BODY)
    except Exception as exc:
        raise GatewayError(400, f"the form could not be read: {exc}") from exc


async def _upload_field(form: Any, name: str) -> bytes | None:
    part = form.get(name)
    if part is None or isinstance(part, str):
        return None
    data: bytes = await part.read()
    return data


def create_app(gateway: Gateway) -> ASGIApp:
    """The ASGI application serving ``gateway`` (behind :class:`BodyLimit`)."""
    app = FastAPI(
        title="qlayer: Qiskit Serverless gateway", docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"message": "invalid request"}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("gateway route %s failed", request.url.path)
        return JSONResponse(
            {"message": f"qlayer failed on this request: {type(exc).__name__}: {exc}"},
            status_code=500,
        )

    def caller(request: Request) -> Caller:
        return gateway.authenticate(request.headers.get("authorization"))

    def user(request: Request) -> Caller:
        who = caller(request)
        gateway.require_user(who)
        return who

    def route(path: str, method: str) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        def register(handler: Callable[..., Awaitable[Any]]) -> Any:
            for variant in {PREFIX + path.rstrip("/"), PREFIX + path.rstrip("/") + "/"}:
                app.add_api_route(variant, handler, methods=[method], include_in_schema=False)
            return handler

        return register

    # The local client holds one SQLite connection and requests run on a thread pool:
    # each call into the gateway has the client to itself (as the dashboard's reads do).
    alone = threading.Lock()

    def locked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with alone:
            return fn(*args, **kwargs)

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(locked, fn, *args, **kwargs)

    # -- programs --------------------------------------------------------------------
    @route("/programs", "GET")
    async def programs(request: Request) -> Any:
        user(request)
        return await call(gateway.functions, request.query_params.get("provider"))

    @route("/dependencies-versions", "GET")
    async def dependencies(request: Request) -> Any:
        user(request)
        return []

    @route("/programs/upload", "POST")
    async def upload(request: Request) -> Any:
        user(request)
        form = await _form(request)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        artifact = await _upload_field(form, "artifact")
        return await call(gateway.upload, fields, artifact)

    @route("/programs/get_by_title/{title}", "GET")
    async def by_title(request: Request, title: str) -> Any:
        user(request)
        return await call(gateway.function, title, request.query_params.get("provider"))

    @route("/programs/run", "POST")
    async def run(request: Request) -> Any:
        user(request)
        return await call(gateway.run, await _json_body(request))

    @route("/programs/validate_arguments", "POST")
    async def validate(request: Request) -> Any:
        user(request)
        return await call(gateway.validate_arguments, await _json_body(request))

    # -- jobs ------------------------------------------------------------------------
    @route("/jobs", "GET")
    async def jobs(request: Request) -> Any:
        user(request)
        return await call(gateway.jobs_list, dict(request.query_params))

    @route("/jobs/provider", "GET")
    async def provider_jobs(request: Request) -> Any:
        user(request)
        params = dict(request.query_params)
        if not params.get("provider") or not params.get("function"):
            raise GatewayError(400, "`function` doesn't have a provider.")
        return await call(gateway.jobs_list, params)

    @route("/jobs/{job_id}", "GET")
    async def job(request: Request, job_id: str) -> Any:
        who = caller(request)  # a job may read its own status (to wind down on cancel)
        with_result = request.query_params.get("with_result", "false").lower() == "true"
        return await call(gateway.job, job_id, with_result=with_result, caller=who)

    @route("/jobs/{job_id}/result", "GET")
    async def result(request: Request, job_id: str) -> Any:
        user(request)
        return await call(gateway.result, job_id)

    @route("/jobs/{job_id}/logs", "GET")
    async def logs(request: Request, job_id: str) -> Any:
        user(request)
        return await call(gateway.logs, job_id)

    @route("/jobs/{job_id}/provider-logs", "GET")
    async def provider_logs(request: Request, job_id: str) -> Any:
        user(request)
        return await call(gateway.provider_logs, job_id)

    @route("/jobs/{job_id}/stop", "POST")
    async def stop(request: Request, job_id: str) -> Any:
        user(request)
        await _json_body(request)  # the client sends its service; qlayer needs none
        return await call(gateway.stop, job_id)

    @route("/jobs/{job_id}/sub_status", "PATCH")
    async def sub_status(request: Request, job_id: str) -> Any:
        who = caller(request)
        body = await _json_body(request)
        return await call(gateway.set_sub_status, who, job_id, body.get("sub_status"))

    @route("/jobs/{job_id}/event", "POST")
    async def event(request: Request, job_id: str) -> Any:
        who = caller(request)
        await call(gateway.add_event, who, job_id, await _json_body(request))
        return None

    @route("/jobs/{job_id}/events", "GET")
    async def events(request: Request, job_id: str) -> Any:
        who = caller(request)
        return await call(gateway.events, who, job_id, request.query_params.get("type"))

    @route("/jobs/{job_id}/runtime_jobs", "POST")
    async def add_runtime_job(request: Request, job_id: str) -> Any:
        who = caller(request)
        return await call(gateway.add_runtime_job, who, job_id, await _json_body(request))

    @route("/jobs/{job_id}/runtime_jobs", "GET")
    async def runtime_jobs(request: Request, job_id: str) -> Any:
        who = caller(request)
        return await call(gateway.runtime_jobs, who, job_id)

    # -- files -----------------------------------------------------------------------
    for private, base in ((False, "/files"), (True, "/files/provider")):
        _file_routes(route, call, user, gateway, private, base)

    return BodyLimit(app, gateway)


def _file_routes(
    route: Any, call: Any, user: Any, gateway: Gateway, private: bool, base: str
) -> None:
    @route(base, "GET")
    async def listing(request: Request) -> Any:
        user(request)
        return await call(gateway.files, dict(request.query_params), private=private)

    @route(base + "/upload", "POST")
    async def upload(request: Request) -> Any:
        user(request)
        form = await _form(request)
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise GatewayError(400, "send the file as the form part 'file'")
        data = await part.read()
        text = await call(
            gateway.file_upload, dict(request.query_params), part.filename, data, private=private
        )
        return PlainTextResponse(text)

    @route(base + "/download", "GET")
    async def download(request: Request) -> Any:
        user(request)
        name, data = await call(gateway.file_download, dict(request.query_params), private=private)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @route(base + "/delete", "DELETE")
    async def delete(request: Request) -> Any:
        user(request)
        return await call(gateway.file_delete, dict(request.query_params), private=private)
