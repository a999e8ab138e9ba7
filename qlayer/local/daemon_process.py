"""The daemon's process: lock the home, import what stages use, fork the zygote, run.

``qlayer up`` starts it as ``python -m qlayer.local.daemon_process --home H``; the engine
itself is :class:`qlayer.local.daemon.Daemon`.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
from typing import Any

from qlayer.local import procs
from qlayer.local.daemon import Daemon
from qlayer.local.paths import Home
from qlayer.local.zygote import Zygote

log = logging.getLogger("qlayer.daemon")


def _preload() -> None:
    """Import what stages use, once, before forking workers."""
    import numpy  # noqa: F401
    import qiskit
    import qiskit.primitives
    import qiskit.qpy  # noqa: F401
    import qiskit_aer
    import qiskit_aer.primitives  # noqa: F401
    import scipy.optimize  # noqa: F401
    from qiskit.transpiler import generate_preset_pass_manager  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qlayer-daemon", description="the qlayer local daemon")
    parser.add_argument("--home", default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    os.umask(0o077)  # everything the daemon and its workers write is private to its user
    home = Home.resolve(args.home)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("qiskit").setLevel(logging.WARNING)
    lock = open(home.lock_file, "a+")  # noqa: SIM115 - held for the daemon's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log.info("another daemon holds %s; exiting", home.lock_file)
        return 0
    _preload()
    # Before anything starts a thread: every worker is forked from this one process, so
    # none inherits a lock some thread of the daemon held (qlayer.local.zygote).
    zygote = Zygote.fork(lock_fd=lock.fileno())
    daemon = Daemon(
        home,
        workers=args.workers or _env_int("QLAYER_WORKERS"),
        lock_fd=lock.fileno(),
        zygote=zygote,
    )

    def stop(signum: int, frame: Any) -> None:
        daemon.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs.end_leftovers(home.workers_file, _old_pid(home))
    procs.become_subreaper()  # a killed worker's orphans come here and are reaped
    home.pid_file.write_text(str(os.getpid()))
    try:
        daemon.run()
    finally:
        try:
            if home.pid_file.read_text().strip() == str(os.getpid()):
                home.pid_file.unlink()
        except FileNotFoundError:
            pass
    log.info("daemon stopped")
    return 0


def _old_pid(home: Home) -> int | None:
    try:
        return int(home.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


if __name__ == "__main__":
    sys.exit(main())
