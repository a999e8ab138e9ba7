"""Starting, stopping and waking the local daemon."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from qlayer.errors import DaemonError
from qlayer.local.paths import Home

START_TIMEOUT_S = 60.0


def daemon_pid(home: Home) -> int | None:
    """The pid of this home's running daemon, or None."""
    try:
        pid = int(home.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # pragma: no cover - someone else's process
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"qlayer" not in cmdline:
            return None
    except OSError:
        pass
    return pid


def start(home: Home, *, workers: int | None = None, wait: bool = True) -> int:
    """Start the daemon for ``home`` unless it runs already. Returns its pid.

    Raises:
        DaemonError: It did not come up; the message quotes its log.
    """
    pid = daemon_pid(home)
    if pid is not None:
        return pid
    args = [sys.executable, "-m", "qlayer.local.daemon_process", "--home", str(home.root)]
    if workers:
        args += ["--workers", str(workers)]
    with open(home.daemon_log, "ab") as log:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    if not wait:
        return process.pid
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = daemon_pid(home)
        if pid is not None:
            return pid
        if process.poll() is not None:
            # Exit 0 means another daemon won the lock: look again.
            pid = daemon_pid(home)
            if pid is not None:
                return pid
            if process.returncode != 0:
                break
        time.sleep(0.05)
    raise DaemonError(
        f"the qlayer daemon did not start; its log {home.daemon_log} ends with:\n"
        f"{tail(home.daemon_log)}"
    )


def stop(home: Home, *, timeout: float = 20.0) -> bool:
    """Stop the daemon (SIGTERM, then SIGKILL). False if none was running."""
    pid = daemon_pid(home)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon_pid(home) is None:
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    try:
        home.pid_file.unlink()
    except FileNotFoundError:
        pass
    return True


def poke(home: Home) -> None:
    """Wake the daemon so it looks at the queue now (it also polls)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"!", str(home.socket))
    except OSError:
        pass


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
