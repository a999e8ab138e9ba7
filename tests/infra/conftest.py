"""Shared fixtures for the CDK assertion tests: the QlayerStack is synthesized once per session.

Needs aws-cdk-lib, constructs, cdk-nag 3 and cfn-lint (``pip install -e '.[infra]'`` plus
``infra/requirements.txt``) and, for test_asl.py, ``npm ci --prefix infra``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
if str(INFRA) not in sys.path:
    sys.path.insert(0, str(INFRA))  # qlayer_infra, as infra/app.py imports it
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # qlayer, when it is not installed

try:
    import aws_cdk as cdk
    from aws_cdk.assertions import Template
except ImportError as exc:  # pragma: no cover - environment problem
    raise ImportError(
        "tests/infra needs aws-cdk-lib, constructs, cdk-nag and cfn-lint: "
        "pip install -r infra/requirements.txt"
    ) from exc

from qlayer_infra.stack import QlayerStack  # noqa: E402


def cdk_context() -> dict[str, Any]:
    """The context (feature flags) of infra/cdk.json: tests synthesize what `cdk synth` does."""
    return json.loads((INFRA / "cdk.json").read_text())["context"]


def make_app(outdir: Path) -> cdk.App:
    return cdk.App(outdir=str(outdir), context=cdk_context())


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> tuple[QlayerStack, Path]:
    """The default QlayerStack and the path of its synthesized template."""
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = make_app(outdir)
    stack = QlayerStack(app, "Qlayer")
    assembly = app.synth()
    return stack, Path(assembly.directory) / "Qlayer.template.json"


@pytest.fixture(scope="session")
def stack(synthesized: tuple[QlayerStack, Path]) -> QlayerStack:
    return synthesized[0]


@pytest.fixture(scope="session")
def template_path(synthesized: tuple[QlayerStack, Path]) -> Path:
    return synthesized[1]


@pytest.fixture(scope="session")
def template(stack: QlayerStack) -> Template:
    return Template.from_stack(stack)


@pytest.fixture(scope="session")
def template_json(template_path: Path) -> dict[str, Any]:
    return json.loads(template_path.read_text())


@pytest.fixture(scope="session")
def definition(template_json: dict[str, Any]) -> dict[str, Any]:
    """The state machine's ASL, intrinsics resolved to dummy ARNs."""
    from qlayer_infra.extract import state_machine_definition

    return state_machine_definition(template_json)


def resources_of(template_json: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template_json["Resources"].items() if v["Type"] == rtype}
