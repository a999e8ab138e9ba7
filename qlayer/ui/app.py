"""The dashboard's web application: pages, a live stream per job, files, cancel.

:func:`create_app` takes any client satisfying :class:`qlayer.client.QlayerClient` (the
local one, or the AWS one) and the token the gate in :mod:`qlayer.ui.auth` checks.

Routes:
    ``GET /``                            jobs, with search and filters (``q``, ``status``,
                                         ``workflow``, ``backend``, ``limit``)
    ``GET /jobs/{id}``                   one job: Gantt chart, status, usage, arguments,
                                         result, plots, logs, children, cancel
    ``GET /jobs/{id}/stream``            server-sent events while it runs: ``status``,
                                         ``summary``, ``gantt``, ``log``, then ``end``
    ``GET /jobs/{id}/files/{name}``      a saved file (images inline, others attached)
    ``POST /api/jobs/{id}/cancel``       cancel (needs the CSRF header)
    ``GET /api/jobs``                    the jobs list as JSON (same filters)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from qlayer.client import Job, QlayerClient
from qlayer.errors import FileNameError, JobNotFound, QlayerError
from qlayer.status import JobStatus
from qlayer.ui import gantt, views
from qlayer.ui.auth import CSRF_HEADER, TokenGate, csrf_token

HERE = Path(__file__).resolve().parent
T = TypeVar("T")

#: Served with every saved file: a job's SVG may hold script; it never runs as ours.
FILE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    "X-Content-Type-Options": "nosniff",
}
#: Served with every page: scripts and styles only from the dashboard itself.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self' "
        "'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
    )
    env.filters["when"] = _when
    env.filters["seconds"] = lambda value: f"{float(value or 0):.3f} s"
    return env


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(stamp)))


class Dashboard:
    """The state behind the routes: one client, read one call at a time.

    Args:
        client: Any substrate's client.
        refresh_s: Seconds between the reads a job's stream makes while it runs.
        target: Shown in the header (``local``, ``aws``).
    """

    def __init__(self, client: QlayerClient, *, refresh_s: float = 0.5, target: str = "") -> None:
        self.client = client
        self.refresh_s = refresh_s
        self.target = target
        self.env = _environment()
        # The local client holds one SQLite connection: requests run on a thread pool,
        # so each read of the client happens alone.
        self._lock = threading.Lock()

    def read(self, call: Callable[[], T]) -> T:
        """Run ``call`` (a read of the client) with the client to itself."""
        with self._lock:
            return call()

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    # -- one job -------------------------------------------------------------------------
    def snapshot(self, job_id: str) -> dict[str, Any]:
        """Everything a job's page shows that changes while it runs, rendered."""
        job = self.client.job(job_id)
        info = job.info()
        now = time.time()
        chart = gantt.chart_for(job.timeline(), info, now=now)
        files = job.files()
        context = {
            "job": info,
            "chart": chart,
            "usage": job.usage(),
            "files": files,
            "images": [name for name in files if views.is_image(name)],
            "outcome": views.outcome(job, info),
            "children": views.children_summary(job, info),
            "arguments": views.shown(info.get("arguments")),
        }
        return {
            "info": info,
            "context": context,
            "status": {
                "status": info["status"],
                "stage": info.get("stage"),
                "seq": info.get("seq"),
                "final": JobStatus(info["status"]).is_final,
                "children": info.get("children"),
            },
            "summary": self.render("_summary.html", **context),
            "gantt": self.render("_gantt.html", chart=chart),
            "logs": job.logs(),
        }

    async def stream(self, job_id: str, request: Request) -> AsyncIterator[str]:
        """Server-sent events of a job until it ends (or the browser goes away)."""
        sent: dict[str, str] = {}
        logs: str | None = None
        while True:
            snap = await run_in_threadpool(self.read, lambda: self.snapshot(job_id))
            parts = {
                "status": json.dumps(snap["status"]),
                "summary": snap["summary"],
                "gantt": snap["gantt"],
            }
            for name, data in parts.items():
                if sent.get(name) != data:
                    sent[name] = data
                    yield _event(name, data)
            text = snap["logs"]
            if logs is None or not text.startswith(logs):
                yield _event("log", json.dumps({"replace": text}))
            elif len(text) > len(logs):
                yield _event("log", json.dumps({"append": text[len(logs) :]}))
            logs = text
            if snap["status"]["final"]:
                yield _event("end", json.dumps({"status": snap["status"]["status"]}))
                return
            await asyncio.sleep(self.refresh_s)
            if await request.is_disconnected():
                return


