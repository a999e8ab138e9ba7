"""Program environments on AWS: where a job's environment is, and unpacking it for a stage.

An environment (:mod:`qlayer.envs`) is built once per stack (:mod:`qlayer.aws.env_build`,
a Batch job) and kept in the artifacts bucket under ``envs/<hash>/``
(:func:`qlayer.keys.env_prefix`):

* ``lock.json``: what to install, written by the client that submitted the first job
  (:func:`qlayer.envs.lock_for`);
* ``env.tar.gz``: the installed packages, one folder's contents;
* ``built.json``: its sizes (:class:`EnvInfo`), written after the archive;
* ``error.json``: ``{"message", "at"}`` when the installer failed.

A job names its environment in its record (``JobRecord.env``; a fan-out child has its
parent's). The stage runners (the stage-runner Lambda, Batch) unpack the
archive into their writable space on first use (:class:`EnvCache`: Lambda's /tmp) and
keep it while the process is warm; it is on ``sys.path`` only while that job's program is
the active one (:class:`qlayer.program.Namespaces`).

The archive comes from a role that ran a package installer, so it is treated as
untrusted: its size is bounded before it is read, members are counted and summed
before anything is written, and only regular files and folders inside the target are
unpacked (Python's ``tarfile`` "data" filter: no absolute paths, no ``..``, no links
out, no devices).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qlayer import keys
from qlayer.aws.store import S3Store
from qlayer.envs import Base
from qlayer.errors import ArtifactError, EnvBuildError

log = logging.getLogger("qlayer.aws")

#: The largest environment archive a runner downloads (``QLAYER_ENV_MAX_ARCHIVE_BYTES``).
MAX_ARCHIVE_BYTES = 2 * 1024**3
#: The most an archive may unpack to (``QLAYER_ENV_MAX_UNPACKED_BYTES``).
MAX_UNPACKED_BYTES = 8 * 1024**3
#: The most members an archive may hold.
MAX_MEMBERS = 200_000
#: A failed build is reported as is to jobs of the same lock for this long; after it,
#: the next such job builds again (the failure may have been the network's).
FAILURE_TTL_S = 3600


#: The runner image's interpreter (``layers/runner/Dockerfile``: python:3.11-slim, Debian,
#: x86_64): requirements for a stack are resolved for it, wherever the client runs.
RUNNER_PYTHON = "3.11"
RUNNER_PLATFORM = "x86_64-manylinux_2_28"


class EnvError(EnvBuildError):
    """An environment cannot be had: its build failed, or its archive is unusable."""


@dataclass(frozen=True)
class EnvInfo:
    """What a build records of an environment (``built.json``).

    Attributes:
        env_hash: The environment's hash.
        archive_bytes: The archive's size.
        unpacked_bytes: The files' total size once unpacked.
        files: How many files it holds.
        packages: ``name==version`` of what was installed.
        build_s: How long the installer took.
    """

    env_hash: str
    archive_bytes: int
    unpacked_bytes: int
    files: int
    packages: tuple[str, ...] = ()
    build_s: float = 0.0

    @property
    def unpacked_mb(self) -> int:
        return -(-self.unpacked_bytes // (1024 * 1024))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["packages"] = list(self.packages)
        return data

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EnvInfo:
        return cls(
            env_hash=keys.check_env_hash(str(raw["env_hash"])),
            archive_bytes=int(raw["archive_bytes"]),
            unpacked_bytes=int(raw["unpacked_bytes"]),
            files=int(raw["files"]),
            packages=tuple(str(p) for p in raw.get("packages") or ()),
            build_s=float(raw.get("build_s") or 0.0),
        )


@dataclass(frozen=True)
class EnvState:
    """Where an environment stands in the bucket.

    Attributes:
        env_hash: The environment's hash.
        info: Its sizes once built, else None.
        failure: The installer's message of a recent failed build, else None.
    """

    env_hash: str
    info: EnvInfo | None = None
    failure: str | None = None

    @property
    def ready(self) -> bool:
        return self.info is not None


def runner_base() -> Base:
    """The base of this process as the runner image's (the build and the stage runners):
    its packages, described for :data:`RUNNER_PLATFORM` so that a client anywhere
    resolves for the same identity."""
    return dataclasses.replace(Base.current(), python_platform=RUNNER_PLATFORM)


def stack_base(store: S3Store) -> Base:
    """The base a client resolves a job's requirements against: the runner image's, as
    its last environment build published it (``envs/base.json``); before any build, this
    client's packages described for the runner's Python and platform (a build then checks
    qiskit and qlayer agree, and says to submit again if they do not)."""
    try:
        raw = store.get_json(keys.ENV_BASE)
        return Base.from_json(raw)
    except (ArtifactError, KeyError, TypeError, ValueError):
        pass
    mine = Base.current()
    return Base(
        python=RUNNER_PYTHON,
        platform=mine.platform,
        packages=dict(mine.packages),
        python_platform=RUNNER_PLATFORM,
    )


def env_state(store: S3Store, env_hash: str, *, now: float | None = None) -> EnvState:
    """What the bucket holds of ``env_hash``: built (its :class:`EnvInfo`), recently failed
    (the installer's message), or neither (it must be built)."""
    try:
        info = EnvInfo.from_json(store.get_json(keys.env_built(env_hash)))
    except ArtifactError:
        info = None
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvError(f"environment {env_hash}: built.json is malformed: {exc}") from exc
    if info is not None:
        return EnvState(env_hash, info=info)
    try:
        error = store.get_json(keys.env_error(env_hash))
    except (ArtifactError, ValueError):
        return EnvState(env_hash)
    if not isinstance(error, Mapping) or not isinstance(error.get("at"), int | float):
        return EnvState(env_hash)  # torn: build again
    if (time.time() if now is None else now) - float(error["at"]) > FAILURE_TTL_S:
        return EnvState(env_hash)
    return EnvState(env_hash, failure=str(error.get("message") or "the build failed"))


def _limit(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise EnvError(f"{name}={raw!r} is not a number of bytes") from None


class EnvCache:
    """Unpacked environments of this process (a warm Lambda's /tmp, a Batch container's).

    Each lives in ``root/<hash>/``, marked complete by ``root/<hash>.ready`` once every
    file is there; a half-unpacked one (a process killed mid-way) is unpacked again.
    When space is short, the least recently used other environments are removed.

    Args:
        store: The artifacts bucket.
        root: Where environments are unpacked.
    """

    def __init__(self, store: S3Store, root: Path) -> None:
        self.store = store
        self.root = root
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}
        self._info: dict[str, EnvInfo] = {}

    def info(self, env_hash: str) -> EnvInfo:
        """What the build recorded of ``env_hash`` (read once per process).

        Raises:
            EnvError: It is not built.
        """
        cached = self._info.get(env_hash)
        if cached is None:
            cached = env_state(self.store, env_hash).info
            if cached is None:
                raise EnvError(f"environment {env_hash} is not built")
            self._info[env_hash] = cached
        return cached

    def path(self, env_hash: str) -> Path:
        """The unpacked environment ``env_hash``, fetched on first use.

        Raises:
            EnvError: It is not built, or its archive is too large, malformed, or holds
                anything but files and folders inside it.
        """
        keys.check_env_hash(env_hash)
        target = self.root / env_hash
        ready = self.root / f"{env_hash}.ready"
        with self._lock:
            self._used[env_hash] = time.monotonic()
            if ready.is_file() and target.is_dir():
                return target
            self.root.mkdir(parents=True, exist_ok=True)
            info = self.info(env_hash)
            self._make_room(info, keep=env_hash)
            shutil.rmtree(target, ignore_errors=True)
            archive = self.root / f"{env_hash}.tar.gz"
            started = time.perf_counter()
            try:
                max_archive = _limit("QLAYER_ENV_MAX_ARCHIVE_BYTES", MAX_ARCHIVE_BYTES)
                max_files = _limit("QLAYER_ENV_MAX_UNPACKED_BYTES", MAX_UNPACKED_BYTES)
                self.store.download_file(keys.env_archive(env_hash), archive, max_bytes=max_archive)
                unpack(archive, target, max_bytes=max_files)
            except (ArtifactError, EnvError) as exc:
                shutil.rmtree(target, ignore_errors=True)
                raise EnvError(f"environment {env_hash}: {exc}") from exc
            finally:
                archive.unlink(missing_ok=True)
            ready.write_text(json.dumps(info.to_json()))
            log.info(
                "environment %s unpacked in %.2f s (%d MB)",
                env_hash,
                time.perf_counter() - started,
                info.unpacked_mb,
            )
            return target

    def _make_room(self, info: EnvInfo, *, keep: str) -> None:
        """Remove other environments, least recently used first, until ``info`` fits
        (its archive and its files at once, while it unpacks)."""
        need = info.archive_bytes + info.unpacked_bytes
        others = sorted(
            (self._used.get(p.name, 0.0), p.name)
            for p in self.root.iterdir()
            if p.is_dir() and p.name != keep
        )
        while shutil.disk_usage(self.root).free < need and others:
            _, name = others.pop(0)
            (self.root / f"{name}.ready").unlink(missing_ok=True)
            shutil.rmtree(self.root / name, ignore_errors=True)
            self._used.pop(name, None)
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise EnvError(
                f"environment {info.env_hash} needs {need // 2**20} MB to unpack; "
                f"{free // 2**20} MB are free here"
            )


def unpack(archive: Path, target: Path, *, max_bytes: int, max_members: int = MAX_MEMBERS) -> int:
    """Unpack a gzipped tar of regular files and folders into ``target``.

    Every member is checked before any is written: at most ``max_members``, sizes adding
    up to at most ``max_bytes``, and each a file or folder whose path stays inside
    ``target`` (no absolute path, no ``..``, no link, no device).

    Returns:
        The bytes unpacked.

    Raises:
        EnvError: The archive breaks one of the rules above, or is not a gzipped tar.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = []
            total = 0
            for member in tar:
                members.append(member)
                if len(members) > max_members:
                    raise EnvError(f"the archive holds more than {max_members} members")
                if not (member.isfile() or member.isdir()):
                    raise EnvError(f"the archive holds {member.name!r}, which is not a file")
                name = member.name
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts or "\\" in name:
                    raise EnvError(f"the archive holds {name!r}, outside its folder")
                total += member.size
                if total > max_bytes:
                    raise EnvError(f"the archive unpacks to more than {max_bytes} bytes")
            target.mkdir(parents=True, exist_ok=True)
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise EnvError(f"the archive cannot be unpacked: {exc}") from exc
    return total
