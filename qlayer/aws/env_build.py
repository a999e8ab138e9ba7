"""The environment build on AWS: one Batch job installs a lock and stores the result.

``python -m qlayer.aws.env_build --env <hash>`` runs in the runner image (the base every
stage runs on) on the CPU queue, started by the state machine's "Build environment"
state only when the bucket has no ``envs/<hash>/built.json``:

1. read the lock (``envs/<hash>/lock.json``) and check it was resolved for this image's
   base (Python, platform, qiskit, qlayer);
2. install exactly its pins with uv into a folder (:func:`qlayer.envs.install_command`:
   ``--no-deps``, nothing of the base reinstalled);
3. store the folder as ``envs/<hash>/env.tar.gz``, then ``built.json`` (its sizes), which
   is what says the environment exists.

When the installer fails, ``envs/<hash>/error.json`` holds its message and the job ends
in ERROR with it ("Check environment"). The exit status is 0 whenever an outcome was
recorded, a failed install included (it is the job's business, not Batch's: no retry);
non-zero only when nothing could be recorded.

Each build also writes the image's base to ``envs/base.json``, which clients resolve
requirements against (:func:`qlayer.aws.envs.stack_base`).

The job's role may read and write ``envs/*`` and nothing else: the installer runs code
from the package index (a source distribution's build), so it gets no job data, no table
and no secret.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from qlayer import keys
from qlayer.aws.envs import EnvInfo, runner_base
from qlayer.aws.store import S3Store
from qlayer.envs import Base, Lock, install_command, load_lock, uv
from qlayer.envs.uv import run_uv
from qlayer.errors import ArtifactError, QlayerError

log = logging.getLogger("qlayer.aws")

#: How long the installer may run (``QLAYER_ENV_BUILD_TIMEOUT_S``); the job definition's
#: timeout is a little longer.
BUILD_TIMEOUT_S = 1500.0


def build_timeout_s() -> float:
    return uv.build_timeout_s(BUILD_TIMEOUT_S)


def fail(store: S3Store, env: str, message: str) -> str:
    """Record a failed build of ``env`` (``error.json``) and return the message."""
    store.put_json(keys.env_error(env), {"env": env, "message": message, "at": time.time()})
    log.error("environment %s: %s", env, message)
    return message


def check_base(lock: Lock, base: Base) -> str | None:
    """Why ``lock`` cannot be installed on ``base`` (it was resolved for another), or None."""
    have = base.identity()
    if dict(lock.base) == have:
        return None
    return (
        f"this environment was resolved for {dict(lock.base)}, but the stack's runner image "
        f"has {have}: submit the job again (the client now resolves against the stack's "
        f"base, {keys.ENV_BASE})"
    )


def publish_base(store: S3Store, base: Base) -> None:
    """Write the image's base to ``envs/base.json`` unless it already says the same."""
    wanted = base.to_json()
    try:
        if store.get_json(keys.ENV_BASE) == wanted:
            return
    except (ArtifactError, ValueError):
        pass
    store.put_json(keys.ENV_BASE, wanted)


def build(store: S3Store, env: str, work: Path, base: Base | None = None) -> EnvInfo | str:
    """Build environment ``env`` into the bucket (see the module docstring).

    Returns:
        What was stored (or was there already), or the reason the build failed (also
        in ``error.json``).
    """
    keys.check_env_hash(env)
    base = base or runner_base()
    publish_base(store, base)
    try:
        return EnvInfo.from_json(store.get_json(keys.env_built(env)))
    except (ArtifactError, KeyError, TypeError, ValueError):
        pass  # not built (or torn): build it
    try:
        lock = load_lock(store, env)
    except QlayerError as exc:
        return fail(store, env, f"the environment's lock cannot be read: {exc}")
    problem = check_base(lock, base)
    if problem:
        return fail(store, env, problem)
    requirements = work / "requirements.txt"
    requirements.write_text(lock.install_text())
    site = work / "site"
    started = time.perf_counter()
    result = run_uv(
        install_command(lock, str(requirements), str(site), base), timeout_s=build_timeout_s()
    )
    seconds = time.perf_counter() - started
    if not result.ok:
        return fail(store, env, f"installing {', '.join(lock.install)} failed: {result.reason()}")
    site.mkdir(exist_ok=True)  # a lock of base packages only installs nothing
    archive = work / "env.tar.gz"
    files, unpacked = pack(site, archive)
    info = EnvInfo(
        env_hash=env,
        archive_bytes=archive.stat().st_size,
        unpacked_bytes=unpacked,
        files=files,
        packages=tuple(lock.install),
        build_s=round(seconds, 3),
    )
    store.upload_file(keys.env_archive(env), archive)
    store.put_json(keys.env_built(env), info.to_json())  # last: the environment exists
    log.info(
        "environment %s built in %.1f s: %d files, %d MB (%d MB packed)",
        env,
        seconds,
        files,
        info.unpacked_mb,
        info.archive_bytes // 2**20,
    )
    return info


def pack(folder: Path, archive: Path) -> tuple[int, int]:
    """A gzipped tar of ``folder``'s files and folders (links are skipped: the unpacking
    side takes only files). Returns (files, their total size)."""
    files = total = 0
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
            if path.is_file():
                files += 1
                total += path.stat().st_size
    return files, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qlayer-env-build", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="the environment's hash")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import boto3

    bucket = os.environ.get("QLAYER_BUCKET")
    if not bucket:
        print("QLAYER_BUCKET is not set (the stack sets it on the build job)", file=sys.stderr)
        return 2
    store = S3Store(bucket, boto3.client("s3"))
    with tempfile.TemporaryDirectory(prefix="qlayer-env-") as tmp:
        outcome = build(store, keys.check_env_hash(args.env), Path(tmp))
    built = isinstance(outcome, EnvInfo)
    print(json.dumps({"env": args.env, "built": built, **({} if built else {"error": outcome})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
