"""Synthesize the stack as ``cdk synth`` does: the template and the cloud assembly.

The box needs a source checkout: ``infra/`` (the CDK app) and ``functions/`` next to
the ``qlayer`` package (an editable install, ``pip install -e '.[infra,cloudbox]'``),
and node for the CDK's jsii runtime.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qlayer

#: The checkout the running qlayer package lives in.
REPO = Path(qlayer.__file__).resolve().parents[1]
STACK_NAME = "Qlayer"


@dataclass(frozen=True)
class Synthesis:
    """A synthesized stack: its template and the cloud assembly folder it lives in."""

    template: dict[str, Any]
    assembly: Path
    stack_name: str = STACK_NAME

    def assets(self) -> dict[str, Any]:
        """The stack's assets manifest (``files`` and ``dockerImages`` by hash)."""
        path = self.assembly / f"{self.stack_name}.assets.json"
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def file_asset(self, digest: str) -> Path | None:
        """The staged folder of a zip asset (a function's code, a layer), by its hash."""
        entry = self.assets().get("files", {}).get(digest)
        if entry is None or entry["source"].get("packaging") != "zip":
            return None
        return self.assembly / entry["source"]["path"]


def infra_on_path(repo: Path = REPO) -> Path:
    """Put ``infra/`` (qlayer_infra, as infra/app.py imports it) on ``sys.path``."""
    infra = repo / "infra"
    if not (infra / "qlayer_infra").is_dir():
        raise FileNotFoundError(
            f"{infra} has no qlayer_infra: the cloud box synthesizes the stack from a source "
            "checkout (pip install -e '.[infra,cloudbox]' in the repository)"
        )
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    if str(infra) not in sys.path:
        sys.path.insert(0, str(infra))
    return infra


def synthesize(outdir: Path, repo: Path = REPO, **props: Any) -> Synthesis:
    """``QlayerStack(app, "Qlayer", **props)`` synthesized into ``outdir`` with infra/cdk.json's
    context, as ``cdk synth`` would."""
    infra = infra_on_path(repo)
    import aws_cdk as cdk
    from qlayer_infra.stack import QlayerStack

    context = json.loads((infra / "cdk.json").read_text())["context"]
    app = cdk.App(outdir=str(outdir), context=context)
    QlayerStack(app, STACK_NAME, **props)
    assembly = Path(app.synth().directory)
    template = json.loads((assembly / f"{STACK_NAME}.template.json").read_text())
    return Synthesis(template=template, assembly=assembly)
