"""The file system operations one fan-out child makes on the local substrate, alone.

A child of a fan-out writes ``jobs/<id>/stages/0000-<stage>/output.json`` and
``jobs/<id>/result.json`` (each through a temporary file and a rename) and appends two
lines to ``jobs/<id>/logs/0000-<stage>.log``: four folders, three files. This replays
just those operations, N children at a time, in rounds, beside one ``mkdir`` per child,
so the disk's own metadata latency (and how much it moves between rounds) can be read
next to ``bench/scale.py``'s fan-out figures.

    .venv/bin/python bench/fs_ops.py [--children 3000] [--rounds 3] [--dir DIR]

``--dir`` defaults to a temporary folder on the same file system as ``$QLAYER_HOME``
(``~/.qlayer``) would be: pass one on the disk you care about.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _put(path: str) -> None:
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b'{"kind":"done","seq":0}')
    os.close(fd)
    os.replace(temporary, path)


def _append(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, b"2026-12-01T00:00:00 INFO    stage child started (run 1, step 0)\n")
    os.close(fd)


def one_folder(job: str) -> None:
    """The floor: one folder per child, nothing in it."""
    os.mkdir(job)


def child(job: str) -> None:
    """What a child's worker writes today."""
    os.makedirs(job + "/stages/0000-child")
    os.mkdir(job + "/logs")
    _append(job + "/logs/0000-child.log")
    _put(job + "/stages/0000-child/output.json")
    _put(job + "/result.json")
    _append(job + "/logs/0000-child.log")


def _time(root: Path, name: str, fn: Callable[[str], None], n: int) -> float:
    top = root / name
    top.mkdir()
    started = time.perf_counter()
    for i in range(n):
        fn(f"{top}/20261201-000000-abcdef_1_{i}")
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    base = args.dir or Path.home()
    root = Path(tempfile.mkdtemp(prefix="qlayer-fs-ops-", dir=base))
    try:
        print(f"{args.children} children a round, in {root}")
        print("| round | one folder a child | a child's folders and files |")
        print("|---|---:|---:|")
        for rnd in range(args.rounds):
            floor = _time(root, f"floor{rnd}", one_folder, args.children)
            work = _time(root, f"child{rnd}", child, args.children)
            print(f"| {rnd + 1} | {floor * 1e6:.0f} µs | {work * 1e6:.0f} µs |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
