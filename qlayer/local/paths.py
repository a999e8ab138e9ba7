"""Where the local substrate keeps its state: ``$QLAYER_HOME`` (default ``~/.qlayer``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    """The files of one local qlayer installation."""

    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Home:
        chosen = home or os.environ.get("QLAYER_HOME") or Path.home() / ".qlayer"
        root = Path(chosen).expanduser().absolute()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def db(self) -> Path:
        return self.root / "qlayer.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def pid_file(self) -> Path:
        return self.root / "daemon.pid"

    @property
    def lock_file(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def socket(self) -> Path:
        return self.root / "daemon.sock"

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"
