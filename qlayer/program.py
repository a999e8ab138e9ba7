"""Programs: bundling a file or folder into the store, and loading its Workflow back."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType, TracebackType
from typing import TYPE_CHECKING

from qlayer import keys
from qlayer.errors import ProgramError
from qlayer.store.base import ArtifactStore

if TYPE_CHECKING:  # loaded with the first program: a client that only bundles needs none
    from importlib.abc import Loader

    from qlayer.workflow import Workflow

MAX_PROGRAM_BYTES = 20 * 1024 * 1024
#: How long importing a program may take, unless ``$QLAYER_IMPORT_TIMEOUT_S`` says.
IMPORT_TIMEOUT_S = 30.0
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
        files.update(sibling_modules(source, files[entry]))
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
            check_syntax(data, str(source / name) if source.is_dir() else str(source.parent / name))
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return Bundle(digest.hexdigest()[:24], entry, files)


def sibling_modules(entry: Path, source: bytes) -> dict[str, bytes]:
    """The modules a single-file program imports from its own folder, transitively.

    ``qlayer run prog.py`` where ``prog.py`` does ``import helper`` (``helper.py`` or a
    ``helper/`` package beside it) would work on the laptop and fail in the daemon,
    which sees only the bundle; so those files are bundled with it. Imports are read
    from the syntax tree (top level and inside functions); nothing is executed.
    """
    folder = entry.parent
    found: dict[str, bytes] = {}
    pending = [source]
    seen: set[str] = set()
    while pending:
        for name in _imported_names(pending.pop()):
            if name in seen or name == "qlayer" or name in sys.stdlib_module_names:
                continue
            seen.add(name)
            module = folder / f"{name}.py"
            package = folder / name
            if module.is_file() and module != entry:
                found[module.name] = data = module.read_bytes()
                pending.append(data)
            elif package.is_dir() and (package / "__init__.py").is_file():
                for file in sorted(package.rglob("*")):
                    rel = file.relative_to(folder)
                    if file.is_dir() or any(part in _SKIP_DIRS for part in rel.parts):
                        continue
                    found[rel.as_posix()] = data = file.read_bytes()
                    if file.suffix == ".py":
                        pending.append(data)
    return found


def _imported_names(source: bytes) -> set[str]:
    """Top-level names of the absolute imports in ``source`` (empty if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()  # reported by check_syntax with the file's name
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


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
    from qlayer.workflow import Workflow

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
            _exec_bounded(spec.loader, module, path)
        except SyntaxError as exc:
            sys.modules.pop(module_name, None)
            raise ProgramError(
                f"syntax error in {exc.filename}, line {exc.lineno}: {exc.msg}"
            ) from exc
        except ProgramError:
            sys.modules.pop(module_name, None)
            raise
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ProgramError(f"importing {path.name} raised {type(exc).__name__}: {exc}") from exc
        finally:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
    return module


class Namespaces:
    """Keeps each program's own modules apart inside one long-lived process.

    A program's folder holds modules of its own (``helper.py``, a package). Python
    caches imports by name in ``sys.modules``, so in a warm worker or a warm Lambda
    the second program to ``import helper`` would get the first one's. Here each
    program's modules (those whose file lies in its folder) are kept aside while
    another program is active, and its folder is on ``sys.path`` only while it is
    active, so imports made inside a stage function find the program's own modules
    and never another program's. Programs are told apart by their folder.
    """

    def __init__(self) -> None:
        self.active: str | None = None
        self._kept: dict[str, dict[str, ModuleType]] = {}
        self._baseline: set[str] = set()

    def activate(self, folder: Path | str) -> None:
        """Make the modules and folder of the program in ``folder`` the importable ones."""
        root = os.path.abspath(folder)
        if self.active == root:
            return
        self.deactivate()
        sys.path.insert(0, root)
        kept = self._kept.pop(root, {})
        # Modules already loaded (the caller's own, even from the same folder) are not
        # the program's: only those it imports from now on, or had imported, are.
        self._baseline = set(sys.modules) - set(kept)
        sys.modules.update(kept)
        self.active = root

    def deactivate(self) -> None:
        """Put the active program's modules aside and take its folder off ``sys.path``."""
        root = self.active
        if root is None:
            return
        prefix = root + os.sep
        own = {
            name: module
            for name, module in list(sys.modules.items())
            if name not in self._baseline
            and str(getattr(module, "__file__", None) or "").startswith(prefix)
        }
        for name in own:
            del sys.modules[name]
        self._kept[root] = own
        if root in sys.path:
            sys.path.remove(root)  # the first one: the one activate() put in front
        self.active = None


_NAMESPACES = Namespaces()


def import_timeout_s() -> float:
    """How long a program's import may take: ``$QLAYER_IMPORT_TIMEOUT_S`` (default 30)."""
    raw = os.environ.get("QLAYER_IMPORT_TIMEOUT_S")
    try:
        return float(raw) if raw else IMPORT_TIMEOUT_S
    except ValueError:
        raise ProgramError(f"QLAYER_IMPORT_TIMEOUT_S={raw!r} is not a number of seconds") from None


class _ImportTimeout(BaseException):
    """Raised into an import that ran past its bound (a BaseException: a program's own
    ``except Exception`` at top level does not swallow it)."""


def _exec_bounded(loader: Loader, module: ModuleType, path: Path) -> None:
    """Run a program's top level, stopped after :func:`import_timeout_s` seconds.

    On the main thread a timer signal interrupts the import where it is; elsewhere (a
    signal cannot reach another thread) it runs on a helper thread that is abandoned
    past the bound.
    """
    seconds = import_timeout_s()
    if seconds <= 0:
        loader.exec_module(module)
        return
    if threading.current_thread() is threading.main_thread() and not any(
        signal.getitimer(signal.ITIMER_REAL)
    ):

        def expired(signum: int, frame: FrameType | None) -> None:
            raise _ImportTimeout()

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            loader.exec_module(module)
        except _ImportTimeout as exc:
            raise ProgramError(_too_long(path, seconds, exc.__traceback__)) from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0.0)
            signal.signal(signal.SIGALRM, previous)
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loader.exec_module(module)
        except BaseException as exc:
            failure.append(exc)

    helper = threading.Thread(target=run, name=f"import {path.name}", daemon=True)
    helper.start()
    helper.join(seconds)
    if helper.is_alive():
        frame = sys._current_frames().get(helper.ident or -1)
        raise ProgramError(_too_long(path, seconds, None, frame))
    if failure:
        raise failure[0]


