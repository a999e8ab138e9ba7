"""Job arguments from the command line: ``--arg key=value``, ``--arg key=@file`` and
``--arg-file args.json``.

A value is typed by the declared parameter when there is one, else parsed as JSON when
it looks like JSON, else kept as a string. ``@file`` reads a file, by its suffix:

* ``.qpy``: the circuits of a QPY file (one circuit, or a list of them; a ``list``
  parameter always gets a list);
* ``.npy``: a numpy array (no pickles);
* ``.json``: a JSON value, which may hold the codec's typed encodings (``{"$q": ...}``).

Files come from outside the process: each is bounded (:mod:`qlayer.bounds`) before it is
decoded, and every failure is an :class:`~qlayer.errors.ArgumentError` naming the file.
``--arg-file`` takes a JSON object of arguments, decoded the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlayer import bounds, codec
from qlayer.errors import ArgumentError, CodecError

if TYPE_CHECKING:
    from qlayer.workflow import Workflow

FILE_SUFFIXES = (".qpy", ".npy", ".json")


def parse_cli_argument(text: str, workflow: Workflow | None = None) -> tuple[str, Any]:
    """Parse ``key=value`` (or ``key=@file``), typed by the declared parameter.

    Undeclared keys (or no workflow) are parsed as JSON when they look like JSON,
    else kept as strings.

    Raises:
        ArgumentError: Not ``key=value``, a value of the wrong type, or a file that is
            missing, of an unknown kind, too large or malformed.
    """
    if "=" not in text:
        raise ArgumentError(f"--arg expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    expected = workflow.param_type(key) if workflow else None
    if expected is str:
        return key, raw
    if raw.startswith("@"):
        value = read_file_argument(key, Path(raw[1:]))
        if expected is list and not isinstance(value, list):
            value = [value]
        return key, value
    if expected in (int, float):
        assert expected is not None
        try:
            return key, expected(raw)
        except ValueError:
            raise ArgumentError(
                f"argument {key!r} must be {expected.__name__}, got {raw!r}"
            ) from None
    if expected is bool:
        lowered = raw.lower()
        if lowered in {"true", "1", "yes"}:
            return key, True
        if lowered in {"false", "0", "no"}:
            return key, False
        raise ArgumentError(f"argument {key!r} must be true or false, got {raw!r}")
    name = getattr(expected, "__name__", "")
    if name in ("QuantumCircuit", "SparsePauliOp"):
        raise ArgumentError(
            f"argument {key!r} is a {name}: pass a file, --arg {key}=@FILE.qpy"
            if name == "QuantumCircuit"
            else f"argument {key!r} is a {name}: pass it in a JSON file, --arg {key}=@FILE.json"
        )
    try:
        return key, json.loads(raw)
    except (ValueError, RecursionError):
        if expected in (list, dict) or name == "ndarray":
            raise ArgumentError(f"argument {key!r} must be JSON {name}") from None
        return key, raw


def read_file_argument(key: str, path: Path) -> Any:
    """The value of ``--arg key=@path`` (see the module's docstring)."""
    data = _read(path, f"argument {key!r}")
    where = f"argument {key!r} (file {path})"
    try:
        if path.suffix == ".qpy":
            circuits = codec.load_qpy(data, where)
            return circuits[0] if len(circuits) == 1 else circuits
        if path.suffix == ".npy":
            return codec.load_npy(data, where)
        return codec.loads(data, where=where)
    except CodecError as exc:
        raise ArgumentError(str(exc)) from exc


def read_arguments_file(path: Path) -> dict[str, Any]:
    """The arguments of ``--arg-file path``: a JSON object, decoded by the codec."""
    data = _read(path, "--arg-file", suffixes=(".json",))
    try:
        value = codec.loads(data, where=f"argument file {path}")
    except CodecError as exc:
        raise ArgumentError(str(exc)) from exc
    if not isinstance(value, dict):
        raise ArgumentError(
            f"argument file {path} must hold a JSON object of arguments, not a "
            f"{type(value).__name__}"
        )
    return value


def _read(path: Path, what: str, suffixes: tuple[str, ...] = FILE_SUFFIXES) -> bytes:
    if path.suffix not in suffixes:
        raise ArgumentError(
            f"{what}: {str(path)!r} is not a {', '.join(suffixes)} file; those are the "
            "kinds of file qlayer reads arguments from"
        )
    try:
        size = path.stat().st_size
        bounds.check_size(size, f"{what} (file {path})", "file")
        return path.read_bytes()
    except FileNotFoundError:
        raise ArgumentError(f"{what}: file {str(path)!r} does not exist") from None
    except CodecError as exc:
        raise ArgumentError(str(exc)) from exc
    except OSError as exc:
        raise ArgumentError(f"{what}: cannot read {str(path)!r}: {exc}") from exc
