"""Backend names to providers. Unknown names fail at once with the list of known ones.

- ``aer``, ``aer_*`` and ``fake_*``: :class:`~qlayer.providers.aer.AerProvider` (unchanged).
- ``ibm_*``: :class:`~qlayer.providers.ibm.IbmProvider`, when an IBM Quantum account is
  configured (saved account, ``QISKIT_IBM_TOKEN``, or ``QLAYER_IBM_TOKEN_SECRET`` on AWS).
- ``braket_*`` and Braket device ARNs: :class:`~qlayer.providers.braket.BraketProvider`
  (needs ``pip install 'qlayer[braket]'``).

Nothing here touches the network: whether a remote device is reachable is reported as
unknown (``reachable: None``) until a provider call is made.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from typing import TYPE_CHECKING, Any

from qlayer.errors import BackendError
from qlayer.providers.aer import IDEAL_METHODS, AerProvider
from qlayer.providers.base import AsyncProvider, BackendInfo, SyncProvider

if TYPE_CHECKING:
    from qiskit.primitives import PrimitiveResult
    from qiskit.transpiler import Target

    from qlayer.providers.braket import BraketProvider
    from qlayer.providers.ibm import IbmProvider
    from qlayer.request import ExecuteRequest


@dataclasses.dataclass(frozen=True)
class RemoteBackendInfo(BackendInfo):
    """A provider-hosted backend, with what qlayer can say of it offline.

    Attributes:
        configured: Credentials/SDK for this provider are present on this machine.
        reachable: Always None here (unknown without a network call).
        limits: The dispatcher's default limits for it (see ``qlayer.dispatch``).
    """

    configured: bool = True
    reachable: bool | None = None
    limits: dict[str, Any] | None = None


@functools.lru_cache(maxsize=1)
def aer_provider() -> AerProvider:
    return AerProvider()


@functools.lru_cache(maxsize=1)
def ibm_provider() -> IbmProvider:
    from qlayer.providers.ibm import IbmProvider

    return IbmProvider()


@functools.lru_cache(maxsize=1)
def braket_provider() -> BraketProvider:
    from qlayer.providers.braket import BraketProvider

    return BraketProvider()


def braket_installed() -> bool:
    return importlib.util.find_spec("braket") is not None and (
        importlib.util.find_spec("qiskit_braket_provider") is not None
    )


def provider_name(backend: str) -> str:
    """``aer``, ``ibm`` or ``braket`` by the name's shape (the name need not exist)."""
    if backend.startswith("ibm_"):
        return "ibm"
    if backend.startswith("braket_") or backend.startswith("arn:aws:braket"):
        return "braket"
    return "aer"


def provider(backend: str) -> SyncProvider | AsyncProvider:
    """The provider that serves ``backend``: sync (simulators) or async (QPU services)."""
    resolve(backend)
    kind = provider_name(backend)
    if kind == "ibm":
        return ibm_provider()
    if kind == "braket":
        return braket_provider()
    return aer_provider()


def async_provider_for(backend: str) -> AsyncProvider:
    """The provider with its own queue that serves ``backend`` (the dispatcher's view)."""
    found = provider(backend)
    if not isinstance(found, AsyncProvider):
        raise BackendError(f"{backend} runs on our own compute, not through a provider queue")
    return found


class _DispatchOnly(SyncProvider):
    """An async provider seen through the sync port: targets work, ``run`` does not
    (QPU services are driven by ``qlayer.dispatch``: submit once, poll, collect)."""

    def __init__(self, inner: AsyncProvider) -> None:
        self.inner = inner
        self.name = inner.name

    def backends(self) -> list[BackendInfo]:
        return self.inner.backends()

    def target(self, backend: str) -> Target:
        return self.inner.target(backend)

    def run(self, backend: str, request: ExecuteRequest) -> PrimitiveResult:
        if backend == "braket_local":  # runs in-process at submit: nothing to wait for
            import uuid

            job_id = self.inner.submit(backend, request, idempotency_key=uuid.uuid4().hex)
            return self.inner.result(job_id)
        raise BackendError(
            f"{backend} is a {self.inner.name} backend with its own queue: it is submitted "
            "through the dispatcher (qlayer.dispatch.submit_once / poll_once), not run in a worker"
        )


def provider_for(backend: str) -> SyncProvider:
    """The provider that serves ``backend``, through the sync port (``target`` for any
    backend; ``run`` only for simulators)."""
    found = provider(backend)
    if isinstance(found, AsyncProvider):
        return _DispatchOnly(found)
    return found


def resolve(backend: str) -> BackendInfo:
    """What qlayer knows of ``backend`` (no network call).

    Raises:
        BackendError: The name is unknown, or its provider is not configured here; the
            message says what to do.
    """
    if not isinstance(backend, str) or not backend:
        raise BackendError(f"backend must be a non-empty name, got {backend!r}")
    aer = aer_provider()
    if backend in IDEAL_METHODS:
        return aer.info(backend)
    if backend.startswith("fake_") and aer.has_backend(backend):
        return aer.info(backend)
    kind = provider_name(backend)
    if kind == "ibm" and len(backend) > 4:
        from qlayer.providers.ibm import ibm_configured

        if not ibm_configured():
            raise BackendError(
                f"{backend} is an IBM Quantum device, but no IBM Quantum account is configured "
                "here. Save one with QiskitRuntimeService.save_account(token=..., "
                "instance=..., set_as_default=True), or set QISKIT_IBM_TOKEN. To simulate it "
                f"offline use fake_{backend[4:]}."
            )
        return _remote(_ibm_info(backend), configured=True)
    if kind == "braket":
        if not braket_installed():
            raise BackendError(
                f"{backend} is an Amazon Braket backend; install the SDK: "
                "pip install 'qlayer[braket]'"
            )
        from qlayer.providers.braket import BRAKET_DEVICES, BraketProvider

        if backend in BRAKET_DEVICES or backend.startswith("arn:aws:braket"):
            return _remote(BraketProvider.info(backend), configured=True)
    raise BackendError(
        f"unknown backend {backend!r}. Known backends: "
        f"{', '.join(known_names())}. Run 'qlayer backends' for details."
    )


def _ibm_info(backend: str) -> BackendInfo:
    from qlayer.providers.ibm import IbmProvider

    return IbmProvider.info(backend)


def _remote(info: BackendInfo, *, configured: bool) -> RemoteBackendInfo:
    from qlayer.dispatch import RateLimiter

    limits = RateLimiter().limits_for(info.name)
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(BackendInfo)}
    return RemoteBackendInfo(
        **fields,
        configured=configured,
        reachable=None,
        limits={
            "max_in_flight": limits.max_in_flight,
            "submits_per_s": limits.submits_per_s,
            "burst": limits.burst,
            "source": limits.source,
        },
    )


def known_names() -> list[str]:
    return [info.name for info in known_backends()]


def known_backends() -> list[BackendInfo]:
    """Every backend the configuration knows (remote ones with ``reachable: None``)."""
    from qlayer.providers.ibm import IBM_DEVICES, ibm_configured

    infos: list[BackendInfo] = list(aer_provider().backends())
    ibm_ok = ibm_configured()
    infos.extend(_remote(_ibm_info(name), configured=ibm_ok) for name in IBM_DEVICES)
    if braket_installed():
        from qlayer.providers.braket import BRAKET_DEVICES, BraketProvider

        infos.extend(_remote(BraketProvider.info(name), configured=True) for name in BRAKET_DEVICES)
    return infos