def _too_long(
    path: Path, seconds: float, tb: TracebackType | None, frame: FrameType | None = None
) -> str:
    """What to say of an import past its bound: where it was, and what to do."""
    stack = traceback.extract_tb(tb) if tb is not None else traceback.extract_stack(frame)
    folder = str(path.parent)
    mine = [f for f in stack if f.filename.startswith(folder)]
    where = f" (it was at {Path(mine[-1].filename).name}, line {mine[-1].lineno})" if mine else ""
    return (
        f"importing {path.name} did not finish within {seconds:g} s{where}. A program's top "
        "level should only define its Workflow: move long work (loops, downloads, data "
        "loading, training) into a stage. If the import really needs longer, raise "
        "QLAYER_IMPORT_TIMEOUT_S."
    )


def load_path(path: str | Path) -> Workflow:
    """Load the Workflow of a program file or folder on disk (client side)."""
    source = Path(path)
    entry = source if source.is_file() else source / "main.py"
    if not entry.is_file():
        raise ProgramError(f"program {str(path)!r} does not exist")
    entry = entry.resolve()
    stamp = (str(entry.resolve()), entry.stat().st_mtime_ns, entry.stat().st_size)
    cached = _LOADED_PATHS.get(stamp)
    if cached is not None:
        return cached
    digest = hashlib.sha256(stamp[0].encode()).hexdigest()[:12]
    # The program's own modules are put aside once it is loaded, so that a second
    # program from another folder (a notebook submitting both) imports its own.
    with _LOCK:
        _NAMESPACES.activate(entry.parent)
    try:
        module = import_file(entry, f"qlayer_user_{digest}")
        workflow = find_workflow(module, str(path))
    finally:
        with _LOCK:
            _NAMESPACES.deactivate()
    _LOADED_PATHS[stamp] = workflow
    return workflow


_LOADED_PATHS: dict[tuple[str, int, int], Workflow] = {}


class ProgramCache:
    """Loads programs from a store once per process and keeps them (warm workers).

    :meth:`workflow` also makes the program the active one in this process (see
    :class:`Namespaces`): the stage that runs next imports that program's own modules.
    """

    def __init__(self, store: ArtifactStore, scratch: Path) -> None:
        self.store = store
        self.scratch = scratch
        self._loaded: dict[str, Workflow] = {}
        self._folders: dict[str, Path] = {}

    def workflow(self, program_id: str) -> Workflow:
        cached = self._loaded.get(program_id)
        if cached is not None:
            with _LOCK:
                _NAMESPACES.activate(self._folders[program_id])
            return cached
        prefix = keys.program_prefix(program_id)
        manifest = self.store.get_json(prefix + "manifest.json")
        local_root = getattr(self.store, "root", None)
        if local_root is not None:
            folder = Path(os.path.abspath(Path(local_root) / prefix / "src"))
        else:
            folder = Path(os.path.abspath(self.scratch / program_id))
            for name in manifest["files"]:
                target = folder / keys.check_relative_path(name)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(self.store.get_bytes(prefix + "src/" + name))
        with _LOCK:
            _NAMESPACES.activate(folder)
        module = import_file(folder / manifest["entry"], f"qlayer_program_{program_id}")
        workflow = find_workflow(module, manifest["entry"])
        self._loaded[program_id] = workflow
        self._folders[program_id] = folder
        return workflow


def manifest_json(program: Bundle) -> str:
    return json.dumps({"entry": program.entry, "files": sorted(program.files)})
