"""Program environments on this machine: built once, cached, shared, reclaimed.

An environment (:mod:`qlayer.envs`) is a folder ``$QLAYER_HOME/envs/<hash>/``:

* ``site/`` — the lock's packages, installed by uv with ``--target`` (never the base's:
  qiskit, numpy... stay the daemon's own);
* ``env.json`` — the lock, when it was built and how long it took;
* ``build.log`` — what uv said.

It is built in ``envs/.building-<hash>-<pid>-<n>/`` and renamed into place when the
install succeeded, so an environment either exists whole or not at all: a daemon killed
mid-build leaves only a ``.building-*`` folder, removed by the next build of that hash
or by ``qlayer prune``. The daemon builds each hash once at a time, however many jobs
wait for it (:class:`Builds`). A worker that runs a stage of such a job has ``site/``
added to its ``sys.path`` (:func:`activate`) and from then on runs stages of jobs with
that environment only (:meth:`qlayer.local.pool.WorkerPool.pick`).

Environments are reclaimed by :func:`prune_envs` (``qlayer prune`` and the daemon's
retention): one no live job refers to and unused for longer than the retention goes.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import os
import shutil
import signal
import site
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qlayer import keys
from qlayer.envs import Base, Lock, install_command, load_lock, uv
from qlayer.envs.uv import uv_bin
from qlayer.errors import QlayerError
from qlayer.store.base import ArtifactStore

__all__ = [
    "Builds",
    "EnvPruneReport",
    "Finished",
    "activate",
    "active",
    "describe",
    "env_dir",
    "is_built",
    "prune_envs",
    "site_dir",
    "stop_builder",
    "touch",
]

log = logging.getLogger("qlayer.daemon")

#: How long one build may take (``QLAYER_ENV_BUILD_TIMEOUT_S``), in seconds.
BUILD_TIMEOUT_S = 900.0
#: The file whose mtime says when an environment was last used by a job.
USED_MARK = "used"
#: The file of a build folder holding its uv process's pid.
BUILDER_PID = "builder.pid"
_SEQUENCE = itertools.count()
#: Runs ``argv[2:]`` (uv) so that it is killed when the daemon dies (Linux's
#: PR_SET_PDEATHSIG, kept across exec), like the workers: a killed daemon leaves no build
#: running. A process of its own, as a pre-exec hook is unsafe in a daemon with threads.
_DIES_WITH_DAEMON = [
    sys.executable,
    "-S",
    "-c",
    "import ctypes, os, sys\n"
    "try:\n ctypes.CDLL('libc.so.6').prctl(1, 9, 0, 0, 0)\n"
    "except OSError:\n pass\n"
    "os.getppid() == int(sys.argv[1]) or os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n",
]


def build_timeout_s() -> float:
    return uv.build_timeout_s(BUILD_TIMEOUT_S)


def env_dir(envs: Path, env: str) -> Path:
    """The folder of environment ``env`` under ``envs`` (whether built or not)."""
    return envs / keys.check_env_hash(env)


def site_dir(envs: Path, env: str) -> Path:
    """What a worker puts on ``sys.path`` for environment ``env``."""
    return env_dir(envs, env) / "site"


def is_built(envs: Path, env: str) -> bool:
    """Whether environment ``env`` is built (its folder exists only once whole)."""
    return (env_dir(envs, env) / "env.json").is_file()


def touch(envs: Path, env: str) -> None:
    """Record that a job is using environment ``env`` now (for retention)."""
    try:
        (env_dir(envs, env) / USED_MARK).touch()
    except OSError:
        pass


@dataclass
class Build:
    """One environment being built by a uv process."""

    env: str
    lock: Lock
    folder: Path
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]
    started: float
    deadline: float


@dataclass
class Finished:
    """A build that ended: its environment, whether it worked, and why not."""

    env: str
    ok: bool
    seconds: float
    message: str = ""
    packages: list[str] = field(default_factory=list)


class Builds:
    """The daemon's environment builds: at most one per hash at a time.

    Args:
        envs: ``$QLAYER_HOME/envs``.
        store: The artifact store holding the locks (``envs/<hash>/lock.json``).
        base: The base the workers run on (default: this process's).
    """

    def __init__(self, envs: Path, store: ArtifactStore, base: Base | None = None) -> None:
        self.envs = envs
        self.store = store
        self._base = base
        self.running: dict[str, Build] = {}

    @property
    def base(self) -> Base:
        if self._base is None:
            self._base = Base.current()
        return self._base

    def start(self, env: str) -> Finished | None:
        """Start building ``env`` unless it is built or being built.

        Returns:
            None when the build is under way (or was already); a :class:`Finished` at
            once when it cannot start (no lock, a lock for another base, no uv).
        """
        if env in self.running or is_built(self.envs, env):
            return None
        started = time.time()
        try:
            lock = load_lock(self.store, env)
            _check_base(lock, self.base)
            self.envs.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._remove_leftovers(env)
            folder = self.envs / f".building-{env}-{os.getpid()}-{next(_SEQUENCE)}"
            folder.mkdir(mode=0o700)
            (folder / "requirements.txt").write_text(lock.install_text())
            log_file = open(folder / "build.log", "wb")  # noqa: SIM115 - closed in poll
            command = [
                *_DIES_WITH_DAEMON,
                str(os.getpid()),
                uv_bin(),
                *install_command(
                    lock, str(folder / "requirements.txt"), str(folder / "site"), self.base
                ),
            ]
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not in the daemon's group: its signals are ours
            )
            (folder / BUILDER_PID).write_text(str(process.pid))
        except (QlayerError, OSError) as exc:
            return Finished(env, False, time.time() - started, f"{type(exc).__name__}: {exc}")
        log.info("building environment %s: %s", env, ", ".join(lock.install))
        self.running[env] = Build(
            env, lock, folder, process, log_file, started, started + build_timeout_s()
        )
        return None

    def poll(self) -> list[Finished]:
        """The builds that ended since the last call (each put in place, or removed)."""
        done = []
        now = time.time()
        for env, build in list(self.running.items()):
            code = build.process.poll()
            if code is None and now < build.deadline:
                continue
            if code is None:
                build.process.kill()
                build.process.wait()
            del self.running[env]
            build.log_file.close()
            done.append(self._finish(build, code, time.time()))
        return done

    def pending(self) -> bool:
        return bool(self.running)

    def shutdown(self) -> None:
        """Stop every build (the daemon is stopping): nothing half-built is left in use."""
        for build in self.running.values():
            build.process.kill()
            build.process.wait()
            build.log_file.close()
            shutil.rmtree(build.folder, ignore_errors=True)
        self.running.clear()

    def _finish(self, build: Build, code: int | None, now: float) -> Finished:
        seconds = now - build.started
        output = (build.folder / "build.log").read_text(errors="replace")
        if code != 0:
            shutil.rmtree(build.folder, ignore_errors=True)
            said = " ".join(output.split())[-4000:] or f"uv exited with code {code}"
            if code is None:
                said = f"the build did not finish within {build_timeout_s():g} s. {said}"
            return Finished(build.env, False, seconds, said)
        record = {
            **build.lock.to_json(),
            "built_at": now,
            "build_seconds": round(seconds, 3),
        }
        (build.folder / "env.json").write_text(json.dumps(record, indent=1))
        (build.folder / USED_MARK).touch()
        target = env_dir(self.envs, build.env)
        try:
            os.rename(build.folder, target)  # whole, or not at all
        except OSError:
            if not is_built(self.envs, build.env):
                raise
            shutil.rmtree(build.folder, ignore_errors=True)  # another build won: use it
        log.info("environment %s built in %.1f s", build.env, seconds)
        return Finished(build.env, True, seconds, packages=list(build.lock.install))

    def _remove_leftovers(self, env: str) -> None:
        """``.building-<env>-*`` folders of builds that died with an earlier daemon."""
        for leftover in self.envs.glob(f".building-{env}-*"):
            if leftover not in {b.folder for b in self.running.values()}:
                stop_builder(leftover)
                shutil.rmtree(leftover, ignore_errors=True)
        broken = env_dir(self.envs, env)
        if broken.exists() and not is_built(self.envs, env):
            shutil.rmtree(broken, ignore_errors=True)


def stop_builder(folder: Path) -> None:
    """End the uv process still installing into ``folder``, if there is one (a daemon
    killed mid-build leaves it running: it is in a session of its own)."""
    try:
        pid = int((folder / BUILDER_PID).read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(folder).encode() in command:  # that process, not another with its pid
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _check_base(lock: Lock, base: Base) -> None:
    have = base.identity()
    if dict(lock.base) != have:
        from qlayer.errors import EnvBuildError

        raise EnvBuildError(
            f"this environment was resolved for {dict(lock.base)}, but the daemon runs on "
            f"{have} (qlayer or qiskit changed since the job was submitted): submit it again"
        )


# -- the worker's half ---------------------------------------------------------------------
_ACTIVE: list[str] = []


def activate(env: str | None, path: str | None) -> None:
    """Make environment ``env`` importable in this worker, for good.

    A worker runs one environment in its life: the first stage that names one adds its
    ``site/`` to ``sys.path`` (after the base's folders, so nothing of the base is
    shadowed; ``.pth`` files processed); every later stage must name the same.

    Raises:
        RuntimeError: The worker has another environment (or has one and is asked for
            the base). The daemon chooses workers so that this does not happen; the
            check keeps one program's packages from ever reaching another's.
    """
    current = _ACTIVE[0] if _ACTIVE else None
    if env == current:
        return
    if current is not None or env is None or path is None:
        raise RuntimeError(
            f"this worker runs environment {current or 'base'}; it cannot run a stage of "
            f"{env or 'the base'}"
        )
    if not os.path.isdir(path):
        raise RuntimeError(f"environment {env} is not built ({path} is missing)")
    site.addsitedir(path)
    importlib.invalidate_caches()
    _ACTIVE.append(env)


def active() -> str | None:
    """The environment this process runs (None: the base)."""
    return _ACTIVE[0] if _ACTIVE else None


# -- retention -----------------------------------------------------------------------------
@dataclass
class EnvPruneReport:
    """Environments a prune removed (or, dry, would remove) and the disk they used."""

    envs: list[str] = field(default_factory=list)
    bytes: int = 0


def prune_envs(
    envs: Path,
    live: Iterable[str],
    *,
    older_than_s: float | None,
    dry_run: bool = False,
    now: float | None = None,
) -> EnvPruneReport:
    """Remove the environments no live job refers to and unused for ``older_than_s``
    (None: whatever their age), and the leftovers of builds that died.

    Args:
        envs: ``$QLAYER_HOME/envs``.
        live: The environments of jobs that have not ended (never removed).
    """
    from qlayer.local.retention import _disk_usage

    report = EnvPruneReport()
    if not envs.is_dir():
        return report
    now = time.time() if now is None else now
    keep = set(live)
    for folder in sorted(envs.iterdir()):
        name = folder.name
        if name.startswith(".building-"):
            if not _builder_alive(name) and not dry_run:
                stop_builder(folder)
                shutil.rmtree(folder, ignore_errors=True)
            continue
        if name.startswith(".") or name in keep:
            continue
        mark = folder / USED_MARK
        try:
            used = mark.stat().st_mtime if mark.exists() else folder.stat().st_mtime
        except OSError:
            continue
        if older_than_s is not None and now - used < older_than_s:
            continue
        report.envs.append(name)
        report.bytes += _disk_usage(folder)
        if not dry_run:
            trash = envs / f".removing-{name}-{os.getpid()}"
            try:
                os.rename(folder, trash)  # gone at once for the daemon, then deleted
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
    return report


def _builder_alive(name: str) -> bool:
    """Whether the daemon that started build folder ``.building-<env>-<pid>-<n>`` lives."""
    try:
        pid = int(name.split("-")[2])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(envs: Path, env: str) -> dict[str, Any]:
    """What ``env.json`` says of a built environment ({} if not built)."""
    try:
        data: dict[str, Any] = json.loads((env_dir(envs, env) / "env.json").read_text())
    except (OSError, ValueError):
        return {}
    return data
