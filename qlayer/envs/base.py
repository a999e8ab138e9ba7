"""The base an environment is layered on: the Python and the packages stages already have.

An environment never replaces what the base has (qiskit, numpy, qlayer itself...): it
adds packages beside them. So a lock is resolved with every base package fixed at the
version the base has, and a requirement that needs another version of one of them is
refused (:func:`conflicts`).
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Base", "conflicts"]


@dataclass(frozen=True)
class Base:
    """A base: a Python and the distributions installed in it.

    Attributes:
        python: ``"<major>.<minor>"`` of the interpreter (``"3.11"``).
        platform: The interpreter's platform (``sysconfig.get_platform()``,
            ``"linux-x86_64"``): environments with compiled packages are per platform.
        packages: Every installed distribution, canonical name -> version.
        python_executable: The interpreter to resolve and install for, when it is this
            machine's; None for a base described from elsewhere (an AWS runner image),
            which is resolved for by ``python`` and ``python_platform`` instead.
        python_platform: uv's ``--python-platform`` for a base from elsewhere
            (``"x86_64-manylinux_2_28"``); None: this machine's.
    """

    python: str
    platform: str
    packages: Mapping[str, str] = field(default_factory=dict)
    python_executable: str | None = None
    python_platform: str | None = None

    @classmethod
    def current(cls) -> Base:
        """This interpreter and what is installed in it (measured once per process).

        Call it in a process whose ``sys.path`` has no environment on it (the daemon, a
        worker not yet given one): else that environment's packages count as base.
        """
        if not _CURRENT:
            _CURRENT.append(
                cls(
                    python=f"{sys.version_info.major}.{sys.version_info.minor}",
                    platform=sysconfig.get_platform(),
                    packages=installed_packages(),
                    python_executable=sys.executable,
                )
            )
        return _CURRENT[0]

    def version(self, name: str) -> str | None:
        """The base's version of a distribution (any spelling of its name), or None."""
        from packaging.utils import canonicalize_name

        return self.packages.get(canonicalize_name(name))

    def identity(self) -> dict[str, Any]:
        """What an environment's identity holds of its base: Python, platform, and the
        versions of qiskit and qlayer."""
        return {
            "python": self.python,
            "platform": self.python_platform or self.platform,
            "qiskit": self.version("qiskit"),
            "qlayer": self.version("qlayer"),
        }

    def fingerprint(self) -> str:
        """A hash of everything a resolution depends on: the identity and every package's
        version (a changed numpy resolves again)."""
        body = {"identity": self.identity(), "packages": dict(sorted(self.packages.items()))}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def constraints(self) -> str:
        """The base as a constraints file: ``name==version`` per installed distribution."""
        return "".join(f"{name}=={version}\n" for name, version in sorted(self.packages.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "platform": self.platform,
            "packages": dict(sorted(self.packages.items())),
            "python_platform": self.python_platform,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Base:
        """A base described elsewhere (e.g. the manifest of a runner image)."""
        return cls(
            python=str(data["python"]),
            platform=str(data["platform"]),
            packages={str(k): str(v) for k, v in dict(data.get("packages") or {}).items()},
            python_platform=data.get("python_platform"),
        )


_CURRENT: list[Base] = []


def installed_packages(path: Iterable[str] | None = None) -> dict[str, str]:
    """The distributions importable from ``path`` (default ``sys.path``): canonical name ->
    version, the first found winning as it does for imports."""
    from importlib.metadata import distributions

    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    for dist in distributions(path=list(path) if path is not None else sys.path):
        name = dist.metadata["Name"] if dist.metadata else None
        if not name:
            continue
        found.setdefault(canonicalize_name(name), dist.version)
    return found


def conflicts(requirements: Iterable[str], base: Base) -> list[str]:
    """The requirements that name a base package at a version the base does not have.

    Each entry says which requirement and what the base has, e.g. ``"qiskit<2 (the base
    has qiskit 2.6.2)"``. Markers that do not apply to the base's Python are ignored.
    """
    from packaging.requirements import Requirement

    found = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"python_version": base.python}
        ):
            continue
        have = base.version(requirement.name)
        if have is None:
            continue
        if not requirement.specifier.contains(have, prereleases=True):
            found.append(f"{text} (the base has {requirement.name} {have})")
    return found
