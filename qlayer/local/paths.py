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
        """The home at ``home``, ``$QLAYER_HOME`` or ``~/.qlayer``, created private to its
        user (0700): it holds every job's arguments, results and logs."""
        chosen = home or os.environ.get("QLAYER_HOME") or Path.home() / ".qlayer"
        root = Path(chosen).expanduser().absolute()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if root.stat().st_uid == os.getuid() and root.stat().st_mode & 0o077:
            root.chmod(0o700)  # ours, but readable by others: made private
        return cls(root)

    @property
    def db(self) -> Path:
        return self.root / "qlayer.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def envs(self) -> Path:
        """Program environments, one folder per lock hash (:mod:`qlayer.local.envs`)."""
        return self.root / "envs"

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
    def token_file(self) -> Path:
        return self.root / "token"

    def token(self) -> str:
        """This home's secret (0600; made on first use): it signs webhook notifications."""
        import secrets

        try:
            return self.token_file.read_text().strip()
        except FileNotFoundError:
            pass
        value = secrets.token_urlsafe(32)
        temporary = self.root / f".token-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        try:
            os.link(temporary, self.token_file)  # whole, or not at all; the first one wins
        except FileExistsError:
            value = self.token_file.read_text().strip()
        finally:
            temporary.unlink()
        return value

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def workers_file(self) -> Path:
        """The process groups of the daemon's workers (ended after a crash)."""
        return self.root / "workers.pgid"

    @property
    def health_file(self) -> Path:
        """What the daemon says of its health (paused on a full disk, and why)."""
        return self.root / "daemon.health"
