"""The dashboard app over the real local client (no daemon: jobs stay where the test puts
them), through Starlette's TestClient."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from qlayer import keys
from qlayer.core.ports import Event
from qlayer.local.client import LocalClient
from qlayer.status import JobStatus
from qlayer.ui import create_app
from qlayer.ui.auth import COOKIE, CSRF_HEADER, csrf_token

TOKEN = "test-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def program(folder: Path, name: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(
        textwrap.dedent(
            f"""
            from qlayer import Workflow

            wf = Workflow({name!r}, params={{"x": 0, "label": ""}})

            @wf.stage()
            def only(args):
                return args
            """
        )
    )
    return path


@pytest.fixture
def local(tmp_path):
    client = LocalClient(tmp_path / "home", autostart=False)
    yield client
    client._conn.close()


@pytest.fixture
def jobs(local, tmp_path):
    """Three jobs of two workflows on two backends; one ERROR, two QUEUED."""
    alpha, beta = program(tmp_path, "alpha"), program(tmp_path, "beta")
    one = local.run(alpha, {"x": 1, "label": "first"}, backend="aer")
    two = local.run(alpha, {"x": 2, "label": "second"}, backend="aer_statevector")
    three = local.run(beta, {"x": 3, "label": "third"}, backend="aer")
    local.jobstore.update(
        two.job_id, status=JobStatus.ERROR, message="it broke", error_type="ValueError"
    )
    return one, two, three


@pytest.fixture
def web(local):
    with TestClient(create_app(local, token=TOKEN, refresh_s=0.01, target="local")) as tc:
        yield tc


@pytest.fixture
def signed_in(web):
    web.cookies.set(COOKIE, TOKEN)
    return web


def listed(web, **params) -> list[str]:
    reply = web.get("/api/jobs", params=params)
    assert reply.status_code == 200, reply.text
    return [job["job_id"] for job in reply.json()["jobs"]]


def test_every_route_is_401_without_the_token(web, local, jobs):
    job_id = jobs[0].job_id
    for path in ("/", "/api/jobs", f"/jobs/{job_id}", f"/jobs/{job_id}/stream", "/static/ui.js"):
        reply = web.get(path)
        assert reply.status_code == 401, path
        assert "token" in reply.text
    assert web.get("/", params={"token": "wrong"}).status_code == 401
    assert web.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    web.cookies.set(COOKIE, "wrong")
    assert web.get("/").status_code == 401
    assert web.post(f"/api/jobs/{job_id}/cancel").status_code == 401
    assert not any(e["event"] == "cancel requested" for e in local.job(job_id).timeline())


def test_the_url_token_becomes_an_httponly_strict_cookie_and_leaves_the_address(web, jobs):
    reply = web.get("/", params={"token": TOKEN, "status": "QUEUED"}, follow_redirects=False)
    assert reply.status_code == 303
    assert reply.headers["location"] == "/?status=QUEUED"
    cookie = reply.headers["set-cookie"]
    assert f"{COOKIE}={TOKEN}" in cookie
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    page = web.get("/")  # the cookie is kept by the client now
    assert page.status_code == 200
    assert jobs[0].job_id in page.text
    assert web.get("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_filters_and_search(signed_in, jobs):
    one, two, three = (job.job_id for job in jobs)
    assert listed(signed_in) == [three, two, one]  # newest first
    assert listed(signed_in, status="ERROR") == [two]
    assert listed(signed_in, status="queued") == [three, one]
    assert listed(signed_in, workflow="alpha") == [two, one]
    assert listed(signed_in, backend="aer") == [three, one]
    assert listed(signed_in, workflow="alpha", backend="aer") == [one]
    assert listed(signed_in, q="SECOND") == [two]  # arguments are searched
    assert listed(signed_in, q="beta third") == [three]
    assert listed(signed_in, q="beta second") == []
    assert listed(signed_in, q=one) == [one]
    reply = signed_in.get("/api/jobs", params={"status": "NOPE"})
    assert reply.status_code == 400 and "unknown status" in reply.json()["error"]
    page = signed_in.get("/", params={"workflow": "beta"})
    assert three in page.text and one not in page.text
    assert '<option value="alpha">alpha</option>' in page.text  # choices from the jobs seen


def test_a_job_page_shows_arguments_error_and_plots(signed_in, local, jobs):
    _, two, _ = jobs
    local.store.put_bytes(keys.file_key(two.job_id, "plots/fig 1.png"), b"\x89PNG fake")
    local.store.put_bytes(keys.file_key(two.job_id, "notes.txt"), b"hello")
    page = signed_in.get(f"/jobs/{two.job_id}")
    assert page.status_code == 200
    assert "&#34;label&#34;: &#34;second&#34;" in page.text  # arguments, escaped
    assert "ValueError: it broke" in page.text
    assert f'src="/jobs/{two.job_id}/files/plots/fig%201.png"' in page.text
    assert 'data-final="true"' in page.text
    assert csrf_token(TOKEN) in page.text and TOKEN not in page.text
    image = signed_in.get(f"/jobs/{two.job_id}/files/plots/fig%201.png")
    assert image.status_code == 200 and image.content == b"\x89PNG fake"
    assert image.headers["content-type"] == "image/png"
    assert "sandbox" in image.headers["content-security-policy"]
    text = signed_in.get(f"/jobs/{two.job_id}/files/notes.txt")
    assert text.headers["content-disposition"] == "attachment"
    missing = signed_in.get(f"/jobs/{two.job_id}/files/none.png")
    assert missing.status_code == 404 and "saved no file" in missing.json()["error"]
    assert signed_in.get("/jobs/no-such-job").status_code == 404


def test_cancel_needs_the_csrf_header_and_a_same_origin(signed_in, local, jobs):
    one = jobs[0].job_id
    assert signed_in.post(f"/api/jobs/{one}/cancel").status_code == 403
    wrong = signed_in.post(f"/api/jobs/{one}/cancel", headers={CSRF_HEADER: "nope"})
    assert wrong.status_code == 403
    elsewhere = signed_in.post(
        f"/api/jobs/{one}/cancel",
        headers={CSRF_HEADER: csrf_token(TOKEN), "Origin": "http://evil.example"},
    )
    assert elsewhere.status_code == 403
    assert not any(e["event"] == "cancel requested" for e in local.job(one).timeline())
    ok = signed_in.post(f"/api/jobs/{one}/cancel", headers={CSRF_HEADER: csrf_token(TOKEN)})
    assert ok.status_code == 200
    assert ok.json()["cancelled"] is True
    assert any(e["event"] == "cancel requested" for e in local.job(one).timeline())
    ended = jobs[1].job_id
    again = signed_in.post(f"/api/jobs/{ended}/cancel", headers={CSRF_HEADER: csrf_token(TOKEN)})
    assert again.json() == {"job_id": ended, "cancelled": False, "status": "ERROR"}


def test_the_stream_of_an_ended_job_sends_its_state_then_ends(signed_in, local, jobs):
    two = jobs[1].job_id
    local.jobstore.add_event(two, Event(0, "only", "started", {"attempt": 1}))
    with signed_in.stream("GET", f"/jobs/{two}/stream") as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        body = "".join(reply.iter_text())
    names = [line[7:] for line in body.splitlines() if line.startswith("event: ")]
    assert names == ["status", "summary", "gantt", "log", "end"]
    assert '"status": "ERROR"' in body
    assert 'data-kind="stage"' in body


def test_the_app_imports_no_substrate():
    code = (
        "import sys, qlayer.ui.app, qlayer.ui.serve; "
        "bad = [m for m in sys.modules if m.startswith(('qlayer.local', 'qlayer.aws'))]; "
        "assert not bad, bad"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_serve_binds_loopback_and_refuses_a_port_in_use():
    from qlayer.errors import QlayerError
    from qlayer.ui.serve import bind, is_loopback, url

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert url("127.0.0.1", port, "t") == f"http://127.0.0.1:{port}/?token=t"
        with pytest.raises(QlayerError, match=f"cannot serve on 127.0.0.1:{port}"):
            bind("127.0.0.1", port)
    finally:
        taken.close()
