"""Backend names to providers. Unknown names fail at once with the list of known ones."""

from __future__ import annotations

import functools

from qlayer.errors import BackendError
from qlayer.providers.aer import IDEAL_METHODS, AerProvider
from qlayer.providers.base import BackendInfo, SyncProvider


@functools.lru_cache(maxsize=1)
def aer_provider() -> AerProvider:
    return AerProvider()


def provider_for(backend: str) -> SyncProvider:
    """The provider that serves ``backend``."""
    resolve(backend)
    return aer_provider()


def resolve(backend: str) -> BackendInfo:
    """What qlayer knows of ``backend``.

    Raises:
        BackendError: The name is unknown; the message lists the known names.
    """
    if not isinstance(backend, str) or not backend:
        raise BackendError(f"backend must be a non-empty name, got {backend!r}")
    aer = aer_provider()
    if backend in IDEAL_METHODS:
        return aer.info(backend)
    if backend.startswith("fake_") and aer.has_backend(backend):
        return aer.info(backend)
    raise BackendError(
        f"unknown backend {backend!r}. Known backends: "
        f"{', '.join(known_names())}. Run 'qlayer backends' for details."
    )


def known_names() -> list[str]:
    return [info.name for info in known_backends()]


def known_backends() -> list[BackendInfo]:
    """Every backend the configuration knows."""
    return aer_provider().backends()
