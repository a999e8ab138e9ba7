"""Environments the Qiskit Serverless tests need, built once and cached between sessions.

* :func:`client_python` — a virtual environment with the real ``qiskit-serverless``
  client (0.37 pins qiskit-ibm-runtime <0.51, so it cannot share qlayer's environment).
* :func:`overlay_folder` — the library for a function's process
  (:mod:`qlayer.serverless.overlay`).
* :func:`ray_folder` — Ray, for functions that start Ray tasks (the ``ray`` extra).

Both live under ``$QLAYER_TEST_CACHE`` (default ``~/.cache/qlayer-tests``) and are built
from the package registry by the first test that asks (a minute or two for the client,
seconds for the overlay); a lock keeps parallel sessions from building twice. The AWS
tests use the same two.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLIENT_REQUIREMENT = "qiskit-serverless==0.37.0"
RAY_REQUIREMENT = "ray==2.60.0"


def cache_root() -> Path:
    root = Path(os.environ.get("QLAYER_TEST_CACHE") or Path.home() / ".cache" / "qlayer-tests")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def _locked(name: str) -> Iterator[None]:
    with open(cache_root() / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def client_python() -> Path:
    """The Python of a venv holding ``qiskit-serverless==0.37.0`` and its dependencies."""
    venv = cache_root() / "qiskit-serverless-client-0.37.0"
    python = venv / "bin" / "python"
    done = venv / ".complete"
    with _locked("client"):
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    CLIENT_REQUIREMENT,
                ],
                check=True,
            )
            done.write_text(CLIENT_REQUIREMENT + "\n")
    return python


def overlay_folder() -> Path:
    """The ``qiskit_serverless`` overlay for functions' processes."""
    from qlayer.serverless import overlay

    with _locked("overlay"):
        return overlay.ensure(cache_root() / f"overlay-{overlay.VERSION}")


def ray_folder() -> Path:
    """A folder holding Ray (``pip install --target``), for functions that start Ray tasks:
    what the ``ray`` extra installs into qlayer's own environment."""
    folder = cache_root() / "ray-2.60.0"
    done = folder / ".complete"
    with _locked("ray"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--target",
                    str(folder),
                    RAY_REQUIREMENT,
                ],
                check=True,
            )
            done.write_text(RAY_REQUIREMENT + "\n")
    return folder
