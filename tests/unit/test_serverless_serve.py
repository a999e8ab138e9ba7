"""``qlayer serve``: what it says when it cannot serve (no server is left running)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def serve(*args: str, home: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QLAYER_HOME=home, QLAYER_SERVERLESS_OVERLAY=home)
    return subprocess.run(
        [sys.executable, "-m", "qlayer.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_a_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = serve("serve", "--port", str(port), home=str(tmp_path))
    assert done.returncode != 0
    assert f"cannot serve on 127.0.0.1:{port}" in done.stdout + done.stderr


def test_serve_is_local_only(tmp_path):
    done = serve("--target", "aws", "serve", home=str(tmp_path))
    assert done.returncode == 2
    said = " ".join((done.stdout + done.stderr).split())
    assert "runs the Qiskit Serverless gateway on this machine only" in said
    assert "daemon" not in said
