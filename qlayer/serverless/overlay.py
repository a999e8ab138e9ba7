"""The ``qiskit_serverless`` library for a function's process, beside qlayer's packages.

qiskit-serverless 0.37 pins qiskit-ibm-runtime <0.51 while qlayer runs 0.51; its modules
import fine with 0.51. So the library is installed once, without its dependencies, into
a folder of its own (the *overlay*) that goes first on the function process's
``PYTHONPATH`` — with the few small packages it imports that qlayer does not have (tqdm,
OpenTelemetry's SDK and exporter). Everything else (qiskit, qiskit-ibm-runtime, numpy,
requests) is qlayer's own.

``qlayer serve`` builds it on first start (pip, from the package registry) under
``$QLAYER_HOME/serverless/``; ``QLAYER_SERVERLESS_OVERLAY`` names a ready one instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from qlayer.errors import QlayerError

VERSION = "0.37.0"
#: What the overlay holds, without dependencies (the rest comes from qlayer's environment).
REQUIREMENTS = (
    f"qiskit-serverless=={VERSION}",
    "tqdm>=4.66,<5",
    "opentelemetry-api>=1.45,<1.46",
    "opentelemetry-sdk>=1.45,<1.46",
    "opentelemetry-semantic-conventions>=0.66b0,<0.67",
    "opentelemetry-exporter-otlp-proto-http>=1.45,<1.46",
    "opentelemetry-exporter-otlp-proto-common>=1.45,<1.46",
    "opentelemetry-proto>=1.45,<1.46",
)
ENV = "QLAYER_SERVERLESS_OVERLAY"
_DONE = ".qlayer-complete"


def default_folder(home_root: Path) -> Path:
    return home_root / "serverless" / f"overlay-{VERSION}"


def ensure(folder: Path, *, python: str | None = None) -> Path:
    """The overlay in ``folder``, installed there first if it is not (a few seconds).

    Raises:
        QlayerError: pip failed (the message has its last lines).
    """
    named = os.environ.get(ENV)
    if named:
        return Path(named)
    if (folder / _DONE).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".overlay-", dir=folder.parent))
    command = [
        python or sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--target",
        str(scratch),
        *REQUIREMENTS,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        lines = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise QlayerError("could not install qiskit-serverless for functions: " + " ".join(lines))
    (scratch / _DONE).write_text(VERSION + "\n")
    try:
        scratch.rename(folder)
    except OSError:  # another process finished first
        shutil.rmtree(scratch, ignore_errors=True)
    return folder
