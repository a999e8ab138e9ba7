"""Per-program environments: a program brings its own packages, without an admin.

The model, shared by every substrate (it imports none):

1. **Declare** — :mod:`qlayer.envs.requirements`: ``Workflow(requirements=[...])`` and a
   program folder's ``requirements.txt`` / ``pyproject.toml`` (``[project].dependencies``),
   checked at the edge (:class:`~qlayer.errors.RequirementError`).
2. **Lock** — :mod:`qlayer.envs.lock`: resolved once with uv, every base package fixed
   at the base's version (:mod:`qlayer.envs.base`), into exact pins; a requirement that
   cannot coexist with the base (another qiskit major) is refused at submit, naming it.
3. **Identify** — :attr:`Lock.hash`, a hash of the pins and the base (Python, platform,
   qiskit and qlayer versions). A job records it (``JobRecord.env``, ``input.json``'s
   ``env``); the lock is stored by it (``envs/<hash>/lock.json``).
4. **Build** — a substrate installs :attr:`Lock.install` with :func:`install_command`
   into a folder of its own, once per hash, and puts that folder on the import path of
   the processes that run that job's stages, and of no others
   (:mod:`qlayer.local.envs` locally).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from qlayer import keys
from qlayer.envs.base import Base, conflicts
from qlayer.envs.lock import (
    Lock,
    env_id,
    install_command,
    load_lock,
    lock_for,
    resolve,
    spec_hash,
)
from qlayer.envs.requirements import (
    check_requirement,
    check_requirements,
    folder_requirements,
    merge_requirements,
)

if TYPE_CHECKING:
    from qlayer.store.base import ArtifactStore
    from qlayer.workflow import Workflow

__all__ = [
    "Base",
    "Lock",
    "check_requirement",
    "check_requirements",
    "conflicts",
    "env_id",
    "folder_requirements",
    "install_command",
    "load_lock",
    "lock_for",
    "merge_requirements",
    "program_requirements",
    "resolve",
    "spec_hash",
    "stored_program_requirements",
]


def program_requirements(workflow: Workflow, files: Mapping[str, bytes]) -> tuple[str, ...]:
    """Everything a program declares: its Workflow's ``requirements``, then its folder's
    ``requirements.txt`` and ``pyproject.toml`` (``files`` as in
    :attr:`qlayer.program.Bundle.files`), checked, duplicates dropped.

    Raises:
        RequirementError: A file or a requirement is malformed.
    """
    return merge_requirements(workflow.requirements, folder_requirements(files))


def stored_program_requirements(
    store: ArtifactStore, program_id: str, workflow: Workflow
) -> tuple[str, ...]:
    """:func:`program_requirements` of a program bundle already uploaded to ``store``
    (``programs/<id>/``): reads only its ``requirements.txt`` and ``pyproject.toml``."""
    from qlayer.envs.requirements import PYPROJECT_TOML, REQUIREMENTS_TXT

    prefix = keys.program_prefix(program_id)
    manifest = store.get_json(prefix + "manifest.json")
    files = {
        name: store.get_bytes(prefix + "src/" + name)
        for name in manifest.get("files") or ()
        if name in (REQUIREMENTS_TXT, PYPROJECT_TOML)
    }
    return program_requirements(workflow, files)
