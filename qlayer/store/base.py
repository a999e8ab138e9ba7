"""The artifact store port: bytes under keys, with JSON helpers built on top."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

from qlayer import codec
from qlayer.errors import ArtifactError


class ArtifactStore(ABC):
    """Where every artifact lives. Implementations: a local folder, an S3 bucket.

    Writes are atomic: a reader sees the old object or the new one, never half.

    Attributes:
        append_is_cheap: :meth:`append_text` costs a local write (not a round trip),
            so logs may be flushed often.
    """

    append_is_cheap: bool = False

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key``, replacing what was there."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read ``key``. Raises :class:`ArtifactError` if it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True if ``key`` exists."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys under ``prefix``, sorted."""

    @abstractmethod
    def append_text(self, key: str, text: str) -> None:
        """Append ``text`` to a log object (S3: read-modify-write, logs only)."""

    def make_durable(self, key: str) -> None:
        """Make what was written under ``key`` survive this process's death. Here every
        write does once it returns; a store that holds a step's writes for its caller to
        commit (:class:`qlayer.local.artifacts.HomeStore`) writes them out."""
        return None

    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing if it does not exist). Stores that cannot say so."""
        raise ArtifactError(f"{type(self).__name__} cannot delete artifacts")

    # -- helpers built on the five methods -------------------------------------------
    def put_json(self, key: str, value: Any) -> None:
        self.put_bytes(key, json.dumps(value, separators=(",", ":")).encode())

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                f"artifact {key} is corrupted (not valid JSON: {exc}); "
                "it cannot be used, rerun the job"
            ) from exc

    def put_value(self, key: str, value: Any, *, where: str) -> None:
        """Encode ``value`` with the safe codec and write it; large arrays and circuits go
        to binary sidecars next to it (``<key>-<n>.npy``, ``.qpy``), written first."""
        sidecars = codec.Sidecars(self, key)
        self.put_bytes(key, codec.dumps(value, where=where, sidecars=sidecars).encode())

    def get_value(self, key: str) -> Any:
        """Read and decode a value written by :meth:`put_value` (bounded, see
        :mod:`qlayer.bounds`).

        Raises:
            ArtifactError: The artifact is missing or corrupted; the message names it once.
        """
        data = self.get_bytes(key)
        try:
            return codec.loads(data, where=f"artifact {key}", files=self)
        except ArtifactError:
            raise
        except Exception as exc:  # CodecError names the artifact already
            raise ArtifactError(f"{exc}; it cannot be used, rerun the job") from exc

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8", errors="replace")
