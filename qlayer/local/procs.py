"""The processes a stage forks end with the stage.

Each worker leads its own process group and is a child subreaper
(``PR_SET_CHILD_SUBREAPER``): everything a stage forks is in the worker's group, and
an orphaned grandchild becomes the worker's child. When a stage ends the worker kills
and reaps them all (:func:`end_descendants`); when the daemon stops a worker (timeout,
cancel, death) it kills the worker's whole group (:func:`kill_group`); and a daemon
started after a crash ends what the dead daemon's workers left (:func:`end_leftovers`).
A process that leaves its group *and* session (``setsid``) on purpose is not followed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing.process
import os
import signal
from pathlib import Path

log = logging.getLogger("qlayer.daemon")

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphaned descendants of this process are re-parented to it, not to init."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except OSError:  # pragma: no cover - not Linux
        pass


def lead_group() -> None:
    """Make this process the leader of a new process group (its pid is the group id)."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, sid) of a live, non-zombie process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[2]), int(fields[3])


def _all() -> dict[int, tuple[int, int, int]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(int(entry))) is not None:
            found[int(entry)] = info
    return found


def descendants(root: int) -> list[int]:
    """Every live process below ``root``, or in ``root``'s process group (not ``root``)."""
    table = _all()
    below: set[int] = {pid for pid, (_pp, pgid, _sid) in table.items() if pgid == root}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _pg, _sid) in table.items():
            if ppid == parent and pid not in below:
                below.add(pid)
                frontier.append(pid)
    below.discard(root)
    return sorted(below)


def _reap_children() -> None:
    """Collect every ended child of this process (never blocks)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def has_children() -> bool:
    """Whether this process has a child, live or ended (one system call, no /proc scan).

    An ended child is reaped here. With no child there is no descendant either: a
    process whose parent dies is re-parented to this one (a subreaper) or to init.
    """
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True  # 0: a live child; a pid: one that ended (there may be more)


def end_descendants() -> int:
    """SIGKILL everything this process forked (or adopted) and reap it; how many.

    A step that forked nothing costs one system call: the scan of ``/proc`` (every
    process on the machine) runs only when this process has a child.
    """
    if not has_children():
        return 0
    me = os.getpid()
    killed = 0
    for _round in range(10):  # a process may fork while its siblings are killed
        found = descendants(me)
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        for pid in found:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)  # our child (forked or adopted): dead within a moment
    _reap_children()
    if killed:
        # multiprocessing would poll the Process objects of the killed forever
        children = getattr(multiprocessing.process, "_children", None)
        if isinstance(children, set):
            children.clear()
    return killed


def kill_group(pgid: int) -> list[int]:
    """SIGKILL process group ``pgid``; the pids that were in it."""
    members = [pid for pid, (_pp, pg, _sid) in _all().items() if pg == pgid]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return members


def reap(pids: list[int]) -> None:
    """Wait for those of ``pids`` that are (now) this process's children."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)


def end_leftovers(groups_file: Path, old_daemon: int | None) -> None:
    """After a crash: kill what the dead daemon's workers left running.

    Only processes in one of the recorded worker groups *and* in the dead daemon's own
    session (it leads one when ``qlayer up`` starts it) are killed: a recycled pid can
    never make this touch anyone else's processes.
    """
    if old_daemon is None or old_daemon == os.getpid():
        return
    try:
        groups = {int(word) for word in groups_file.read_text().split()}
    except (OSError, ValueError):
        return
    for pid, (_pp, pgid, sid) in _all().items():
        if pgid in groups and sid == old_daemon and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                log.info("ended process %d left by a stage of the previous daemon", pid)


def record_groups(groups_file: Path, pgids: list[int]) -> None:
    """Remember the workers' process groups (for :func:`end_leftovers`)."""
    try:
        groups_file.write_text("".join(f"{pgid}\n" for pgid in pgids))
    except OSError:  # a full disk must not stop a worker from starting
        log.warning("cannot record the workers' process groups in %s", groups_file)
