"""Programs: bundling a file or folder into the store, and loading its Workflow back."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from qlayer import keys
from qlayer.errors import ProgramError
from qlayer.store.base import ArtifactStore
from qlayer.workflow import Workflow

MAX_PROGRAM_BYTES = 20 * 1024 * 1024
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules", ".mypy_cache", ".pytest_cache"}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Bundle:
    """A program ready to upload: its content-addressed id, entry file and files."""

    program_id: str
    entry: str
    files: dict[str, bytes]


def bundle(path: str | Path) -> Bundle:
    """Read a program file, or a folder with ``main.py``, and check its syntax.

    Raises:
        ProgramError: The path is missing, is not Python, is too large, or has a
            syntax error (the message gives file and line).
    """
    source = Path(path)
    if not source.exists():
        raise ProgramError(f"program {str(path)!r} does not exist")
    files: dict[str, bytes] = {}
    if source.is_file():
        if source.suffix != ".py":
            raise ProgramError(f"program {str(path)!r} is not a .py file")
        entry = source.name
        files[entry] = source.read_bytes()
    else:
        entry = "main.py"
        if not (source / entry).is_file():
            raise ProgramError(f"program folder {str(path)!r} has no main.py")
        for file in sorted(source.rglob("*")):
            rel = file.relative_to(source)
            if file.is_dir() or any(part in _SKIP_DIRS for part in rel.parts):
                continue
            files[rel.as_posix()] = file.read_bytes()
    total = sum(len(data) for data in files.values())
    if total > MAX_PROGRAM_BYTES:
        raise ProgramError(
            f"program {str(path)!r} is {total // 1024} KiB; the limit is "
            f"{MAX_PROGRAM_BYTES // 1024 // 1024} MiB. Keep data out of the program folder."
        )
    for name, data in files.items():
        if name.endswith(".py"):
            check_syntax(data, str(source / name) if source.is_dir() else str(source))
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return Bundle(digest.hexdigest()[:24], entry, files)


def check_syntax(data: bytes, filename: str) -> None:
    """Compile ``data`` to check it; a failure names ``filename`` and the line.

    Raises:
        ProgramError: A syntax error, or null bytes in the source.
    """
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise ProgramError(
            f"{filename} contains null bytes (first on line {line}); it is not Python "
            "source — is it a binary file, or saved in UTF-16?"
        )
    try:
        compile(data, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ProgramError(
            f"syntax error in {exc.filename or filename}, line {exc.lineno}: {exc.msg}\n"
            f"    {(exc.text or '').rstrip()}"
        ) from exc
    except ValueError as exc:  # null bytes
        raise ProgramError(f"{filename} is not valid Python source: {exc}") from exc


def upload(store: ArtifactStore, program: Bundle) -> str:
    """Write the bundle to ``programs/<id>/`` (once: ids are content hashes)."""
    prefix = keys.program_prefix(program.program_id)
    manifest_key = prefix + "manifest.json"
    if store.exists(manifest_key):
        return program.program_id
    for name, data in program.files.items():
        store.put_bytes(prefix + "src/" + name, data)
    store.put_json(manifest_key, {"entry": program.entry, "files": sorted(program.files)})
    return program.program_id


def find_workflow(module: ModuleType, origin: str) -> Workflow:
    found = [value for value in vars(module).values() if isinstance(value, Workflow)]
    unique = list({id(w): w for w in found}.values())
    if len(unique) != 1:
        raise ProgramError(
            f"{origin} must define exactly one qlayer.Workflow at module level; found {len(unique)}"
        )
    return unique[0]


def import_file(path: Path, module_name: str) -> ModuleType:
    """Import a program file as ``module_name``; its folder is importable while it loads."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ProgramError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    with _LOCK:
        sys.path.insert(0, folder)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            sys.modules.pop(module_name, None)
            raise ProgramError(
                f"syntax error in {exc.filename}, line {exc.lineno}: {exc.msg}"
            ) from exc
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ProgramError(f"importing {path.name} raised {type(exc).__name__}: {exc}") from exc
        finally:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
    return module


def load_path(path: str | Path) -> Workflow:
    """Load the Workflow of a program file or folder on disk (client side)."""
    source = Path(path)
    entry = source if source.is_file() else source / "main.py"
    if not entry.is_file():
        raise ProgramError(f"program {str(path)!r} does not exist")
    stamp = (str(entry.resolve()), entry.stat().st_mtime_ns, entry.stat().st_size)
    cached = _LOADED_PATHS.get(stamp)
    if cached is not None:
        return cached
    digest = hashlib.sha256(stamp[0].encode()).hexdigest()[:12]
    module = import_file(entry, f"qlayer_user_{digest}")
    workflow = find_workflow(module, str(path))
    _LOADED_PATHS[stamp] = workflow
    return workflow


_LOADED_PATHS: dict[tuple[str, int, int], Workflow] = {}


class ProgramCache:
    """Loads programs from a store once per process and keeps them (warm workers)."""

    def __init__(self, store: ArtifactStore, scratch: Path) -> None:
        self.store = store
        self.scratch = scratch
        self._loaded: dict[str, Workflow] = {}

    def workflow(self, program_id: str) -> Workflow:
        cached = self._loaded.get(program_id)
        if cached is not None:
            return cached
        prefix = keys.program_prefix(program_id)
        manifest = self.store.get_json(prefix + "manifest.json")
        local_root = getattr(self.store, "root", None)
        if local_root is not None:
            folder = Path(local_root) / prefix / "src"
        else:
            folder = self.scratch / program_id
            for name in manifest["files"]:
                target = folder / keys.check_relative_path(name)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(self.store.get_bytes(prefix + "src/" + name))
        module = import_file(folder / manifest["entry"], f"qlayer_program_{program_id}")
        workflow = find_workflow(module, manifest["entry"])
        self._loaded[program_id] = workflow
        return workflow


def manifest_json(program: Bundle) -> str:
    return json.dumps({"entry": program.entry, "files": sorted(program.files)})
