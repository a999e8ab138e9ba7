"""The end of a step's processes (qlayer.local.procs): cheap when a step forked nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from qlayer.local import procs

# Each case runs in a fresh process, as a worker would: end_descendants() kills every
# descendant of the process calling it, and pytest's own must be left alone.
NOTHING_FORKED = """
from qlayer.local import procs
def scan():
    raise AssertionError("scanned /proc")
procs._all = scan
print(procs.has_children(), procs.end_descendants())
"""

LEFT_RUNNING = """
import os, subprocess, sys
from qlayer.local import procs
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(procs.has_children(), procs.end_descendants() >= 1, end=" ")
try:
    os.kill(child.pid, 0)
    print("alive")
except ProcessLookupError:
    print("gone")
"""


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_step_that_forked_nothing_ends_without_scanning_every_process():
    assert _run(NOTHING_FORKED) == "False 0"


def test_a_child_left_running_is_still_found_and_ended():
    assert _run(LEFT_RUNNING) == "True True gone"


def test_an_ended_child_is_reaped_and_seen(monkeypatch):
    calls = []

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        calls.append((pid, options))
        return (1234, 0)

    monkeypatch.setattr(os, "waitpid", waitpid)
    assert procs.has_children()
    assert calls == [(-1, os.WNOHANG)]
