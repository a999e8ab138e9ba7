"""Locks: a program's requirements resolved once into exact pins, and the environment's id.

A :class:`Lock` is what a substrate builds an environment from. It holds

* ``install``: the ``name==version`` pins to install, every one of them, dependencies
  included (the build installs them with ``--no-deps``: nothing is resolved again);
* ``from_base``: the pins the resolution took from the base as they are (never
  installed: the environment uses the base's copies);
* ``base``: the base's identity (Python, platform, qiskit and qlayer versions).

Its :attr:`Lock.hash` — a hash of those three — is the environment's identity: two
programs whose requirements resolve to the same pins on the same base share one
environment, built once. A lock is stored by that hash (``envs/<hash>/lock.json`` in the
job's artifact store) and a job records the hash (``JobRecord.env``, ``input.json``'s
``env``), so every substrate finds what to build, or the environment it built, from the
job alone.

Resolving is done once per set of requirements and base: :func:`lock_for` keeps the
answer in the store (``envs/resolved/<spec-hash>.json``), so a second job with the same
requirements reads its lock and runs no resolver.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlayer import keys
from qlayer.envs.base import Base, conflicts
from qlayer.envs.requirements import check_requirements
from qlayer.envs.uv import index_options, run_uv, without_constraints
from qlayer.errors import ArtifactError, RequirementError
from qlayer.store.base import ArtifactStore

__all__ = [
    "LOCK_FORMAT",
    "Lock",
    "env_id",
    "install_command",
    "load_lock",
    "lock_for",
    "python_options",
    "resolve",
    "spec_hash",
]

LOCK_FORMAT = 1
#: How long resolving may take (``QLAYER_ENV_RESOLVE_TIMEOUT_S``), in seconds.
RESOLVE_TIMEOUT_S = 90.0  # within the local client's wait for admission (120 s)
#: Characters of the sha-256 kept in an environment's id.
HASH_CHARS = 32
#: One pin of a lock: a canonical name and a version (nothing an installer could read as
#: an option or a path).
_PIN = re.compile(r"^[a-z0-9][a-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")


@dataclass(frozen=True)
class Lock:
    """Requirements resolved into exact pins on one base (see the module's docstring).

    Attributes:
        requirements: What the program declared, checked and normalised.
        install: ``name==version`` pins to install, sorted.
        from_base: ``name==version`` pins the base provides, sorted.
        base: :meth:`Base.identity` of the base it was resolved on.
    """

    requirements: tuple[str, ...]
    install: tuple[str, ...]
    from_base: tuple[str, ...] = ()
    base: Mapping[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """The environment's identity: a hash of the pins and the base."""
        body = {
            "install": list(self.install),
            "from_base": list(self.from_base),
            "base": dict(sorted(self.base.items())),
        }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode())
        return digest.hexdigest()[:HASH_CHARS]

    def install_text(self) -> str:
        """The pins to install as a requirements file (for ``uv pip install --no-deps``)."""
        return "".join(pin + "\n" for pin in self.install)

    def packages(self) -> dict[str, str]:
        """The installed pins as name -> version."""
        return dict(_split_pin(pin) for pin in self.install)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": LOCK_FORMAT,
            "hash": self.hash,
            "requirements": list(self.requirements),
            "install": list(self.install),
            "from_base": list(self.from_base),
            "base": dict(self.base),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Lock:
        """The inverse of :meth:`to_json`.

        Raises:
            RequirementError: Not a lock of this format, or its hash does not match its
                pins (a lock edited by hand or torn).
        """
        if not isinstance(data, Mapping) or data.get("format") != LOCK_FORMAT:
            raise RequirementError(f"not a qlayer lock of format {LOCK_FORMAT}: {data!r:.200}")
        lock = cls(
            requirements=tuple(str(r) for r in data.get("requirements") or ()),
            install=tuple(str(p) for p in data.get("install") or ()),
            from_base=tuple(str(p) for p in data.get("from_base") or ()),
            base=dict(data.get("base") or {}),
        )
        for pin in (*lock.install, *lock.from_base):
            if not _PIN.match(pin):
                raise RequirementError(f"lock holds {pin!r}, which is not a name==version pin")
        if data.get("hash") not in (None, lock.hash):
            raise RequirementError(
                f"lock {data.get('hash')} does not match its pins (hash {lock.hash})"
            )
        return lock


def env_id(lock: Lock | None) -> str | None:
    """The environment a job with ``lock`` runs in: its hash, or None (the base) when
    there is no lock or it installs nothing (every requirement is met by the base, or
    none applies to its Python)."""
    return lock.hash if lock is not None and lock.install else None


def spec_hash(requirements: Iterable[str], base: Base) -> str:
    """The key of one resolution: the requirements (as a set) and the base's fingerprint."""
    body = {"requirements": sorted(set(requirements)), "base": base.fingerprint()}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:HASH_CHARS]


def python_options(base: Base) -> list[str]:
    """uv's options naming the interpreter to resolve and install for."""
    if base.python_executable:
        return ["--python", base.python_executable]
    options = ["--python-version", base.python]
    if base.python_platform:
        options += ["--python-platform", base.python_platform]
    return options


