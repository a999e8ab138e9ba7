"""The fake IBM Quantum Platform: IAM, instance lookup and the Qiskit Runtime REST API.

It answers the calls the real, unpatched qiskit-ibm-runtime client makes, on
127.0.0.1 only. The client is pointed here by settings it and ibm-cloud-sdk-core
document: ``IAM_URL`` (the token exchange), ``GLOBAL_SEARCH_URL`` and
``GLOBAL_CATALOG_URL`` (the instance lookup), and the service ``url``, whose
``experimental`` path keeps the client's URL resolver from rewriting it.

Routes (the runtime ones under :data:`RUNTIME_PREFIX`):

- ``POST /iam/identity/token``: API key -> bearer token (a JWT; 400 on a wrong key).
- ``POST /global-search/v3/resources/search``, ``GET /global-catalog/{id}``: the instance.
- ``GET /backends``, ``GET /backends/{name}/configuration|properties|status``.
- ``GET /instances/usage``.
- ``POST /jobs``, ``GET /jobs`` (filters: backend, tags (all of them), session_id,
  pending, program; limit/offset; sort), ``GET /jobs/{id}`` (each read is one step of the
  lifecycle Queued -> Running -> Completed), ``GET /jobs/{id}/results|metrics|logs``,
  ``POST /jobs/{id}/cancel``, ``DELETE /jobs/{id}``.
- ``POST /sessions``, ``GET|PATCH /sessions/{id}``, ``DELETE /sessions/{id}/close``.
- ``/_fake/...``: the knobs (rules, settings, release a held job, the call log).

Every request is written to the store's call log before its answer leaves.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import devices
from .store import FINAL, Store, now_iso

#: Where the runtime API lives; "experimental" tells the client's default URL resolver
#: to use the URL as given (``qiskit_ibm_runtime.api.utils.default_runtime_url_resolver``).
RUNTIME_PREFIX = "/experimental/api/v1"
IAM_PREFIX = "/iam"
SEARCH_PREFIX = "/global-search"
CATALOG_PREFIX = "/global-catalog"
CONTROL_PREFIX = "/_fake"

TOKEN_SECONDS = 3600
PLAN_ID = "fake-open-plan"
#: The platform's words when an Open Plan instance asks for a session (``dedicated`` mode).
OPEN_PLAN_REFUSAL = "You are not authorized to run a session when using the open plan."

Handler = Callable[[Request, bytes], Response]


def error(status: int, message: str, code: str | None = None) -> JSONResponse:
    """An error in the platform's envelope (``errors`` list and a trace id)."""
    body = {
        "errors": [{"code": code or f"http_{status}", "message": message, "more_info": ""}],
        "trace": uuid.uuid4().hex,
        "status_code": status,
    }
    headers = {"Retry-After": "1"} if status == 429 else None
    return JSONResponse(body, status_code=status, headers=headers)


