"""The dashboard in a real headless browser, over the real server and the real daemon.

``qlayer ui`` runs as a subprocess on a free loopback port; Playwright drives Debian's
chromium (``/usr/bin/chromium``; ``make install-dev`` installs it as root). Jobs run
``programs/dashboard.py``, whose stages wait for a go file the test writes, so the test
watches the Gantt chart advance one stage at a time, live, without reloading the page.

Screenshots go to ``$QLAYER_UI_SCREENSHOTS`` (``make screenshots`` sets it to
``docs/screenshots``), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers
from helpers import wait_file, wait_for

from qlayer.status import JobStatus

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = helpers.PROGRAMS / "dashboard.py"
LIMIT_MS = 60_000  # the longest the browser waits for a change (a bound, not a timing)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("ui")


@pytest.fixture(scope="module")
def shots(folder):
    chosen = Path(os.environ.get("QLAYER_UI_SCREENSHOTS") or folder / "screenshots")
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


@pytest.fixture(scope="module")
def client(folder):
    yield from helpers.local_client(folder / "home", workers=2)


@pytest.fixture(scope="module")
def server(client, folder):
    """``qlayer ui --port 0`` on this home; yields the URL it printed (with the token)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "qlayer.cli", "ui", "--port", "0", "--home", str(client.home.root)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(folder / "ui.log", "w"),  # noqa: SIM115 - the server's lifetime
        text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("qlayer dashboard: http://127.0.0.1:"), (
            line + (folder / "ui.log").read_text()
        )
        url = line.split(": ", 1)[1].strip()
        assert url.endswith(f"/?token={client.home.token()}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    if path is None:
        pytest.skip(
            "no chromium on PATH or at /usr/bin/chromium (as root: apt-get install chromium)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=path, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    opened.goto(server)  # sets the cookie, then drops the token from the address
    yield opened
    context.close()


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def origin(url: str) -> str:
    """``http://127.0.0.1:PORT`` of the printed URL."""
    return url.split("/?", 1)[0]


def markers(folder: Path, name: str) -> Path:
    path = folder / name
    path.mkdir(exist_ok=True)
    return path


def test_jobs_page_lists_and_filters(page, client, server, folder, shots):
    done = client.run(PROGRAM, {"items": 2})
    done.result(timeout=120)
    trivial = client.run(helpers.TRIVIAL, {"x": 4})
    trivial.result(timeout=120)
    wait = markers(folder, "list")
    running = client.run(PROGRAM, {"markers": str(wait), "wait_at": "prepare"})
    wait_file(wait / f"{running.job_id}.prepare.started", "prepare to start")
    page.reload()
    assert "token=" not in page.url
    rows = page.locator("#jobs tbody tr[data-job]")
    expect()(page.locator(f'tr[data-job="{done.job_id}"]')).to_be_visible()
    expect()(page.locator(f'tr[data-job="{trivial.job_id}"]')).to_be_visible()
    expect()(page.locator(f'tr[data-job="{running.job_id}"] .status')).to_have_text("RUNNING")
    page.screenshot(path=str(shots / "jobs.png"), full_page=True)

    page.select_option('select[name="status"]', "RUNNING")
    page.click('button[type="submit"]')
    expect()(rows).to_have_count(1)
    expect()(page.locator(f'tr[data-job="{running.job_id}"]')).to_be_visible()
    (wait / f"{running.job_id}.prepare.go").write_text("go")
    running.result(timeout=120)
    page.goto(origin(server) + "/")

    page.select_option('select[name="workflow"]', "trivial")
    page.click('button[type="submit"]')
    expect()(rows).to_have_count(1)
    expect()(page.locator(f'tr[data-job="{trivial.job_id}"]')).to_be_visible()
    page.fill('input[name="q"]', "no-such-words")
    page.click('button[type="submit"]')
    expect()(rows).to_have_count(0)

    other = page.context.browser.new_context()  # no cookie: the dashboard says 401
    try:
        response = other.new_page().goto(origin(server) + "/")
        assert response is not None and response.status == 401
    finally:
        other.close()


def test_a_running_job_advances_live_then_shows_its_result_and_plots(
    page, client, server, folder, shots
):
    wait = markers(folder, "advance")
    job = client.run(
        PROGRAM, {"markers": str(wait), "wait_at": "prepare,spread,gather", "items": 3}
    )
    go = lambda stage: (wait / f"{job.job_id}.{stage}.go").write_text("go")  # noqa: E731
    wait_file(wait / f"{job.job_id}.prepare.started", "prepare to start")
    page.goto(f"{origin(server)}/jobs/{job.job_id}")
    page.evaluate("window.qlayerTestMark = 'same page'")  # gone if the page reloads
    live = expect()
    live(page.locator('.bar.kind-stage.running[data-seq="0"]')).to_be_visible(timeout=LIMIT_MS)
    live(page.locator("#live-status")).to_have_text("RUNNING", timeout=LIMIT_MS)

    go("prepare")
    live(page.locator('.bar.kind-execute[data-seq="1"]')).to_be_visible(timeout=LIMIT_MS)
    live(page.locator('.bar.kind-stage.running[data-seq="2"]')).to_be_visible(timeout=LIMIT_MS)
    live(page.locator("#logs")).to_contain_text("spread: waiting for", timeout=LIMIT_MS)
    live(page.locator("#plots img")).to_have_count(2, timeout=LIMIT_MS)
    page.screenshot(path=str(shots / "job-running.png"), full_page=True)

    go("spread")
    fan = page.locator('.bar.kind-fanout[data-seq="3"] .fan')
    live(fan).to_have_text("3/3", timeout=LIMIT_MS)
    live(page.locator('.bar.kind-stage.running[data-seq="4"]')).to_be_visible(timeout=LIMIT_MS)

    go("gather")
    live(page.locator("#live-status")).to_have_text("DONE", timeout=LIMIT_MS)
    live(page.locator("#result")).to_contain_text('"total": 5', timeout=LIMIT_MS)
    live(page.locator("#logs")).to_contain_text("gather: [0, 1, 4]", timeout=LIMIT_MS)
    live(page.locator("#cancel")).to_be_hidden()
    assert page.evaluate("window.qlayerTestMark") == "same page"  # updated in place
    assert page.locator(".bar.running").count() == 0
    assert job.status() == JobStatus.DONE

    image = page.locator('#plots img[alt="plots/histogram.png"]')
    wait_for(lambda: image.evaluate("img => img.naturalWidth") == 160, 60, "the PNG to load")
    page.screenshot(path=str(shots / "job-done.png"), full_page=True)
    with page.context.expect_page() as opened:
        image.click()
    plot = opened.value
    plot.wait_for_load_state()
    assert plot.url.endswith(f"/jobs/{job.job_id}/files/plots/histogram.png")
    assert plot.evaluate("document.images[0].naturalHeight") == 90
    plot.screenshot(path=str(shots / "plot.png"))
    plot.close()


def test_cancel_from_the_page(page, client, server, folder, shots):
    wait = markers(folder, "cancel")
    job = client.run(PROGRAM, {"markers": str(wait), "wait_at": "prepare"})
    wait_file(wait / f"{job.job_id}.prepare.started", "prepare to start")
    page.goto(f"{origin(server)}/jobs/{job.job_id}")
    live = expect()
    live(page.locator('.bar.kind-stage.running[data-seq="0"]')).to_be_visible(timeout=LIMIT_MS)
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    live(page.locator("#live-status")).to_have_text("CANCELLED", timeout=LIMIT_MS)
    live(page.locator("#cancel")).to_be_hidden()
    assert page.locator(".bar.running").count() == 0
    page.screenshot(path=str(shots / "job-cancelled.png"), full_page=True)
    assert job.status() == JobStatus.CANCELLED
    assert any(e["event"] == "cancel requested" for e in job.timeline())
