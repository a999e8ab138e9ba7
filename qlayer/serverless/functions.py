"""Uploaded Qiskit Serverless functions: names, records, and the artifact made a program.

A function is uploaded as a tar of its working folder (``QiskitFunction(entrypoint=,
working_dir=)``). Its bytes are untrusted: the archive is read within bounds (size, member
count, regular files only, no absolute or ``..`` paths, no links) before anything is
written, and every ``.py`` file must parse. It becomes a qlayer program folder::

    main.py             the one-stage workflow (qlayer.serverless.job) that runs it
    serverless.json     the function's record (entrypoint, env vars, dependencies...)
    requirements.txt    the function's ``dependencies``, one a line (only if it has any):
                        the program's environment (:mod:`qlayer.envs`), built once
    function/...        the uploaded files, as they were

Records live in the artifact store under ``serverless/functions/<provider>/<title>.json``
(``_`` for a function without a provider); user files under
``serverless/files/<provider>/<title>/``.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qlayer.envs.requirements import REQUIREMENTS_TXT
from qlayer.errors import ProgramError, RequirementError
from qlayer.program import bundle, upload
from qlayer.serverless.errors import GatewayError
from qlayer.store.base import ArtifactStore

#: The largest artifact accepted (the library itself refuses more than 50 MB).
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024
#: The most members an artifact may hold.
MAX_ARTIFACT_MEMBERS = 5000
#: The main file of the program a function becomes.
MAIN = (
    '"""A Qiskit Serverless function, run by qlayer (generated at upload)."""\n\n'
    "from qlayer.serverless.job import function_workflow\n\n"
    "wf = function_workflow(__file__)\n"
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_ENTRYPOINT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,254}\.py$")
_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 _.()+=,@-]{0,199}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
NO_PROVIDER = "_"


def check_title(value: Any, what: str = "title") -> str:
    """A function title or provider name, or a 400 saying what is allowed."""
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise GatewayError(
            400,
            f"invalid {what} {str(value)[:80]!r}: use letters, digits, '.', '_' and '-' "
            "(at most 100 characters, starting with a letter or digit)",
        )
    return value


def split_title(title: Any, provider: Any) -> tuple[str, str | None]:
    """``(title, provider)`` from a title that may be ``provider/title``."""
    if not isinstance(title, str):
        raise GatewayError(400, "'title' is required")
    if "/" in title:
        head, _, tail = title.partition("/")
        if provider and provider != head:
            raise GatewayError(400, f"two providers given: {provider!r} and {head!r}")
        title, provider = tail, head
    check_title(title)
    if provider in (None, ""):
        return title, None
    return title, check_title(provider, "provider")


def check_file_name(value: Any) -> str:
    """A user file's name: one plain name, no folders, no traversal."""
    if (
        not isinstance(value, str)
        or not _FILE.match(value)
        or value in {".", ".."}
        or value.endswith(" ")
    ):
        raise GatewayError(
            400,
            f"invalid file name {str(value)[:80]!r}: one name of letters, digits, spaces and "
            "'_.()+=,@-' (no folders, not starting with '.'), at most 200 characters",
        )
    return value


def check_entrypoint(value: Any) -> str:
    """A relative ``.py`` path inside the artifact, without ``..`` or odd characters."""
    if not isinstance(value, str) or not _ENTRYPOINT.match(value):
        raise GatewayError(
            400, f"invalid entrypoint {str(value)[:80]!r}: a relative path to a .py file"
        )
    normal = posixpath.normpath(value)
    if normal != value or ".." in normal.split("/") or normal.startswith("/"):
        raise GatewayError(400, f"invalid entrypoint {value!r}: no '..' or '.' segments")
    return value


def provider_segment(provider: str | None) -> str:
    return provider or NO_PROVIDER


def record_key(title: str, provider: str | None) -> str:
    return f"serverless/functions/{provider_segment(provider)}/{title}.json"


def files_prefix(title: str, provider: str | None, *, private: bool = False) -> str:
    """Where a function's user files (or, ``private``, its provider's files) live."""
    area = "provider-files" if private else "files"
    return f"serverless/{area}/{provider_segment(provider)}/{title}/"


@dataclass
class FunctionRecord:
    """One uploaded function, as the gateway keeps and returns it."""

    title: str
    provider: str | None
    entrypoint: str
    program_id: str
    dependencies: list[str] = field(default_factory=list)
    env_vars: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    version: str | None = None
    type: str = "GENERIC"
    arguments_schema: Any = None
    created: float = 0.0

    def public(self) -> dict[str, Any]:
        """The function as the client reads it (``QiskitFunction.from_json``)."""
        return {
            "id": f"{provider_segment(self.provider)}/{self.title}",
            "title": self.title,
            "provider": self.provider,
            "entrypoint": self.entrypoint,
            "dependencies": self.dependencies,
            "description": self.description,
            "version": self.version,
            "type": self.type,
            "arguments_schema": json.dumps(self.arguments_schema)
            if self.arguments_schema is not None
            else None,
        }