class CallLog:
    """ASGI middleware: every answered request goes to the store's call log."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "").split(" ", 1)[0].lower() or "none"
        query = scope.get("query_string", b"").decode("latin-1")

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                await run_in_threadpool(
                    self.store.record_call,
                    scope["method"],
                    scope["path"],
                    query,
                    int(message["status"]),
                    auth,
                )
            await send(message)

        await self.app(scope, receive, send_logged)


class Service:
    """The route handlers over one :class:`Store` (each runs in a worker thread)."""

    def __init__(self, store: Store, backends: Iterable[str]) -> None:
        self.store = store
        self.backends = [name for name in backends if devices.fake_class(name) is not None]

    # ------------------------------------------------------------------ auth

    def _bearer(self, request: Request) -> bool:
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        return kind.lower() == "bearer" and self.store.token_valid(token)

    def _runtime_auth(self, request: Request) -> Response | None:
        if not self._bearer(request):
            return error(401, "a valid IAM bearer token is required", "unauthorized")
        if request.headers.get("service-crn") != self.store.instance:
            return error(403, "the Service-CRN header names no instance of this account")
        return None

    def iam_token(self, request: Request, body: bytes) -> Response:
        from urllib.parse import parse_qs

        import jwt

        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "urn:ibm:params:oauth:grant-type:apikey":
            return JSONResponse({"errorCode": "BXNIM0109E", "errorMessage": "bad grant"}, 400)
        if form.get("apikey") != self.store.api_key:
            return JSONResponse(
                {"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found."},
                400,
            )
        issued = int(time.time())
        payload = {"iat": issued, "exp": issued + TOKEN_SECONDS, "sub": "fake-user"}
        token = jwt.encode(
            {**payload, "jti": uuid.uuid4().hex}, secrets.token_hex(16), algorithm="HS256"
        )
        self.store.save_token(token, form["apikey"], issued + TOKEN_SECONDS)
        return JSONResponse(
            {
                "access_token": token,
                "refresh_token": "not_supported",
                "token_type": "Bearer",
                "expires_in": TOKEN_SECONDS,
                "expiration": issued + TOKEN_SECONDS,
                "scope": "ibm openid",
            }
        )

    # ------------------------------------------------------------------ instance lookup

    def search(self, request: Request, body: bytes) -> Response:
        if not self._bearer(request):
            return error(401, "a valid IAM bearer token is required")
        item = {
            "crn": self.store.instance,
            "name": "qlayer-fake-instance",
            "service_plan_unique_id": PLAN_ID,
            "doc": {"extensions": {"backends": self.backends}},
            "tags": [],
        }
        return JSONResponse({"items": [item], "limit": 100, "search_cursor": None})

    def catalog(self, request: Request, body: bytes) -> Response:
        if not self._bearer(request):
            return error(401, "a valid IAM bearer token is required")
        if request.path_params["entry"] != PLAN_ID:
            return error(404, "no such catalog entry")
        return JSONResponse(
            {
                "id": PLAN_ID,
                "overview_ui": {"en": {"display_name": "Open"}},
                "metadata": {"pricing": {"type": "free"}},
            }
        )

    # ------------------------------------------------------------------ backends

    def list_backends(self, request: Request, body: bytes) -> Response:
        devices_out = [
            {"name": name, "status": {"name": "online"}, "is_simulator": False}
            for name in self.backends
        ]
        return JSONResponse({"devices": devices_out})

    def backend(self, request: Request, body: bytes) -> Response:
        name, what = request.path_params["name"], request.path_params["what"]
        if name not in self.backends:
            return error(404, f"backend {name} not found")
        if what == "configuration":
            return JSONResponse(devices.configuration(name))
        if what == "properties":
            return JSONResponse(devices.properties(name))
        if what == "status":
            return JSONResponse(
                {
                    "state": True,
                    "status": "active",
                    "message": "available",
                    "length_queue": self.store.pending_on(name),
                    "backend_version": devices.configuration(name).get("backend_version"),
                }
            )
        return error(404, f"no such backend resource {what!r}")

    def usage(self, request: Request, body: bytes) -> Response:
        return JSONResponse(
            {
                "instance_id": self.store.instance,
                "plan_id": PLAN_ID,
                "usage_consumed_seconds": 0,
                "usage_limit_reached": False,
            }
        )

    # ------------------------------------------------------------------ jobs

    def create_job(self, request: Request, body: bytes) -> Response:
        try:
            payload = json.loads(body)
        except ValueError:
            return error(400, "the request body is not JSON")
        program_id = payload.get("program_id")
        backend = payload.get("backend")
        if program_id not in ("sampler", "estimator", "executor"):
            return error(404, f"program {program_id!r} not found")
        if backend not in self.backends:
            return error(400, f"backend {backend!r} is not available to this instance")
        rule = self.store.take_rule("reject", backend)
        if rule is not None:
            status = rule.status or 429
            return error(status, rule.message or "Too many requests", f"http_{status}")
        session_id = payload.get("session_id")
        if session_id:
            session = self.store.session(session_id)
            if session is None:
                return error(404, f"session {session_id} not found")
            if not session["accepting_jobs"]:
                return error(400, f"session {session_id} is closed")
        if not isinstance(payload.get("params"), dict):
            return error(400, "'params' must be an object")
        job = self.store.create_job(
            backend=backend,
            program_id=program_id,
            params=json.dumps(payload["params"]),
            instance=request.headers.get("service-crn"),
            session_id=session_id,
            tags=list(payload.get("tags") or []),
            cost=payload.get("cost"),
            private=bool(payload.get("private")),
        )
        return JSONResponse({"id": job["id"], "backend": backend, "session_id": session_id})

    def list_jobs(self, request: Request, body: bytes) -> Response:
        query = request.query_params
        pending = query.get("pending")
        try:
            limit = int(query.get("limit") or 0) or None
            offset = int(query.get("offset") or 0)
        except ValueError:
            return error(400, "limit and offset must be integers")
        page, count = self.store.jobs(
            backend=query.get("backend"),
            tags=query.getlist("tags"),
            session_id=query.get("session_id"),
            program_id=query.get("program"),
            pending=None if pending is None else pending == "true",
            descending=query.get("sort", "DESC").upper() != "ASC",
            limit=limit,
            offset=offset,
        )
        jobs = [_job_json(job, params=query.get("exclude_params") != "true") for job in page]
        return JSONResponse({"jobs": jobs, "count": count, "limit": limit, "offset": offset})

    def get_job(self, request: Request, body: bytes) -> Response:
        job_id = request.path_params["job_id"]
        job, due = self.store.read_status(job_id)
        if job is None:
            return error(404, f"job {job_id} not found")
        if due:
            self._finish(job)
            job = self.store.job(job_id)
            assert job is not None
        return JSONResponse(
            _job_json(job, params=request.query_params.get("exclude_params") != "true")
        )

    def _finish(self, job: dict[str, Any]) -> None:
        if job["fail_message"]:
            self.store.finish(
                job["id"], "Failed", reason=job["fail_message"], reason_code=devices.FAILED_CODE
            )
            return
        try:
            result = devices.run(
                job["program_id"], job["backend"], job["params"], noisy=not job["ideal"]
            )
        except devices.JobInputError as exc:
            self.store.finish(job["id"], "Failed", reason=str(exc), reason_code=devices.FAILED_CODE)
            return
        usage = float(self.store.setting("usage_seconds", 2.0))
        self.store.finish(job["id"], "Completed", result=result, usage_seconds=usage)

    def job_part(self, request: Request, body: bytes) -> Response:
        job_id, part = request.path_params["job_id"], request.path_params["part"]
        job = self.store.job(job_id)
        if job is None:
            return error(404, f"job {job_id} not found")
        if part == "results":
            if job["status"] == "Completed":
                return Response(job["result"], media_type="application/json")
            if job["status"] == "Failed":
                return PlainTextResponse(job["reason"] or "the job failed")
            return error(404, f"job {job_id} has no results (it is {job['status']})")
        if part == "metrics":
            return JSONResponse(self._metrics(job))
        if part == "logs":
            return PlainTextResponse("")
        return error(404, f"no such job resource {part!r}")

    def _metrics(self, job: dict[str, Any]) -> dict[str, Any]:
        final = job["status"] == "Completed"
        seconds = job["usage_seconds"] if final else 0
        position = self.store.queue_position(job["id"])
        return {
            "timestamps": {
                "created": job["created"],
                "running": job["running_at"],
                "finished": job["finished_at"],
            },
            "bss": {"seconds": seconds},
            "usage": {
                "quantum_seconds": seconds,
                "seconds": seconds,
                "qpu_charge_time_seconds": seconds,
                "status": "final" if job["status"] in FINAL else "pending",
            },
            "position_in_queue": position,
            "position_in_provider": position,
            "estimated_start_time": None,
            "estimated_completion_time": None,
        }

    def cancel_job(self, request: Request, body: bytes) -> Response:
        job_id = request.path_params["job_id"]
        outcome = self.store.cancel(job_id)
        if outcome == "missing":
            return error(404, f"job {job_id} not found")
        if outcome == "final":
            return error(409, f"job {job_id} already ended and cannot be cancelled")
        return Response(status_code=204)

    def delete_job(self, request: Request, body: bytes) -> Response:
        return error(405, "deleting jobs is not supported by this fake")

    # ------------------------------------------------------------------ sessions

    def create_session(self, request: Request, body: bytes) -> Response:
        payload = json.loads(body or b"{}")
        backend = payload.get("backend")
        if backend not in self.backends:
            return error(400, f"backend {backend!r} is not available to this instance")
        mode = payload.get("mode") or "dedicated"
        if mode == "dedicated" and self.store.setting("plan") == "open":
            # What the platform answers an Open Plan instance (batch and job mode are allowed).
            return error(403, OPEN_PLAN_REFUSAL)
        session = self.store.create_session(
            backend=backend,
            mode=mode,
            instance=payload.get("instance"),
            max_ttl=payload.get("max_ttl"),
        )
        return JSONResponse(_session_json(session))

    def session(self, request: Request, body: bytes) -> Response:
        session_id = request.path_params["session_id"]
        if request.method == "PATCH":
            payload = json.loads(body or b"{}")
            if payload.get("accepting_jobs") is False and not self.store.close_session(session_id):
                return error(404, f"session {session_id} not found")
            return Response(status_code=204)
        session = self.store.session(session_id)
        if session is None:
            return error(404, f"session {session_id} not found")
        jobs, _ = self.store.jobs(session_id=session_id)
        # The service's session usage; here the QPU seconds of its jobs that have ended.
        elapsed = sum(job["usage_seconds"] or 0 for job in jobs)
        return JSONResponse({**_session_json(session), "elapsed_time": elapsed})

    def cancel_session(self, request: Request, body: bytes) -> Response:
        if not self.store.close_session(request.path_params["session_id"], cancel_jobs=True):
            return error(404, "session not found")
        return Response(status_code=204)

    # ------------------------------------------------------------------ knobs

    def add_rule(self, request: Request, body: bytes) -> Response:
        payload = json.loads(body or b"{}")
        try:
            rule_id = self.store.add_rule(payload.pop("kind", ""), **payload)
        except (TypeError, ValueError) as exc:
            return error(400, str(exc))
        return JSONResponse({"id": rule_id})

    def clear_rules(self, request: Request, body: bytes) -> Response:
        self.store.clear_rules()
        return Response(status_code=204)

    def put_setting(self, request: Request, body: bytes) -> Response:
        self.store.set_setting(request.path_params["key"], json.loads(body or b"null"))
        return Response(status_code=204)

    def release(self, request: Request, body: bytes) -> Response:
        self.store.release(request.path_params["job_id"])
        return Response(status_code=204)

    def call_log(self, request: Request, body: bytes) -> Response:
        calls = self.store.calls(
            request.query_params.get("method"), request.query_params.get("path")
        )
        return JSONResponse([call.__dict__ for call in calls])

    def routes(self) -> list[Route]:
        """Every route, runtime ones guarded by IAM bearer token and Service-CRN."""
        rt = RUNTIME_PREFIX
        table: list[tuple[str, Handler, list[str], bool]] = [
            (f"{IAM_PREFIX}/identity/token", self.iam_token, ["POST"], False),
            (f"{SEARCH_PREFIX}/v3/resources/search", self.search, ["POST"], False),
            (CATALOG_PREFIX + "/{entry}", self.catalog, ["GET"], False),
            (f"{rt}/backends", self.list_backends, ["GET"], True),
            (rt + "/backends/{name}/{what}", self.backend, ["GET"], True),
            (f"{rt}/instances/usage", self.usage, ["GET"], True),
            (f"{rt}/jobs", self.create_job, ["POST"], True),
            (f"{rt}/jobs", self.list_jobs, ["GET"], True),
            (rt + "/jobs/{job_id}", self.get_job, ["GET"], True),
            (rt + "/jobs/{job_id}", self.delete_job, ["DELETE"], True),
            (rt + "/jobs/{job_id}/cancel", self.cancel_job, ["POST"], True),
            (rt + "/jobs/{job_id}/{part}", self.job_part, ["GET"], True),
            (f"{rt}/sessions", self.create_session, ["POST"], True),
            (rt + "/sessions/{session_id}", self.session, ["GET", "PATCH"], True),
            (rt + "/sessions/{session_id}/close", self.cancel_session, ["DELETE"], True),
            (f"{CONTROL_PREFIX}/rules", self.add_rule, ["POST"], False),
            (f"{CONTROL_PREFIX}/rules", self.clear_rules, ["DELETE"], False),
            (CONTROL_PREFIX + "/settings/{key}", self.put_setting, ["PUT"], False),
            (CONTROL_PREFIX + "/jobs/{job_id}/release", self.release, ["POST"], False),
            (f"{CONTROL_PREFIX}/calls", self.call_log, ["GET"], False),
        ]
        return [
            Route(path, self._endpoint(handler, guarded), methods=methods)
            for path, handler, methods, guarded in table
        ]

    def _endpoint(self, handler: Handler, guarded: bool) -> Callable[[Request], Any]:
        def guarded_call(request: Request, body: bytes) -> Response:
            if guarded:
                refused = self._runtime_auth(request)
                if refused is not None:
                    return refused
            return handler(request, body)

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            return await run_in_threadpool(guarded_call, request, body)

        return endpoint


def _job_json(job: dict[str, Any], *, params: bool) -> dict[str, Any]:
    state: dict[str, Any] = {"status": job["status"]}
    if job["reason"]:
        state["reason"] = job["reason"]
        state["reason_code"] = job["reason_code"]
    out: dict[str, Any] = {
        "id": job["id"],
        "backend": job["backend"],
        "state": state,
        "status": job["status"],
        "program": {"id": job["program_id"]},
        "created": job["created"],
        "session_id": job["session_id"],
        "tags": job["tags"],
        "private": job["private"],
        "runtime": "",
        "cost": job["cost"],
    }
    if params:
        out["params"] = json.loads(job["params"])
    return out


def _session_json(session: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": session["id"],
        "backend_name": session["backend"],
        "mode": session["mode"],
        "state": session["state"],
        "accepting_jobs": session["accepting_jobs"],
        "max_ttl": session["max_ttl"],
        "interactive_ttl": None,
        "active_ttl": None,
        "started_at": session["created"],
        "closed_at": None if session["state"] != "closed" else now_iso(),
        "timestamps": [],
    }


def create_app(directory: str | Path, *, backends: Iterable[str] = devices.DEFAULT_BACKENDS) -> Any:
    """The fake service over the state in ``directory`` (an ASGI app for uvicorn)."""
    store = Store(directory)
    service = Service(store, backends)
    app = Starlette(routes=service.routes())
    app.state.store = store
    return CallLog(app, store)
