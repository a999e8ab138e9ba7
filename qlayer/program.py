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
from collections.abc import Sequence
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


def _parse(source: bytes) -> ast.Module:
    """``ast.parse``, asked again when CPython 3.11 trips over its own recursion counter.

    In a process with other threads, 3.11's AST construction can fail at random with
    ``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905; it
    failed a clean-clone CI run while the test process bundled a program). The source is
    not at fault: parsing it again succeeds.
    """
    for _ in range(4):
        try:
            return ast.parse(source)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
            failure = exc
    raise failure


def _imported_names(source: bytes) -> set[str]:
    """Top-level names of the absolute imports in ``source`` (empty if it does not parse)."""
    try:
        tree = _parse(source)
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
            hint = (
                "; a package the program requires is installed for its stages only: "
                "import it inside the stage functions that use it"
                if isinstance(exc, ModuleNotFoundError)
                else ""
            )
            raise ProgramError(
                f"importing {path.name} raised {type(exc).__name__}: {exc}{hint}"
            ) from exc
        finally:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
    return module


class Namespaces:
    """Keeps each program's own modules apart inside one long-lived process.

    A program's folder holds modules of its own (``helper.py``, a package), and its
    environment (the packages its requirements installed, AWS: unpacked under /tmp) holds
    more. Python caches imports by name in ``sys.modules``, so in a warm worker or a warm
    Lambda the second program to ``import helper`` (or ``pendulum``) would get the first
    one's. Here the modules loaded from each root (a program's folder, an environment)
    are kept aside while no active program uses that root, and the roots are on
    ``sys.path`` only while active, so imports made inside a stage function find the
    program's own modules and packages and never another program's. Two programs of one
    environment share its root, and so its modules.
    """

    def __init__(self) -> None:
        self.active: str | None = None
        self._roots: tuple[str, ...] = ()
        self._kept: dict[str, dict[str, ModuleType]] = {}
        self._baseline: set[str] = set()

    def activate(self, folder: Path | str, paths: Sequence[Path | str] = ()) -> None:
        """Make the modules and folder of the program in ``folder`` the importable ones,
        and its environment's ``paths`` (after the base's packages: an environment adds
        packages, it never shadows the base's)."""
        root = os.path.abspath(folder)
        roots = (root, *(os.path.abspath(p) for p in paths))
        if self._roots == roots:
            return
        self.deactivate()
        sys.path.insert(0, root)
        sys.path.extend(roots[1:])
        kept: dict[str, ModuleType] = {}
        for each in roots:
            kept.update(self._kept.pop(each, {}))
        # Modules already loaded (the caller's own, even from the same folder) are not
        # the program's: only those it imports from now on, or had imported, are.
        self._baseline = set(sys.modules) - set(kept)
        sys.modules.update(kept)
        self.active, self._roots = root, roots

    def deactivate(self) -> None:
        """Put the active program's modules aside and take its roots off ``sys.path``."""
        if not self._roots:
            return
        loaded = [
            (name, module, _origin(module))
            for name, module in list(sys.modules.items())
            if name not in self._baseline
        ]
        for root in self._roots:
            prefix = root + os.sep
            own = {name: module for name, module, file in loaded if file.startswith(prefix)}
            for name in own:
                sys.modules.pop(name, None)
            self._kept[root] = {**self._kept.get(root, {}), **own}
            _remove_path(root, last=root != self._roots[0])
        self.active, self._roots = None, ()


def _origin(module: ModuleType) -> str:
    """Where a module was loaded from: its file, or a namespace package's first folder."""
    file = getattr(module, "__file__", None)
    if file:
        return str(file)
    path = getattr(module, "__path__", None)
    try:
        return str(next(iter(path))) + os.sep if path is not None else ""
    except (StopIteration, TypeError):
        return ""


def _remove_path(root: str, *, last: bool) -> None:
    """Take ``root`` off ``sys.path``: the first occurrence (a program's folder, put in
    front) or the last (an environment, put at the end)."""
    if root not in sys.path:
        return
    index = len(sys.path) - 1 - sys.path[::-1].index(root) if last else sys.path.index(root)
    del sys.path[index]


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
    :class:`Namespaces`): the stage that runs next imports that program's own modules,
    and the packages of its environment when it has one.
    """

    def __init__(self, store: ArtifactStore, scratch: Path) -> None:
        self.store = store
        self.scratch = scratch
        self._loaded: dict[tuple[str, tuple[str, ...]], Workflow] = {}
        self._folders: dict[str, Path] = {}

    def workflow(self, program_id: str, env_paths: Sequence[Path] = ()) -> Workflow:
        """The program's Workflow, imported with ``env_paths`` (its environment's package
        folders) importable; the program stays the active one (see :class:`Namespaces`)."""
        paths = tuple(os.path.abspath(p) for p in env_paths)
        cached = self._loaded.get((program_id, paths))
        if cached is not None:
            with _LOCK:
                _NAMESPACES.activate(self._folders[program_id], paths)
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
            _NAMESPACES.activate(folder, paths)
        tag = hashlib.sha256("\0".join(paths).encode()).hexdigest()[:8] if paths else ""
        module = import_file(
            folder / manifest["entry"], f"qlayer_program_{program_id}{'_' + tag if tag else ''}"
        )
        workflow = find_workflow(module, manifest["entry"])
        self._loaded[(program_id, paths)] = workflow
        self._folders[program_id] = folder
        return workflow


def manifest_json(program: Bundle) -> str:
    return json.dumps({"entry": program.entry, "files": sorted(program.files)})
