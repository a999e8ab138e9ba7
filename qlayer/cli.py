"""The ``qlayer`` command: submit programs, follow jobs, fetch results, logs and files.

Every read command takes ``--json`` for scripts. State lives under ``$QLAYER_HOME``
(default ``~/.qlayer``). The commands are :mod:`qlayer.cli_app` (typer).

:func:`main` is the entry point. A plain local ``qlayer run PROGRAM [--arg k=v ...]
[--arg-file F] [--backend B] [--notify T] [--max-cost-usd X] [--json] [--home H]`` is
submitted here without importing typer, rich or pydantic (they cost more than the
submission itself): the daemon checks the program in its warm admission worker and this
process prints the job id. Anything else — ``--wait``, ``--help``, another target or
command, an option this parser does not know, and every error message — goes through
:mod:`qlayer.cli_app`, so the behaviour and the messages are the same either way.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qlayer.job import BaseJob

#: ``qlayer run`` options that take a value: option -> the name it is kept under.
_RUN_VALUES = {
    "--arg": "arg",
    "-a": "arg",
    "--arg-file": "arg_file",
    "--backend": "backend",
    "-b": "backend",
    "--notify": "notify",
    "--max-cost-usd": "max_cost_usd",
    "--home": "home",
}
_REPEATED = ("arg", "notify")


def main() -> None:
    """Entry point: qlayer errors become one clear line and exit code 1."""
    parsed = parse_plain_run(sys.argv[1:], os.environ)
    if parsed is None:
        from qlayer.cli_app import main as full

        full()
        return
    sys.exit(_run_plain(parsed))


def parse_plain_run(argv: Sequence[str], environ: Any) -> dict[str, Any] | None:
    """The options of a plain local ``qlayer run``, or None for anything else.

    None sends the command line to the whole CLI, which parses it and reports any problem
    in its own words; so only what that parser would accept as it is gets a dict here.
    """
    if not argv or argv[0] != "run" or environ.get("QLAYER_TARGET", "local") != "local":
        return None
    found: dict[str, Any] = {"program": None, "json": False, "arg": [], "notify": []}
    words = iter(argv[1:])
    for word in words:
        name, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if word == "--json":
            found["json"] = True
        elif name in _RUN_VALUES:
            if not eq:
                value = next(words, None)  # type: ignore[assignment]
                if value is None:
                    return None
            key = _RUN_VALUES[name]
            if key in _REPEATED:
                found[key].append(value)
            elif key in found:
                return None  # given twice: the whole CLI says what it makes of that
            else:
                found[key] = value
        elif word.startswith("-") or found["program"] is not None:
            return None  # --wait, --help, a short option cluster, a second argument...
        else:
            found["program"] = word
    if found["program"] is None:
        return None
    if "max_cost_usd" in found:
        try:
            found["max_cost_usd"] = float(found["max_cost_usd"])
        except ValueError:
            return None
    return found


def submit_local(
    client: Any,
    program: str | os.PathLike[str],
    arg: Sequence[str],
    arg_file: str | os.PathLike[str] | None,
    backend: str | None,
    notify: Sequence[str],
    max_cost_usd: float | None,
) -> BaseJob:
    """``qlayer run`` on the local substrate: the arguments as the daemon will read them,
    submitted with ``client`` (both the whole CLI and the plain path call this)."""
    arguments: dict[str, Any] = {}
    if arg_file is not None:
        from qlayer.cliargs import read_arguments_file

        arguments = read_arguments_file(Path(arg_file))
    job: BaseJob = client.run(
        Path(program),
        arguments,
        backend=backend,
        cli_arguments=[_absolute_file_argument(text) for text in arg],
        notify=list(notify) or None,
        max_cost_usd=max_cost_usd,
    )
    return job


def submitted_hint(job_id: str) -> str:
    """The commands printed after ``job <id> submitted``."""
    return f"  qlayer status {job_id}\n  qlayer result {job_id} --wait\n  qlayer logs {job_id}"


def _absolute_file_argument(text: str) -> str:
    """``key=@file`` with the file's absolute path: the daemon reads it, from elsewhere."""
    key, sep, value = text.partition("=")
    if sep and value.startswith("@") and Path(value[1:]).expanduser().is_file():
        return f"{key}=@{Path(value[1:]).expanduser().resolve()}"
    return text


def _run_plain(parsed: dict[str, Any]) -> int:
    from qlayer.local.client import LocalClient

    try:
        job = submit_local(
            LocalClient(parsed.get("home")),
            parsed["program"],
            parsed["arg"],
            parsed.get("arg_file"),
            parsed.get("backend"),
            parsed["notify"],
            parsed.get("max_cost_usd"),
        )
    except KeyboardInterrupt:  # as click reports it
        sys.stderr.write("\nAborted!\n")
        return 1
    except Exception as exc:
        from qlayer.cli_app import fail

        fail(exc)
    if parsed["json"]:
        sys.stdout.write(json.dumps({"job_id": job.job_id}, indent=2) + "\n")
    else:
        sys.stdout.write(f"job {_bold(job.job_id)} submitted\n{submitted_hint(job.job_id)}\n")
    sys.stdout.flush()
    return 0


def _bold(text: str) -> str:
    """Bold on a terminal that shows colour (as rich prints ``[bold]``), else plain."""
    plain = (
        not sys.stdout.isatty()
        or "NO_COLOR" in os.environ
        or os.environ.get("TERM") in ("dumb", "unknown")
    )
    return text if plain else f"\x1b[1m{text}\x1b[0m"


def __getattr__(name: str) -> Any:
    """The whole CLI's names (``app``, its commands and helpers) from :mod:`qlayer.cli_app`."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("qlayer.cli_app"), name)


if __name__ == "__main__":
    main()
