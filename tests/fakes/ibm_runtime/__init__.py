"""A fake IBM Quantum Platform / Qiskit Runtime service for tests, on 127.0.0.1.

The real qiskit-ibm-runtime client talks to it over HTTP; nothing of the client is
patched. Start it in a thread (:func:`serve_in_thread`) or as a process
(:func:`serve_in_process`, or ``python -m tests.fakes.ibm_runtime --dir D --port P``);
either way the state is the SQLite store in the directory, shared by every process
that opens it. Point a client at it with :meth:`FakeIbmRuntime.client_env` (the
environment the client and ibm-cloud-sdk-core read) and
:meth:`FakeIbmRuntime.credentials` (token, instance, channel and url).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .devices import DEFAULT_BACKENDS
from .server import (
    CATALOG_PREFIX,
    CONTROL_PREFIX,
    IAM_PREFIX,
    RUNTIME_PREFIX,
    SEARCH_PREFIX,
    create_app,
)
from .store import Call, Store

__all__ = [
    "RUNTIME_PREFIX",
    "Call",
    "FakeIbmRuntime",
    "Store",
    "serve_in_process",
    "serve_in_thread",
]

HOST = "127.0.0.1"
SERVER_FILE = "server.json"
REPO_ROOT = Path(__file__).resolve().parents[3]
_NOT_RUNTIME = (IAM_PREFIX, "/global-", CONTROL_PREFIX)


@dataclass
class FakeIbmRuntime:
    """A running fake: where it listens, its state, and the knobs tests turn."""

    url: str
    directory: Path

    @cached_property
    def store(self) -> Store:
        """The fake's durable state (any process may open the same directory)."""
        return Store(self.directory)

    @property
    def runtime_url(self) -> str:
        """The value for ``QiskitRuntimeService(url=...)``."""
        return self.url + RUNTIME_PREFIX

    def client_env(self) -> dict[str, str]:
        """Environment for a client process: IAM and the instance lookup on this fake."""
        return {
            "IAM_URL": self.url + IAM_PREFIX,
            "GLOBAL_SEARCH_URL": self.url + SEARCH_PREFIX,
            "GLOBAL_CATALOG_URL": self.url + CATALOG_PREFIX,
        }

    def credentials(self) -> dict[str, Any]:
        """What a token provider returns for this fake's account."""
        store = self.store
        return {
            "token": store.api_key,
            "instance": store.instance,
            "channel": "ibm_quantum_platform",
            "url": self.runtime_url,
        }

    # ------------------------------------------------------------------ knobs

    def reject_next(
        self, count: int = 1, *, status: int = 429, message: str | None = None, backend: str = "*"
    ) -> None:
        """The next ``count`` job creations answer HTTP ``status``."""
        self.store.add_rule("reject", backend=backend, count=count, status=status, message=message)

    def fail_next(self, message: str, *, count: int = 1, backend: str = "*") -> None:
        """The next ``count`` jobs created end Failed with ``message``."""
        self.store.add_rule("fail", backend=backend, count=count, message=message)

    def hold_next(
        self, state: str = "Queued", *, count: int = 1, backend: str = "*", tag: str | None = None
    ) -> None:
        """The next ``count`` jobs created (with ``tag``, if given) stay in ``state`` until
        :meth:`release`."""
        self.store.add_rule("hold", backend=backend, count=count, state=state, tag=tag)

    def ideal(self, *, backend: str = "*") -> None:
        """Simulate jobs created from now on without the device's noise."""
        self.store.add_rule("ideal", backend=backend, count=None)

    def open_plan(self, on: bool = True) -> None:
        """Act as an Open Plan instance: session creation (``dedicated``) is refused with
        HTTP 403 and the platform's words; batches and plain jobs still run."""
        self.store.set_setting("plan", "open" if on else None)

    def release(self, job_id: str) -> None:
        """Let a held job go on."""
        self.store.release(job_id)

    def set_steps(self, steps: int) -> None:
        """Status reads a job spends in Queued and in Running (default 1)."""
        self.store.set_setting("steps", steps)

    def calls(self, method: str | None = None, path: str | None = None) -> list[Call]:
        """The call log; a runtime ``path`` is given without :data:`RUNTIME_PREFIX`.

        ``path`` ending in ``*`` matches a prefix; paths of IAM, the instance lookup
        and the knobs (``/iam``, ``/global-*``, ``/_fake``) are matched as given.
        """
        if path is not None and not path.startswith(_NOT_RUNTIME):
            path = RUNTIME_PREFIX + path
        return self.store.calls(method, path)

    def job_creations(self) -> int:
        """How many jobs the service created (``POST /jobs`` answered 200)."""
        return sum(call.status == 200 for call in self.calls("POST", "/jobs"))


def _listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(128)
    return sock


def _server(app: Any) -> Any:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def serve(directory: str | Path, *, port: int = 0, backends: Any = DEFAULT_BACKENDS) -> None:
    """Serve in this process until interrupted; ``<directory>/server.json`` names the URL."""
    directory = Path(directory)
    app = create_app(directory, backends=backends)
    sock = _listening_socket(port)
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    tmp = directory / (SERVER_FILE + ".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    tmp.replace(directory / SERVER_FILE)
    _server(app).run(sockets=[sock])


@contextmanager
def serve_in_thread(
    directory: str | Path, *, port: int = 0, backends: Any = DEFAULT_BACKENDS, timeout: float = 10
) -> Iterator[FakeIbmRuntime]:
    """Run the fake in a daemon thread of this process (a free port unless ``port``)."""
    directory = Path(directory)
    app = create_app(directory, backends=backends)
    sock = _listening_socket(port)
    server = _server(app)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="fake-ibm-runtime", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the fake IBM runtime did not start")
        time.sleep(0.01)
    try:
        yield FakeIbmRuntime(f"http://{HOST}:{sock.getsockname()[1]}", directory)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


@contextmanager
def serve_in_process(
    directory: str | Path, *, port: int = 0, timeout: float = 60
) -> Iterator[FakeIbmRuntime]:
    """Run ``python -m tests.fakes.ibm_runtime`` as a child; stop it on exit."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SERVER_FILE).unlink(missing_ok=True)
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.ibm_runtime",
            "--dir",
            str(directory),
            "--port",
            f"{port}",
        ],
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + timeout
        while not (directory / SERVER_FILE).exists():
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fake IBM runtime process did not start ({child.poll()})")
            time.sleep(0.05)
        url = json.loads((directory / SERVER_FILE).read_text())["url"]
        yield FakeIbmRuntime(url, directory)
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
