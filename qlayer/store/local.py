"""The local artifact store: a folder, with the same key layout as S3."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

from qlayer.errors import ArtifactError
from qlayer.store.base import ArtifactStore

#: A test hook (never set in use): while the file this names exists and holds an errno
#: name (``ENOSPC``, ``EROFS``, ``EACCES``), every artifact write fails with that error, as
#: a full disk or a read-only folder would — which ``chmod`` cannot fake for root.
FAULT_FILE_ENV = "QLAYER_FAULT_FILE"


def _injected_fault(path: Path) -> None:
    fault_file = os.environ.get(FAULT_FILE_ENV)
    if not fault_file:
        return
    try:
        name = Path(fault_file).read_text().strip()
    except OSError:
        return
    code = getattr(errno, name, None)
    if isinstance(code, int):
        raise OSError(code, os.strerror(code), str(path))


#: Temporary names are ``.tmp-<pid>-<n>``: a fork has its own pid, and a name left by a
#: dead process whose pid came back is skipped (``O_EXCL``).
_TMP_COUNTER = itertools.count()


def _temporary(target: Path) -> tuple[int, Path]:
    """A new private file beside ``target`` (its folder made if missing), open to write.

    Cheaper than ``tempfile.mkstemp`` and a ``mkdir`` before every write: most writes
    go to a folder that exists, and a fan-out's children write thousands of small files.
    """
    pid = os.getpid()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    made = False
    for _ in range(100):
        tmp = target.parent / f".tmp-{pid}-{next(_TMP_COUNTER)}"
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileNotFoundError:
            if made:
                raise
            target.parent.mkdir(parents=True, exist_ok=True)
            made = True
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target.parent))


class FolderStore(ArtifactStore):
    """Artifacts as files under ``root``; writes go through a temp file and a rename.

    A write that the file system refuses (a full disk, a read-only folder) raises
    :class:`ArtifactError` whose cause is the ``OSError``.
    """

    append_is_cheap = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ArtifactError(f"invalid artifact key {key!r}")
        return self.root / key

    def _refused(self, key: str, exc: OSError) -> ArtifactError:
        return ArtifactError(
            f"cannot write artifact {key} in {self.root}: {exc.strerror or exc}. Free disk "
            "space or make the artifacts folder writable."
        )

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        try:
            _injected_fault(target)
            self._put(target, data)
        except OSError as exc:
            raise self._refused(key, exc) from exc

    def _put(self, target: Path, data: bytes) -> None:
        fd, tmp = _temporary(target)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"artifact {key} does not exist") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                keys.append(full.relative_to(self.root).as_posix())
        return sorted(keys)

    def append_text(self, key: str, text: str) -> None:
        target = self.path(key)
        try:
            _injected_fault(target)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(target, flags, 0o666)
            except FileNotFoundError:  # its folder is new (the folder is made only then)
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(target, flags, 0o666)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise self._refused(key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._refused(key, exc) from exc

    def remove_tree(self, prefix: str) -> None:
        """Delete every artifact under ``prefix`` (a folder; local only, for cleanup)."""
        import shutil

        shutil.rmtree(self.path(prefix.rstrip("/")), ignore_errors=True)
