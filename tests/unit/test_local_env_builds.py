"""Local program environments: built whole or not at all, one per worker, reclaimed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlayer import keys
from qlayer.envs import Base, Lock
from qlayer.local import envs
from qlayer.local.paths import Home
from qlayer.local.pool import WorkerPool
from qlayer.store.local import FolderStore

A = "a" * 32
B = "b" * 32


def built(root: Path, env: str, used_days_ago: float = 0.0) -> Path:
    folder = root / env
    (folder / "site").mkdir(parents=True)
    (folder / "env.json").write_text("{}")
    mark = folder / envs.USED_MARK
    mark.touch()
    at = time.time() - used_days_ago * 86400
    os.utime(mark, (at, at))
    return folder


def test_prune_keeps_live_and_recent_environments_and_removes_the_rest(tmp_path):
    root = tmp_path / "envs"
    live = built(root, A, used_days_ago=90)
    recent = built(root, "c" * 32, used_days_ago=1)
    old = built(root, B, used_days_ago=90)
    dead_build = root / ".building-dddd-999999999-0"
    dead_build.mkdir()
    dry = envs.prune_envs(root, [A], older_than_s=30 * 86400, dry_run=True)
    assert dry.envs == [B] and old.exists()
    report = envs.prune_envs(root, [A], older_than_s=30 * 86400)
    assert report.envs == [B] and report.bytes > 0
    assert live.exists() and recent.exists() and not old.exists()
    assert not dead_build.exists()  # its daemon is gone
    assert envs.prune_envs(root, [], older_than_s=None).envs == [A, "c" * 32]


def test_a_failed_build_leaves_nothing_and_says_why(tmp_path):
    store = FolderStore(tmp_path / "artifacts")
    base = Base.current()
    lock = Lock(("tabulate",), ("tabulate==0.0.1",), (), base.identity())
    store.put_json(keys.env_lock(lock.hash), lock.to_json())
    root = tmp_path / "envs"
    builds = envs.Builds(root, store)
    assert builds.start(lock.hash) is None and builds.pending()
    assert builds.start(lock.hash) is None and len(builds.running) == 1  # once per hash
    finished: list[envs.Finished] = []
    for _ in range(6000):  # at most 5 minutes
        finished = builds.poll()
        if finished:
            break
        time.sleep(0.05)
    assert not finished[0].ok and "tabulate==0.0.1" in finished[0].message
    assert list(root.iterdir()) == []
    assert not envs.is_built(root, lock.hash)


def test_a_lock_for_another_base_is_not_built(tmp_path):
    store = FolderStore(tmp_path / "artifacts")
    lock = Lock(("x",), ("x==1",), (), {**Base.current().identity(), "qiskit": "1.0.0"})
    store.put_json(keys.env_lock(lock.hash), lock.to_json())
    failed = envs.Builds(tmp_path / "envs", store).start(lock.hash)
    assert failed is not None and "submit it again" in failed.message


def test_leftovers_of_a_build_cut_short_are_removed_before_building_again(tmp_path):
    store = FolderStore(tmp_path / "artifacts")
    lock = Lock(("tabulate",), ("tabulate==0.0.1",), (), Base.current().identity())
    store.put_json(keys.env_lock(lock.hash), lock.to_json())
    root = tmp_path / "envs"
    torn = root / f".building-{lock.hash}-1-0"
    (torn / "site").mkdir(parents=True)
    half = root / lock.hash  # a folder without env.json is not an environment
    half.mkdir()
    builds = envs.Builds(root, store)
    builds.start(lock.hash)
    try:
        assert not torn.exists() and not half.exists()
        assert not envs.is_built(root, lock.hash)
    finally:
        builds.shutdown()
    assert list(root.iterdir()) == []


def test_a_worker_runs_one_environment_for_life(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "only_in_env.py").write_text("X = 1\n")
    code = f"""
import sys
from qlayer.local import envs
envs.activate(None, None)
try:
    import only_in_env
    raise SystemExit("leaked")
except ModuleNotFoundError:
    pass
envs.activate({A!r}, {str(site)!r})
import only_in_env
for env, path in ((None, None), ({B!r}, {str(site)!r})):
    try:
        envs.activate(env, path)
        raise SystemExit("switched")
    except RuntimeError as exc:
        print(exc)
envs.activate({A!r}, {str(site)!r})
print(envs.active())
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.count("cannot run a stage of") == 2
    assert done.stdout.strip().endswith(A)


@pytest.fixture
def pool(tmp_path):
    home = Home.resolve(tmp_path / "home")
    pool = WorkerPool(home, 2, 1024, None)
    pool.start()
    yield pool
    pool.shutdown()


def test_the_pool_keeps_workers_per_environment(pool):
    one, two = pool.workers
    idle = list(pool.idle())
    assert pool.pick(idle, None) is one  # the base: a worker that runs no environment
    one.env = A
    assert pool.pick(idle, A) is one
    assert pool.pick(idle, None) is two
    assert pool.pick(idle, B) is two  # a fresh one gets B
    two.env = B
    assert pool.pick([one], B) is not one  # only A's is idle: it is replaced by a fresh one
    assert one not in pool.workers and len(pool) == 2
    fresh = next(w for w in pool.workers if w is not two)
    assert fresh.env is None
