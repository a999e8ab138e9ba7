"""Backend names to providers. Unknown names fail at once with the list of known ones.

- ``aer``, ``aer_*`` and ``fake_*``: :class:`~qlayer.providers.aer.AerProvider` (unchanged).
- ``ibm_*``: :class:`~qlayer.providers.ibm.IbmProvider`, when an IBM Quantum account is
  configured (saved account, ``QISKIT_IBM_TOKEN``, or credentials injected with
  :func:`configure` — on AWS, from the stack's secret).
- ``braket_*`` and Braket device ARNs: :class:`~qlayer.providers.braket.BraketProvider`;
  ``braket_local``: :class:`~qlayer.providers.braket.BraketLocalProvider`, Braket's
  offline simulator on our own compute (needs ``pip install 'qlayer[braket]'``).

- Plugins: ``QLAYER_PROVIDERS`` names extra providers, comma-separated, each as
  ``[prefix=]module.path:factory`` or ``[prefix=]/path/to/file.py:factory``. ``factory``
  (a class or a function, called without arguments) returns a
  :class:`~qlayer.providers.base.SyncProvider` or an
  :class:`~qlayer.providers.base.AsyncProvider`; it serves every backend named
  ``<prefix>`` or ``<prefix>_*`` (``prefix`` defaults to the provider's ``name``), before
  the built-in providers. A backend name resolves through the provider's ``backends()``
  list, or its ``info(name)`` method if it has one. An optional ``limits`` attribute
  (``{backend or prefix: qlayer.dispatch.RateLimits}``) sets its rate limits. The
  variable must be set for the client and the daemon alike (a daemon started by the
  client inherits it). Example::

      QLAYER_PROVIDERS="myqpu=my_company.qlayer_plugin:MyQpuProvider"

- Rate limits: ``QLAYER_RATE_LIMITS`` (JSON ``{backend or prefix: {max_in_flight,
  submits_per_s, burst, max_pubs}}``) overrides the dispatcher's per-backend limits.

Credentials are injected by whoever builds the providers (:func:`configure`): the local
client and daemon use the user's saved accounts; the AWS handlers pass the stack's secret
and Braket bucket. Every caller — workers, the daemon's QPU pump, the AWS dispatcher and
poller — looks providers up here, through :func:`provider`.

Nothing here touches the network: whether a remote device is reachable is reported as
unknown (``reachable: None``) until a provider call is made.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlayer.errors import BackendError
from qlayer.providers.aer import IDEAL_METHODS, AerProvider
from qlayer.providers.base import AsyncProvider, BackendInfo, SyncProvider

if TYPE_CHECKING:
    from qlayer.dispatch import RateLimits
    from qlayer.providers.braket import BraketLocalProvider, BraketProvider
    from qlayer.providers.ibm import IbmProvider
    from qlayer.request import ExecuteRequest

PLUGINS_ENV = "QLAYER_PROVIDERS"
RATE_LIMITS_ENV = "QLAYER_RATE_LIMITS"


@dataclasses.dataclass(frozen=True)
class ProviderSettings:
    """What the builder of the providers hands them (credentials are never read here).

    Attributes:
        ibm_credentials: Returns ``{"token", "instance", "channel"[, "url"]}`` for IBM
            Quantum (None: the user's saved account or ``QISKIT_IBM_TOKEN``).
        braket_s3_folder: ``(bucket, prefix)`` for Braket task results (None:
            ``QLAYER_BRAKET_S3``).
    """

    ibm_credentials: Callable[[], dict[str, Any]] | None = None
    braket_s3_folder: tuple[str, str] | None = None


_SETTINGS = ProviderSettings()


def configure(settings: ProviderSettings) -> None:
    """Use ``settings`` for the providers built from now on (the built ones are dropped)."""
    global _SETTINGS
    _SETTINGS = settings
    ibm_provider.cache_clear()
    braket_provider.cache_clear()


def settings() -> ProviderSettings:
    return _SETTINGS


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

    return IbmProvider(token_provider=_SETTINGS.ibm_credentials)


@functools.lru_cache(maxsize=1)
def braket_provider() -> BraketProvider:
    from qlayer.providers.braket import BraketProvider

    return BraketProvider(s3_folder=_SETTINGS.braket_s3_folder)


@functools.lru_cache(maxsize=1)
def braket_local_provider() -> BraketLocalProvider:
    from qlayer.providers.braket import BraketLocalProvider

    return BraketLocalProvider()


# --------------------------------------------------------------------------- plugins


@dataclasses.dataclass(frozen=True)
class Plugin:
    """An extra provider registered through ``QLAYER_PROVIDERS``."""

    prefix: str
    spec: str
    provider: SyncProvider | AsyncProvider

    def serves(self, backend: str) -> bool:
        return backend == self.prefix or backend.startswith(self.prefix + "_")


def _load_factory(target: str) -> Any:
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise BackendError(
            f"{PLUGINS_ENV} entry {target!r} must look like module.path:factory "
            "or /path/to/file.py:factory"
        )
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        name = f"qlayer_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise BackendError(f"{PLUGINS_ENV}: cannot load provider file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BackendError(f"{PLUGINS_ENV}: {where} has no {attr!r}") from None


@functools.lru_cache(maxsize=8)
def _plugins_for(value: str) -> tuple[Plugin, ...]:
    plugins = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        prefix, sep, target = entry.partition("=")
        if not sep:
            prefix, target = "", entry
        made = _load_factory(target.strip())()
        if not isinstance(made, (SyncProvider, AsyncProvider)):
            raise BackendError(
                f"{PLUGINS_ENV}: {target} made a {type(made).__name__}, "
                "not a SyncProvider or an AsyncProvider"
            )
        plugins.append(Plugin(prefix.strip() or made.name, entry, made))
    return tuple(plugins)


def plugins() -> tuple[Plugin, ...]:
    """The providers registered through ``QLAYER_PROVIDERS`` (loaded once per value)."""
    return _plugins_for(os.environ.get(PLUGINS_ENV, ""))


def plugin_for(backend: str) -> Plugin | None:
    for plugin in plugins():
        if plugin.serves(backend):
            return plugin
    return None


def _plugin_info(plugin: Plugin, backend: str) -> BackendInfo:
    for info in plugin.provider.backends():
        if info.name == backend:
            return info
    info_of = getattr(plugin.provider, "info", None)
    if callable(info_of):
        found = info_of(backend)
        if isinstance(found, BackendInfo):
            return found
    raise BackendError(
        f"unknown backend {backend!r} of provider {plugin.prefix!r} ({plugin.spec}). "
        f"Known backends: {', '.join(known_names())}."
    )


def configured_limits() -> dict[str, RateLimits]:
    """Rate limits beyond the defaults: plugins' ``limits``, then ``QLAYER_RATE_LIMITS``."""
    from qlayer.dispatch import RateLimits

    out: dict[str, RateLimits] = {}
    for plugin in plugins():
        out.update(getattr(plugin.provider, "limits", None) or {})
    raw = os.environ.get(RATE_LIMITS_ENV)
    if raw:
        try:
            table = json.loads(raw)
            for name, fields in table.items():
                out[name] = RateLimits(
                    max_in_flight=int(fields["max_in_flight"]),
                    submits_per_s=float(fields.get("submits_per_s", 1000.0)),
                    burst=int(fields.get("burst", fields["max_in_flight"])),
                    max_pubs=int(fields.get("max_pubs", 300)),
                    source=f"{RATE_LIMITS_ENV}",
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendError(
                f"{RATE_LIMITS_ENV} must be JSON like "
                '{"ibm": {"max_in_flight": 3, "submits_per_s": 0.08, "burst": 3}}: '
                f"{exc}"
            ) from exc
    return out


def is_remote(backend: str) -> bool:
    """True when ``backend`` is served by a provider with its own queue (a QPU service),
    submitted and polled by the dispatcher rather than run on our own compute."""
    try:
        return isinstance(provider(backend), AsyncProvider)
    except BackendError:
        return False


# --------------------------------------------------------------------------- built-ins


def braket_installed() -> bool:
    return importlib.util.find_spec("braket") is not None and (
        importlib.util.find_spec("qiskit_braket_provider") is not None
    )


def provider_name(backend: str) -> str:
    """``aer``, ``ibm``, ``braket`` or a plugin's prefix, by the name's shape (the name
    need not exist)."""
    plugin = plugin_for(backend)
    if plugin is not None:
        return plugin.prefix
    if backend.startswith("ibm_"):
        return "ibm"
    if backend.startswith("braket_") or backend.startswith("arn:aws:braket"):
        return "braket"
    return "aer"


def prepare_request(request: ExecuteRequest) -> dict[str, Any] | None:
    """The provider's client-side preparation of ``request``, done where the stage ran.

    Needs no credentials and no network: IBM's executor program is built from the PUBs
    and options alone (:func:`qlayer.providers.ibm_primitives.prepare`). None for
    providers that prepare nothing (and for plugins).

    Raises:
        ValueError: The PUBs or options cannot be prepared (the stage fails with it).
    """
    if plugin_for(request.backend) is not None or provider_name(request.backend) != "ibm":
        return None
    from qlayer.providers.ibm_primitives import prepare

    return prepare(request)


def provider(backend: str) -> SyncProvider | AsyncProvider:
    """The provider that serves ``backend``: a :class:`SyncProvider` (it runs on our own
    compute: simulators, simulated devices, Braket's local simulator) or an
    :class:`AsyncProvider` (a QPU service with its own queue). The one lookup every
    caller uses."""
    resolve(backend)
    plugin = plugin_for(backend)
    if plugin is not None:
        return plugin.provider
    kind = provider_name(backend)
    if kind == "ibm":
        return ibm_provider()
    if kind == "braket":
        from qlayer.providers.braket import LOCAL

        return braket_local_provider() if backend == LOCAL else braket_provider()
    return aer_provider()


def sync_provider(backend: str) -> SyncProvider:
    """The provider of a backend that runs on our own compute (a worker, a Lambda, Batch).

    Raises:
        BackendError: ``backend`` is a QPU service's: it goes through the dispatcher.
    """
    found = provider(backend)
    if not isinstance(found, SyncProvider):
        raise BackendError(
            f"{backend} is a {found.name} backend with its own queue: it is submitted "
            "through the dispatcher (qlayer.dispatch: submit_once, follow), not run here"
        )
    return found


def async_provider(backend: str) -> AsyncProvider:
    """The provider with its own queue that serves ``backend`` (the dispatcher's view)."""
    found = provider(backend)
    if not isinstance(found, AsyncProvider):
        raise BackendError(f"{backend} runs on our own compute, not through a provider queue")
    return found


def resolve(backend: str, *, credentials_elsewhere: bool = False) -> BackendInfo:
    """What qlayer knows of ``backend`` (no network call).

    Args:
        credentials_elsewhere: The caller submits to a substrate that holds the providers'
            credentials itself (an AWS stack's secret): an IBM device resolves without an
            account on this machine.

    Raises:
        BackendError: The name is unknown, or its provider is not configured here; the
            message says what to do.
    """
    if not isinstance(backend, str) or not backend:
        raise BackendError(f"backend must be a non-empty name, got {backend!r}")
    plugin = plugin_for(backend)
    if plugin is not None:
        info = _plugin_info(plugin, backend)
        if isinstance(plugin.provider, AsyncProvider):
            return _remote(info, configured=True)
        return info
    aer = aer_provider()
    if backend in IDEAL_METHODS:
        return aer.info(backend)
    if backend.startswith("fake_") and aer.has_backend(backend):
        return aer.info(backend)
    kind = provider_name(backend)
    if kind == "ibm" and len(backend) > 4:
        from qlayer.providers.ibm import ibm_configured

        injected = credentials_elsewhere or _SETTINGS.ibm_credentials is not None
        if not ibm_configured(injected=injected):
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
        from qlayer.providers.braket import BRAKET_DEVICES, LOCAL, BraketProvider

        if backend == LOCAL:
            return BraketProvider.info(backend)
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

    limits = RateLimiter(configured_limits()).limits_for(info.name)
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

    infos: list[BackendInfo] = []
    for plugin in plugins():
        for info in plugin.provider.backends():
            infos.append(
                _remote(info, configured=True)
                if isinstance(plugin.provider, AsyncProvider)
                else info
            )
    infos.extend(aer_provider().backends())
    ibm_ok = ibm_configured(injected=_SETTINGS.ibm_credentials is not None)
    infos.extend(_remote(_ibm_info(name), configured=ibm_ok) for name in IBM_DEVICES)
    if braket_installed():
        from qlayer.providers.braket import BRAKET_DEVICES, LOCAL, BraketProvider

        infos.extend(
            BraketProvider.info(name)
            if name == LOCAL
            else _remote(BraketProvider.info(name), configured=True)
            for name in BRAKET_DEVICES
        )
    return infos
