"""What a program declares it needs, checked at the edge.

A program declares requirements in any of three places; a job's requirements are all of
them together:

* ``Workflow(..., requirements=["pendulum>=3", ...])``;
* a ``requirements.txt`` at the top of a program folder (one requirement a line, ``#``
  comments, blank lines);
* a ``pyproject.toml`` at the top of a program folder: its ``[project].dependencies``.

Each requirement is a PEP 508 requirement on a package from the machine's package index:
a name, optional extras, an optional version specifier and an optional environment
marker (``"tabulate==0.9.0"``, ``"pendulum[test]>=3; python_version >= '3.11'"``). What
could reach outside the index or the program is refused with a clear error: direct
references (``pkg @ https://...``), paths, editable installs and installer options
(``-e``, ``-r``, ``--index-url``...).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping

from qlayer.errors import RequirementError

__all__ = [
    "MAX_REQUIREMENTS",
    "check_requirement",
    "check_requirements",
    "folder_requirements",
    "merge_requirements",
]

#: The most requirements one program may declare (a lock stays small enough to log).
MAX_REQUIREMENTS = 200
#: The longest requirement line accepted.
MAX_REQUIREMENT_CHARS = 500
#: The files of a program folder that declare requirements (at its top only).
REQUIREMENTS_TXT = "requirements.txt"
PYPROJECT_TOML = "pyproject.toml"


def check_requirement(text: object, where: str = "requirement") -> str:
    """One requirement, checked and normalised (``"Pendulum >= 3"`` -> ``"pendulum>=3"``).

    Args:
        text: The requirement as the program wrote it.
        where: Where it came from, for the error (``"requirements.txt, line 3"``).

    Returns:
        The requirement in its canonical form: the normalised name, sorted extras, the
        specifier, and the marker after ``"; "``.

    Raises:
        RequirementError: Not a string, empty, too long, an installer option, a path, a
            URL, or not a PEP 508 requirement; the message says which and how to fix it.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if not isinstance(text, str):
        raise RequirementError(
            f"{where}: a requirement is a string such as 'pendulum>=3', not {type(text).__name__}"
        )
    line = text.strip()
    if not line:
        raise RequirementError(f"{where}: empty requirement")
    if len(line) > MAX_REQUIREMENT_CHARS:
        raise RequirementError(f"{where}: longer than {MAX_REQUIREMENT_CHARS} characters")
    if line.startswith("-"):
        raise RequirementError(
            f"{where}: {line!r} is an installer option; qlayer installs from this "
            "machine's package index, so list only requirements (e.g. 'pendulum>=3')"
        )
    if line.startswith((".", "/", "~")) or ("://" in line.split(";")[0] and "@" not in line):
        raise RequirementError(
            f"{where}: {line!r} is a path or URL; name a package from the index instead"
        )
    try:
        parsed = Requirement(line)
    except InvalidRequirement as exc:
        raise RequirementError(f"{where}: {line!r} is not a valid requirement: {exc}") from None
    if parsed.url:
        raise RequirementError(
            f"{where}: {line!r} is a direct reference ({parsed.url}); qlayer installs "
            "packages from the package index only: name the package and a version"
        )
    extras = f"[{','.join(sorted(canonicalize_name(e) for e in parsed.extras))}]"
    canonical = canonicalize_name(parsed.name) + (extras if parsed.extras else "")
    canonical += str(parsed.specifier)
    if parsed.marker is not None:
        canonical += f"; {parsed.marker}"
    return canonical


def check_requirements(values: object, where: str = "requirements") -> tuple[str, ...]:
    """A list of requirements, each checked; duplicates dropped, order kept.

    Raises:
        RequirementError: ``values`` is a single string or not a list, holds more than
            :data:`MAX_REQUIREMENTS`, or holds a bad requirement.
    """
    if isinstance(values, str | bytes):
        raise RequirementError(
            f"{where} must be a list of requirements, e.g. [{values!r}], not a single string"
        )
    if not isinstance(values, Iterable):
        raise RequirementError(f"{where} must be a list of requirements, not {values!r}")
    items = list(values)
    if len(items) > MAX_REQUIREMENTS:
        raise RequirementError(f"{where}: {len(items)} requirements; at most {MAX_REQUIREMENTS}")
    checked = [check_requirement(item, f"{where}[{i}]") for i, item in enumerate(items)]
    return tuple(dict.fromkeys(checked))


def folder_requirements(files: Mapping[str, bytes]) -> tuple[str, ...]:
    """The requirements a program folder declares in ``requirements.txt`` and
    ``pyproject.toml`` (``[project].dependencies``), at its top.

    Args:
        files: The program's files by relative path (:attr:`qlayer.program.Bundle.files`).

    Raises:
        RequirementError: A file is not UTF-8 or not valid TOML, or holds a bad
            requirement (the message names the file and line).
    """
    found: list[str] = []
    if REQUIREMENTS_TXT in files:
        found.extend(_requirements_txt(files[REQUIREMENTS_TXT]))
    if PYPROJECT_TOML in files:
        found.extend(_pyproject(files[PYPROJECT_TOML]))
    return tuple(dict.fromkeys(found))


def merge_requirements(*groups: Iterable[str]) -> tuple[str, ...]:
    """Several checked groups as one (duplicates dropped, first occurrence kept)."""
    return tuple(dict.fromkeys(item for group in groups for item in group))


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RequirementError(f"{name} is not UTF-8 text: {exc}") from None


def _requirements_txt(data: bytes) -> list[str]:
    found = []
    for number, raw in enumerate(_text(data, REQUIREMENTS_TXT).splitlines(), start=1):
        line = raw.split(" #")[0].split("\t#")[0].strip()
        if not line or line.startswith("#"):
            continue
        found.append(check_requirement(line, f"{REQUIREMENTS_TXT}, line {number}"))
    if len(found) > MAX_REQUIREMENTS:
        raise RequirementError(
            f"{REQUIREMENTS_TXT}: {len(found)} requirements; at most {MAX_REQUIREMENTS}"
        )
    return found


def _pyproject(data: bytes) -> list[str]:
    try:
        document = tomllib.loads(_text(data, PYPROJECT_TOML))
    except tomllib.TOMLDecodeError as exc:
        raise RequirementError(f"{PYPROJECT_TOML} is not valid TOML: {exc}") from None
    project = document.get("project")
    if project is None:
        return []
    if not isinstance(project, dict):
        raise RequirementError(f"{PYPROJECT_TOML}: [project] must be a table")
    dependencies = project.get("dependencies", [])
    if not isinstance(dependencies, list):
        raise RequirementError(
            f"{PYPROJECT_TOML}: [project].dependencies must be a list of requirements"
        )
    return list(check_requirements(dependencies, f"{PYPROJECT_TOML} [project].dependencies"))
