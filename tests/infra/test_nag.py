"""cdk-nag AwsSolutions: no finding left unacknowledged, and every acknowledgment has a reason."""

from __future__ import annotations

from importlib.metadata import version

import cdk_nag
from aws_cdk import Validations
from cdk_nag import AwsSolutionsChecks
from qlayer_infra import nag
from qlayer_infra.stack import QlayerStack

from .conftest import make_app


def _describe(report) -> list[str]:
    lines = []
    for violation in report.violations:
        for resource in violation.violating_resources:
            lines.append(
                f"{violation.rule_name} at {resource.construct_path}: {violation.description[:120]}"
            )
    return lines


def test_cdk_nag_3() -> None:
    # cdk-nag 3 runs as a policy-validation plugin; v2's NagSuppressions/Aspects form is gone.
    assert int(version("cdk-nag").split(".")[0]) >= 3
    assert not hasattr(cdk_nag, "NagSuppressions")


def test_no_unacknowledged_findings(stack: QlayerStack) -> None:
    report = AwsSolutionsChecks().validate_scope(stack)
    assert not _describe(report), "\n".join(_describe(report))
    assert report.success


def test_app_synthesizes_with_the_plugin_attached(tmp_path) -> None:
    """What infra/app.py does: a finding would stop synthesis here."""
    app = make_app(tmp_path)
    QlayerStack(app, "Qlayer")
    nag.attach(app)
    app.synth()
    assert Validations.of(app) is not None


def test_every_acknowledgment_has_a_reason(stack: QlayerStack) -> None:
    acknowledged: dict[str, str] = {}
    for construct in stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == "aws:cdk:acknowledged-rules":
                for rule, reason in entry.data.items():
                    assert isinstance(reason, str) and len(reason) > 30, (construct.node.path, rule)
                    acknowledged[f"{construct.node.path} {rule}"] = reason
    assert acknowledged, "no acknowledgments found: has the metadata format changed?"
