"""A stage that forks a helper process of its own (as multiprocessing users do)."""

import multiprocessing
import os
import time
from pathlib import Path

from qlayer import Done, Workflow

wf = Workflow("forker", params={"markers": ""})


def linger(seconds):
    time.sleep(seconds)


@wf.stage()
def spawn(args, ctx):
    folder = Path(args["markers"])
    child = multiprocessing.get_context("fork").Process(target=linger, args=(120,))
    child.start()
    with open(folder / "grandchildren.pid", "a") as pids:
        pids.write(f"{child.pid}\n")
    (folder / f"{ctx.job_id}.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (folder / "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never got its go file")
        time.sleep(0.02)
    child.kill()
    child.join()
    return Done({"run": ctx.run})
