"""Running uv, the installer environments are resolved and built with.

uv comes with qlayer (a dependency: the ``uv`` package ships its binary). It is found as
``$QLAYER_UV``, else the ``uv`` package's binary, else ``uv`` on ``PATH``.

uv reads its own settings (``UV_INDEX_URL``, ``UV_EXTRA_INDEX_URL``, ``UV_FIND_LINKS``,
``uv.toml``); when none of those name an index, the indexes pip is configured with here
(``pip config``: ``index-url``, ``extra-index-url``, ``find-links``, ``constraint``) are
passed on, so that environments come from the same registry as everything else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from qlayer.errors import ConfigError

__all__ = [
    "UvResult",
    "build_timeout_s",
    "index_options",
    "run_uv",
    "uv_bin",
    "without_constraints",
]


def build_timeout_s(default: float) -> float:
    """How long one environment build may run: ``QLAYER_ENV_BUILD_TIMEOUT_S`` (seconds),
    else the substrate's ``default``."""
    raw = os.environ.get("QLAYER_ENV_BUILD_TIMEOUT_S")
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


#: uv's own variables that choose indexes: when one is set, pip's settings are not used.
_UV_INDEX_VARIABLES = (
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
)


def uv_bin() -> str:
    """The uv binary's path.

    Raises:
        ConfigError: uv is nowhere to be found (with how to install it).
    """
    chosen = os.environ.get("QLAYER_UV")
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise ConfigError(f"QLAYER_UV={chosen!r} is not an executable file")
        return chosen
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    if found:
        return found
    raise ConfigError(
        "uv is needed to build a program's environment and was not found: "
        "`pip install uv` (it is a dependency of qlayer), or set QLAYER_UV to its path"
    )


_PIP_OPTIONS: list[list[str]] = []


def index_options() -> list[str]:
    """uv options for the indexes pip is configured with here (measured once per process);
    empty when uv has index settings of its own."""
    if any(os.environ.get(name) for name in _UV_INDEX_VARIABLES):
        return []
    if not _PIP_OPTIONS:
        _PIP_OPTIONS.append(_from_pip_config(_pip_config()))
    return list(_PIP_OPTIONS[0])


def _pip_config() -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _from_pip_config(text: str) -> list[str]:
    """``pip config list`` lines (``global.extra-index-url='a b'``) as uv options; the
    ``:env:`` (environment variable) values win over the files', as they do for pip."""
    settings: dict[str, str] = {}
    ranked: dict[str, int] = {}
    for line in text.splitlines():
        section_key, _, value = line.partition("=")
        section, _, key = section_key.rpartition(".")
        value = value.strip().strip("'\"")
        if not key or not value:
            continue
        rank = 2 if section == ":env:" else 1 if section == "install" else 0
        if rank >= ranked.get(key, -1):
            settings[key], ranked[key] = value, rank
    options: list[str] = []
    if "index-url" in settings:
        options += ["--index-url", settings["index-url"]]
    for url in settings.get("extra-index-url", "").split():
        options += ["--extra-index-url", url]
    for link in settings.get("find-links", "").split():
        options += ["--find-links", link]
    if "extra-index-url" in settings or "find-links" in settings:
        # pip picks the best version across every index; uv's default is the first
        # index that has the package
        options += ["--index-strategy", "unsafe-best-match"]
    for path in settings.get("constraint", "").split():
        if os.path.isfile(path):  # a machine's caps (e.g. torch's): resolving only
            options += ["--constraint", path]
    return options


def without_constraints(options: Sequence[str]) -> list[str]:
    """``options`` less their ``--constraint PATH`` pairs (for installing exact pins)."""
    kept: list[str] = []
    skip = False
    for option in options:
        if skip:
            skip = False
        elif option == "--constraint":
            skip = True
        else:
            kept.append(option)
    return kept


@dataclass(frozen=True)
class UvResult:
    """What one uv command did: its exit code and output."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def reason(self, limit: int = 4000) -> str:
        """The installer's own words on a failure, on one line (uv wraps its text to the
        terminal), at most ``limit`` characters (the end, where uv says why)."""
        text = " ".join((self.stderr or self.stdout).split())
        text = text or f"uv exited with code {self.returncode}"
        return text if len(text) <= limit else "…" + text[-limit:]


def run_uv(args: Sequence[str], *, timeout_s: float) -> UvResult:
    """Run ``uv <args>`` and wait for it (at most ``timeout_s``; then it is killed and the
    result says so)."""
    command = [uv_bin(), *args]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return UvResult(-9, "", f"{out}\nuv did not finish within {timeout_s:g} s".strip())
    return UvResult(done.returncode, done.stdout, done.stderr)