def load(store: ArtifactStore, title: str, provider: str | None) -> FunctionRecord:
    key = record_key(title, provider)
    if not store.exists(key):
        shown = f"{provider}/{title}" if provider else title
        raise GatewayError(404, f"function {shown!r} not found; upload it first")
    data = store.get_json(key)
    return FunctionRecord(**data)


def save(store: ArtifactStore, record: FunctionRecord) -> None:
    store.put_json(record_key(record.title, record.provider), asdict(record))


def all_records(store: ArtifactStore) -> list[FunctionRecord]:
    found = []
    for key in store.list("serverless/functions/"):
        if key.endswith(".json"):
            found.append(FunctionRecord(**store.get_json(key)))
    return sorted(found, key=lambda r: (r.provider or "", r.title))


def parse_json_field(value: Any, what: str, default: Any, kind: type) -> Any:
    """A form field the client sends as JSON text (``dependencies``, ``env_vars``)."""
    if value in (None, ""):
        return default
    if not isinstance(value, str) or len(value) > 1024 * 1024:
        raise GatewayError(400, f"'{what}' must be JSON text (at most 1 MiB)")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise GatewayError(400, f"'{what}' is not valid JSON: {exc.msg}") from exc
    if not isinstance(parsed, kind):
        raise GatewayError(400, f"'{what}' must be a JSON {kind.__name__}")
    return parsed


def check_env_vars(env: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in env.items():
        if not _ENV_NAME.match(str(name)) or not isinstance(value, str) or len(value) > 65536:
            raise GatewayError(400, f"env_vars: {str(name)[:60]!r} must map a name to a string")
        out[str(name)] = value
    return out


def check_dependencies(deps: list[Any]) -> list[str]:
    """A function's ``dependencies`` (``["pendulum==3.0.0", ...]``; an older client's
    ``{"name": "==version"}`` entries too) as checked requirements, or a 400 saying which
    one is refused and why (a URL, a path, an installer option, not PEP 508...)."""
    from qlayer.envs import check_requirements

    texts = []
    for dep in deps:
        if isinstance(dep, dict) and len(dep) == 1:
            name, spec = next(iter(dep.items()))
            dep = f"{name}{spec}"
        texts.append(dep)
    try:
        return list(check_requirements(texts, "dependencies"))
    except RequirementError as exc:
        raise GatewayError(400, str(exc)) from exc


def read_artifact(data: bytes) -> dict[str, bytes]:
    """The files of an uploaded tar, checked: regular files and folders only, relative
    paths without ``..``, within :data:`MAX_ARTIFACT_BYTES` and :data:`MAX_ARTIFACT_MEMBERS`.

    Raises:
        GatewayError: 400 for a broken or unsafe archive, 413 for one too large.
    """
    if len(data) > MAX_ARTIFACT_BYTES:
        raise GatewayError(413, f"artifact is larger than {MAX_ARTIFACT_BYTES // 2**20} MiB")
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for count, member in enumerate(tar):
                if count >= MAX_ARTIFACT_MEMBERS:
                    raise GatewayError(413, f"artifact has more than {MAX_ARTIFACT_MEMBERS} files")
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                if member.isdir() or name in ("", "."):
                    continue
                parts = name.split("/")
                if (
                    not member.isfile()
                    or name.startswith("/")
                    or any(p in ("", ".", "..") for p in parts)
                    or "\\" in name
                    or any(ord(c) < 32 for c in name)
                ):
                    raise GatewayError(
                        400, f"artifact member {name[:80]!r} is not a plain relative file"
                    )
                if parts[0] in ("__pycache__", ".git", ".venv") or name == "artifact.tar":
                    continue
                total += member.size
                if total > MAX_ARTIFACT_BYTES:
                    raise GatewayError(
                        413, f"artifact unpacks to more than {MAX_ARTIFACT_BYTES // 2**20} MiB"
                    )
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover - isfile() above
                    continue
                files[name] = handle.read(member.size + 1)[: member.size]
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"artifact is not a readable tar archive: {exc}") from exc
    return files


def make_program(store: ArtifactStore, record: FunctionRecord, files: dict[str, bytes]) -> str:
    """Write the function's files as a qlayer program (checked like any program); its id.

    Raises:
        GatewayError: 400 when the entrypoint is missing or a ``.py`` file does not parse.
    """
    if record.entrypoint not in files:
        raise GatewayError(
            400, f"entrypoint {record.entrypoint!r} is not in the uploaded working_dir"
        )
    meta = asdict(record)
    meta.pop("program_id", None)
    meta.pop("created", None)
    with tempfile.TemporaryDirectory(prefix="qlayer-function-") as scratch:
        root = Path(scratch)
        (root / "main.py").write_text(MAIN)
        (root / "serverless.json").write_text(json.dumps(meta, sort_keys=True))
        if record.dependencies:
            (root / REQUIREMENTS_TXT).write_text("".join(d + "\n" for d in record.dependencies))
        for name, data in files.items():
            target = root / "function" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        try:
            program = bundle(root)
        except ProgramError as exc:
            raise GatewayError(400, str(exc).replace(scratch, "<upload>")) from exc
    return upload(store, program)


def now() -> float:
    return time.time()
