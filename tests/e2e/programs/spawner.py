"""A stage that forks processes and leaves them behind: children, grandchildren, a shell.

Argument ``pids`` names a file each forked pid is appended to; ``mode`` is ``leave``
(return at once), ``wait`` (then wait for ``<markers>/go``) or ``hang`` (sleep past the
stage's timeout).
"""

import multiprocessing
import os
import subprocess
import time
from pathlib import Path

from qlayer import Done, Next, Workflow

wf = Workflow("spawner", params={"mode": "leave", "pids": "", "markers": "", "n": 4})


def linger():
    time.sleep(300)


def grandchild():
    # A child that forks a grandchild and exits: the grandchild is an orphan.
    pid = os.fork()
    if pid == 0:
        time.sleep(300)
        os._exit(0)
    with open(os.environ["SPAWNER_PIDS"], "a") as pids:
        pids.write(f"{pid}\n")


def spawn_all(args):
    os.environ["SPAWNER_PIDS"] = args["pids"]
    forked = []
    for _ in range(args["n"]):
        child = multiprocessing.get_context("fork").Process(target=linger)
        child.start()
        forked.append(child.pid)
    orphaner = multiprocessing.get_context("fork").Process(target=grandchild)
    orphaner.start()
    orphaner.join()
    forked.append(subprocess.Popen(["sleep", "300"]).pid)
    # A child that dies at once and is never waited for: a zombie unless reaped.
    forked.append(subprocess.Popen(["true"]).pid)
    with open(args["pids"], "a") as pids:
        pids.write("".join(f"{pid}\n" for pid in forked))


@wf.stage()
def start(args, ctx):
    spawn_all(args)
    if args["mode"] == "wait":
        (Path(args["markers"]) / f"{ctx.job_id}.started").touch()
        while not (Path(args["markers"]) / "go").exists():
            time.sleep(0.02)
    if args["mode"] == "hang":
        return Next("hang", args)
    return Done({"spawned": True})


@wf.stage(timeout_s=3)
def hang(args):
    spawn_all(args)
    time.sleep(300)
    return Done({"spawned": True})
