"""Workers forked while another thread of the daemon holds a lock.

A thread of the daemon is importing a module (it holds that module's import lock) when
a worker is forked; the worker's program imports the same module. Forked from the
daemon, the worker inherits the held lock and hangs for ever; forked from the zygote
(started before any thread), it imports the module itself and answers.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, threading, time, importlib
    from pathlib import Path

    from qlayer.local import procs
    from qlayer.local.admission import encode_arguments
    from qlayer.local.paths import Home
    from qlayer.local.pool import Assignment, WorkerPool
    from qlayer.local.zygote import Zygote
    from qlayer.program import bundle, upload
    from qlayer.store.local import FolderStore

    mode, root = sys.argv[1], Path(sys.argv[2])
    sys.path.insert(0, str(root / "lib"))
    procs.become_subreaper()
    zygote = Zygote.fork() if mode == "zygote" else None
    home = Home.resolve(root / "home")
    program_id = upload(FolderStore(home.artifacts), bundle(root / "program.py"))

    importer = threading.Thread(target=importlib.import_module, args=("slowmod",), daemon=True)
    importer.start()
    while not (root / "importing").exists():
        time.sleep(0.01)
    pool = WorkerPool(home, 1, 4096, None, zygote)
    pool.start()  # forked while the thread holds slowmod's import lock
    [worker] = list(pool)
    message = {
        "op": "validate", "job_id": "20261201-000000-abcdef", "program_id": program_id,
        "arguments": encode_arguments({}), "cli_arguments": [], "backend": None,
        "options": {},
    }
    worker.send(message, Assignment("validate", message["job_id"], 0, None))
    answered = worker.conn.poll(15)
    print("answered" if answered else "hung", flush=True)
    pool.shutdown()
    if zygote is not None:
        zygote.close()
    """
)

SLOWMOD = textwrap.dedent(
    """
    import pathlib, time
    pathlib.Path(__file__).parent.parent.joinpath("importing").touch()
    time.sleep(3)
    VALUE = 1
    """
)

PROGRAM = textwrap.dedent(
    """
    import slowmod
    from qlayer import Workflow

    wf = Workflow("slow-import")


    @wf.stage()
    def only(args):
        return {"value": slowmod.VALUE}
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "expected"), [("zygote", "answered"), ("fork", "hung")])
def test_a_worker_forked_while_a_thread_imports(tmp_path: Path, mode: str, expected: str) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "slowmod.py").write_text(SLOWMOD)
    (tmp_path / "program.py").write_text(PROGRAM)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected, done.stderr


DEAD_ZYGOTE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    from qlayer.local import procs
    from qlayer.local.paths import Home
    from qlayer.local.pool import Assignment, WorkerPool
    from qlayer.local.zygote import Zygote

    procs.become_subreaper()
    zygote = Zygote.fork()
    home = Home.resolve(Path(sys.argv[1]) / "home")
    pool = WorkerPool(home, 1, 4096, None, zygote)
    pool.start()
    [first] = list(pool)
    os.kill(zygote.pid, signal.SIGKILL)
    os.waitpid(zygote.pid, 0)
    pool.replace(first)  # the zygote is gone: forked here instead
    [second] = list(pool)
    second.send({"op": "ping"}, Assignment("ping", "none", 0, None))
    print("pong" if second.conn.poll(30) else "silent", flush=True)
    pool.shutdown()
    """
)


@pytest.mark.slow
def test_a_killed_zygote_does_not_stop_workers_from_being_replaced(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", DEAD_ZYGOTE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "pong", done.stdout + done.stderr
    assert "forking the worker from the daemon" in done.stderr
