"""Artifact stores: one key layout (see :mod:`qlayer.keys`), a folder or S3 behind it."""

from qlayer.store.base import ArtifactStore

__all__ = ["ArtifactStore"]
