"""What the box knows of a container image without building it: its code and its ENV.

The CDK stages each image's build context in the cloud assembly (``asset.<hash>/``,
listed in ``<stack>.assets.json`` under ``dockerImages``); the template names the image
by that hash (``...container-assets-...:<hash>``). The box runs an image function or a
Batch job with that folder's code on ``PYTHONPATH`` (the files the image holds; their
dependencies come from the box's own virtualenv) and with the ``ENV`` lines of its
Dockerfile, where the image's ``/tmp`` is the environment's own scratch folder.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class Image:
    """A container image as the box runs it.

    Attributes:
        uri: The image URI in the template.
        code: The staged build context (what ``COPY`` puts in the image).
        env: The Dockerfile's ``ENV`` values.
        plugins: Extra code folders baked into this image by the box's options.
        extra_env: Extra variables the box's options bake into the image.
    """

    uri: str
    code: Path
    env: Mapping[str, str] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def python_path(self) -> tuple[str, ...]:
        return (str(self.code), *self.plugins)

    def environment(self, tmp: Path) -> dict[str, str]:
        """The image's ENV, its ``/tmp`` being ``tmp`` (an environment's own), then the
        box's baked-in extras as given (a host path stays what it is, even under /tmp)."""
        return {**map_tmp(self.env, tmp), **self.extra_env}


def map_tmp(env: Mapping[str, str], tmp: Path) -> dict[str, str]:
    """``env`` with values under ``/tmp`` moved to ``tmp`` (the environment's own /tmp)."""
    out = {}
    for key, value in env.items():
        under = value == "/tmp" or value.startswith("/tmp/")
        out[key] = str(tmp) + value[4:] if under else value
    return out


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ``ENV`` instructions of a Dockerfile (``ENV A=1 B=2`` and ``ENV A 1`` forms)."""
    env: dict[str, str] = {}
    for instruction in _instructions(path.read_text()):
        word, _, rest = instruction.partition(" ")
        if word.upper() != "ENV":
            continue
        parts = shlex.split(rest)
        if parts and _ASSIGN.match(parts[0]):
            for part in parts:
                match = _ASSIGN.match(part)
                if match:
                    env[match.group(1)] = match.group(2)
        elif len(parts) >= 2:
            env[parts[0]] = " ".join(parts[1:])
    return env


def _instructions(text: str) -> list[str]:
    out: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        out.append(current.strip())
        current = ""
    if current:
        out.append(current.strip())
    return out


def images_of(
    assembly: Path,
    assets: Mapping[str, object],
    *,
    plugins: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, Image]:
    """Image hash -> :class:`Image`, from the ``dockerImages`` of an assets manifest."""
    out: dict[str, Image] = {}
    for digest, entry in assets.items():
        source = entry["source"]  # type: ignore[index]
        folder = assembly / source["directory"]
        dockerfile = folder / source.get("dockerFile", "Dockerfile")
        env = dockerfile_env(dockerfile) if dockerfile.is_file() else {}
        out[digest] = Image(
            uri=digest,
            code=folder,
            env=env,
            plugins=tuple(str(Path(p).resolve()) for p in plugins),
            extra_env=dict(extra_env or {}),
        )
    return out


def image_digest(uri: str) -> str:
    """The asset hash at the end of an image URI (``repo:<hash>``)."""
    return uri.rsplit(":", 1)[-1]
