"""Warm workers forked from a process that never runs a thread.

The daemon runs threads (provider calls, notifications, retention). ``fork`` copies only
the calling thread: a lock another thread held at that moment — an import lock, a
library's, a logging handler's — stays held in the child for ever, and the child hangs
the first time it needs it. Workers forked at start-up, before any thread, are safe;
the ones forked later to replace a worker (after a cancel, a timeout, a death) were not.

So the daemon forks one *zygote* right after it imported qiskit and before it starts
anything else. The zygote stays single-threaded and forks every worker on request, warm
(qiskit imported) and with no lock held. A worker is forked twice (zygote → intermediate
→ worker, the intermediate exiting at once), so it is re-parented to the daemon, a child
subreaper (:func:`qlayer.local.procs.become_subreaper`): the daemon waits for it and
reads its exit code as for any child. The worker dies with the daemon
(``PR_SET_PDEATHSIG``, set once it has been re-parented); the zygote dies with it too.

Protocol: a ``SOCK_SEQPACKET`` socket pair; the daemon sends one JSON request per
worker, the zygote answers ``{"pid": ...}`` with the daemon's end of the worker's
socket attached (``SCM_RIGHTS``). Both ends are this user's own processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("qlayer.daemon")

_PR_SET_PDEATHSIG = 1
#: How long a worker waits to be re-parented to the daemon once its intermediate exited.
REPARENT_TIMEOUT_S = 10.0
#: How long the daemon waits for the zygote to answer a request.
SPAWN_TIMEOUT_S = 30.0
_MAX_MESSAGE = 65536


class ZygoteError(RuntimeError):
    """The zygote did not answer (it died, or never started)."""


def die_with(parent: int) -> None:
    """SIGKILL this process when its parent dies; exit now if ``parent`` is gone already."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:
        os._exit(1)  # re-parented to someone else: the daemon died meanwhile


class ChildProcess:
    """A worker as the daemon holds it: the part of ``multiprocessing.Process`` it uses.

    The worker is the daemon's child (re-parented to it), so ``waitpid`` reads its exit
    code. ``sentinel`` (a pidfd) becomes readable when it ends, for
    :func:`multiprocessing.connection.wait`.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sentinel = os.pidfd_open(pid)
        self._exitcode: int | None = None

    def _poll(self, block: bool = False) -> None:
        if self._exitcode is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (procs.reap after a kill)
            self._exitcode = -signal.SIGKILL
            return
        if pid:
            self._exitcode = os.waitstatus_to_exitcode(status)

    @property
    def exitcode(self) -> int | None:
        """The exit code (negative: the signal that ended it), or None while it runs."""
        self._poll()
        return self._exitcode

    def is_alive(self) -> bool:
        return self.exitcode is None

    def kill(self) -> None:
        if self.is_alive():  # never signal a pid that was reaped (it may be reused)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def join(self, timeout: float | None = None) -> None:
        if self.is_alive():
            select.select([self.sentinel], [], [], timeout)
        self._poll()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.sentinel)


class Zygote:
    """The daemon's handle on its zygote; :meth:`fork` it before any thread starts."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self._sock = sock
        self.pid = pid

    @classmethod
    def fork(cls, *, lock_fd: int | None = None) -> Zygote:
        """Fork the zygote now (the caller must have no other thread).

        Args:
            lock_fd: The daemon's lock (the zygote and its workers drop their copy).
        """
        daemon = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the zygote
            try:
                ours.close()
                _serve(theirs, daemon, lock_fd)
            finally:
                os._exit(0)
        theirs.close()
        return cls(ours, pid)

    def spawn(self, request: dict[str, Any]) -> tuple[ChildProcess, Connection]:
        """Fork a worker; its process and the daemon's end of its pipe.

        Args:
            request: :func:`qlayer.local.worker.worker_main`'s arguments after the
                pipe: ``{"args": [...], "kwargs": {...}}``, JSON.

        Raises:
            ZygoteError: The zygote is gone or did not answer.
        """
        try:
            self._sock.send(json.dumps(request).encode())
            ready, _w, _x = select.select([self._sock], [], [], SPAWN_TIMEOUT_S)
            if not ready:
                raise ZygoteError(f"the zygote did not fork a worker in {SPAWN_TIMEOUT_S:.0f} s")
            raw, fds, _flags, _addr = socket.recv_fds(self._sock, _MAX_MESSAGE, 1)
        except OSError as exc:
            raise ZygoteError(f"the zygote is gone: {exc}") from exc
        if not raw or not fds:
            for fd in fds:
                os.close(fd)
            raise ZygoteError("the zygote is gone")
        reply = json.loads(raw)
        return ChildProcess(int(reply["pid"])), Connection(fds[0])

    def close(self) -> None:
        """Let the zygote exit (it reads end of file) and reap it."""
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(self.pid, 0)


def _serve(sock: socket.socket, daemon: int, lock_fd: int | None) -> None:
    """The zygote's loop: one worker per request, until the daemon closes its end."""
    from qlayer.local.worker import release_daemon_lock

    die_with(daemon)
    release_daemon_lock(lock_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            raw = sock.recv(_MAX_MESSAGE)
        except OSError:
            return
        if not raw:
            return
        request = json.loads(raw)
        daemon_end, worker_end = socket.socketpair()
        pid = _fork_worker(sock, daemon_end, worker_end, daemon, request)
        worker_end.close()
        try:
            socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [daemon_end.fileno()])
        except OSError:
            return
        finally:
            daemon_end.close()


def _fork_worker(
    sock: socket.socket,
    daemon_end: socket.socket,
    worker_end: socket.socket,
    daemon: int,
    request: dict[str, Any],
) -> int:
    """Fork the worker through an intermediate that exits at once; the worker's pid."""
    read_pid, write_pid = os.pipe()
    middle = os.fork()
    if middle == 0:  # the intermediate
        try:
            worker = os.fork()
            if worker == 0:
                os.close(read_pid)
                os.close(write_pid)
                _become_worker(sock, daemon_end, worker_end, daemon, request)
            os.write(write_pid, str(worker).encode())
        finally:
            os._exit(0)
    os.close(write_pid)
    with os.fdopen(read_pid, "rb") as pipe:
        pid = int(pipe.read() or b"0")
    os.waitpid(middle, 0)  # once it is reaped, the worker is the daemon's child
    return pid


def _become_worker(
    sock: socket.socket,
    daemon_end: socket.socket,
    worker_end: socket.socket,
    daemon: int,
    request: dict[str, Any],
) -> None:
    from qlayer.local.worker import worker_main

    code = 1
    try:
        sock.close()
        daemon_end.close()
        middle = os.getppid()
        deadline = time.monotonic() + REPARENT_TIMEOUT_S
        while os.getppid() == middle and time.monotonic() < deadline:
            time.sleep(0.0005)
        die_with(daemon)
        conn = Connection(worker_end.detach())
        # done above (die_with): its parent is the daemon now
        worker_main(conn, *request["args"], watch_parent=False, **request.get("kwargs", {}))
        code = 0
    except BaseException:
        log.exception("a worker forked by the zygote failed")
    finally:
        os._exit(code)