def resolve_timeout_s() -> float:
    raw = os.environ.get("QLAYER_ENV_RESOLVE_TIMEOUT_S")
    try:
        return float(raw) if raw else RESOLVE_TIMEOUT_S
    except ValueError:
        raise RequirementError(f"QLAYER_ENV_RESOLVE_TIMEOUT_S={raw!r} is not seconds") from None


def resolve(requirements: Sequence[str], base: Base) -> Lock:
    """Resolve requirements into a lock on ``base``, with uv (needs the package index).

    Every package of the base is fixed at the base's version: the lock only adds.

    Raises:
        RequirementError: A requirement is malformed; one names a base package at a
            version the base does not have (the conflict is named); or the resolver
            failed (no such package, no version that fits...): the message is uv's.
    """
    checked = check_requirements(requirements)
    clashes = conflicts(checked, base)
    if clashes:
        raise RequirementError(
            "these requirements cannot coexist with the base qlayer runs on: "
            + "; ".join(clashes)
            + ". A program's environment adds packages beside the base's, it cannot "
            "replace them: drop the pin, or widen it to the base's version."
        )
    if not checked:
        return Lock((), (), (), base.identity())
    with tempfile.TemporaryDirectory(prefix="qlayer-resolve-") as tmp:
        wanted = Path(tmp) / "requirements.in"
        wanted.write_text("".join(r + "\n" for r in checked))
        constraints = Path(tmp) / "base.txt"
        constraints.write_text(base.constraints())
        result = run_uv(
            [
                "pip",
                "compile",
                str(wanted),
                "--constraint",
                str(constraints),
                "--no-header",
                "--no-annotate",
                "--quiet",
                *python_options(base),
                *index_options(),
            ],
            timeout_s=resolve_timeout_s(),
        )
    if not result.ok:
        raise RequirementError(
            f"cannot resolve the requirements {', '.join(checked)}: {result.reason()}"
        )
    pins = _pins(result.stdout)
    install = sorted(p for p in pins if base.version(_split_pin(p)[0]) is None)
    provided = sorted(p for p in pins if base.version(_split_pin(p)[0]) is not None)
    return Lock(checked, tuple(install), tuple(provided), base.identity())


def install_command(lock: Lock, requirements_file: str, target: str, base: Base) -> list[str]:
    """uv's arguments that install ``lock``'s pins (written to ``requirements_file`` from
    :meth:`Lock.install_text`) into the folder ``target``: exactly those pins, no
    dependency resolved again, nothing of the base reinstalled, bytecode compiled."""
    return [
        "pip",
        "install",
        "--target",
        target,
        "--no-deps",
        "--link-mode",
        "copy",
        "--compile-bytecode",
        "--quiet",
        "-r",
        requirements_file,
        *python_options(base),
        *without_constraints(index_options()),
    ]


def lock_for(
    store: ArtifactStore, requirements: Sequence[str], base: Base | None = None
) -> Lock | None:
    """The lock of ``requirements`` on ``base`` (default: this interpreter's), resolved
    once: the first call resolves and writes the lock (``envs/<hash>/lock.json``) and the
    resolution (``envs/resolved/<spec-hash>.json``) to ``store``; later calls read them.

    Returns:
        None when there are no requirements (the job runs on the base).

    Raises:
        RequirementError: As :func:`resolve`.
    """
    checked = check_requirements(requirements)
    if not checked:
        return None
    base = base or Base.current()
    resolution_key = keys.env_resolution(spec_hash(checked, base))
    if store.exists(resolution_key):
        known = store.get_json(resolution_key)
        try:
            return load_lock(store, str(known["env"]))
        except (KeyError, TypeError, RequirementError, ArtifactError):
            pass  # torn, pruned or from an older format: resolve again
    lock = resolve(checked, base)
    store.put_json(keys.env_lock(lock.hash), lock.to_json())
    store.put_json(resolution_key, {"env": lock.hash, "requirements": list(checked)})
    return lock


def load_lock(store: ArtifactStore, env: str) -> Lock:
    """The lock of environment ``env`` from the store.

    Raises:
        ArtifactError: No lock is stored under that id.
        RequirementError: What is stored there is not a lock, or not that one.
    """
    lock = Lock.from_json(store.get_json(keys.env_lock(env)))
    if lock.hash != env:
        raise RequirementError(f"the lock stored as {env} is {lock.hash}")
    return lock


def _split_pin(pin: str) -> tuple[str, str]:
    from packaging.utils import canonicalize_name

    name, _, version = pin.partition("==")
    return canonicalize_name(name.strip()), version.split(";")[0].strip()


def _pins(text: str) -> list[str]:
    """The ``name==version`` lines of ``uv pip compile``'s output."""
    pins = []
    for raw in text.splitlines():
        line = raw.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        if "==" not in line:
            raise RequirementError(f"the resolver gave a pin qlayer cannot read: {line!r}")
        name, version = _split_pin(line)
        pin = f"{name}=={version}"
        if not _PIN.match(pin):
            raise RequirementError(f"the resolver gave a pin qlayer cannot read: {line!r}")
        pins.append(pin)
    return pins