def _event(name: str, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {name}\n{lines}\n"


def create_app(
    client: QlayerClient, *, token: str, refresh_s: float = 0.5, target: str = ""
) -> FastAPI:
    """The dashboard over ``client``, open only to holders of ``token``.

    Args:
        client: Any client satisfying :class:`qlayer.client.QlayerClient`.
        token: The secret every request must carry (cookie or bearer).
        refresh_s: Seconds between a live job stream's reads of the client.
        target: The substrate's name, shown in the page header.
    """
    board = Dashboard(client, refresh_s=refresh_s, target=target)
    csrf = csrf_token(token)
    app = FastAPI(title="qlayer dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dashboard = board
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    page = {"csrf": csrf, "csrf_header": CSRF_HEADER, "target": target}

    def html(body: str, status_code: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status_code, headers=PAGE_HEADERS)

    def not_found(job_id: str) -> HTMLResponse:
        return html(board.render("missing.html", job_id=job_id, **page), 404)

    def filters(q: str, status: str, workflow: str, backend: str, limit: int) -> views.Filters:
        return views.Filters(
            q=q.strip(), status=status.upper(), workflow=workflow, backend=backend, limit=limit
        )

    @app.get("/", response_class=HTMLResponse)
    def jobs_page(
        q: str = "",
        status: str = "",
        workflow: str = "",
        backend: str = "",
        limit: int = Query(200, ge=1, le=1000),
    ) -> HTMLResponse:
        chosen = filters(q, status, workflow, backend, limit)
        try:
            listed = board.read(lambda: views.list_jobs(client, chosen))
        except QlayerError as exc:
            return html(board.render("error.html", message=str(exc), **page), 400)
        return html(board.render("jobs.html", listed=listed, filters=chosen, **page))

    @app.get("/api/jobs")
    def jobs_json(
        q: str = "",
        status: str = "",
        workflow: str = "",
        backend: str = "",
        limit: int = Query(200, ge=1, le=1000),
    ) -> JSONResponse:
        chosen = filters(q, status, workflow, backend, limit)
        try:
            listed = board.read(lambda: views.list_jobs(client, chosen))
        except QlayerError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        from qlayer.plain import plain

        return JSONResponse(
            plain(
                {
                    "jobs": listed.jobs,
                    "searched": listed.searched,
                    "workflows": listed.workflows,
                    "backends": listed.backends,
                }
            )
        )

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(job_id: str) -> HTMLResponse:
        try:
            snap = board.read(lambda: board.snapshot(job_id))
        except JobNotFound:
            return not_found(job_id)
        return html(
            board.render(
                "job.html",
                summary=snap["summary"],
                gantt_html=snap["gantt"],
                logs=snap["logs"],
                final=snap["status"]["final"],
                **snap["context"],
                **page,
            )
        )

    @app.get("/jobs/{job_id}/stream")
    def job_stream(job_id: str, request: Request) -> Response:
        try:
            board.read(lambda: client.job(job_id))
        except JobNotFound:
            return JSONResponse({"error": f"no job {job_id}"}, status_code=404)
        return StreamingResponse(
            board.stream(job_id, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/jobs/{job_id}/files/{name:path}")
    def job_file(job_id: str, name: str) -> Response:
        def fetch() -> bytes:
            job: Job = client.job(job_id)
            return views.file_bytes(job, name)

        try:
            data = board.read(fetch)
        except JobNotFound:
            return not_found(job_id)
        except FileNameError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except QlayerError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        kind = views.IMAGE_TYPES.get(Path(name).suffix.lower())
        headers = dict(FILE_HEADERS)
        if kind is None:
            kind = "application/octet-stream"
            headers["Content-Disposition"] = "attachment"
        return Response(data, media_type=kind, headers=headers)

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> JSONResponse:
        def act() -> dict[str, Any]:
            job = client.job(job_id)
            changed = job.cancel()
            return {"job_id": job_id, "cancelled": changed, "status": job.status().value}

        try:
            return JSONResponse(board.read(act))
        except JobNotFound:
            return JSONResponse({"error": f"no job {job_id}"}, status_code=404)

    app.add_middleware(TokenGate, secret=token)
    return app
