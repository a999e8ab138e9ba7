"""cfn-lint on the synthesized template (W3005, redundant DependsOn that CDK emits, ignored)."""

from __future__ import annotations

from pathlib import Path

from cfnlint.api import ManualArgs, lint_file


def test_template_is_cfn_lint_clean(template_path: Path) -> None:
    matches = lint_file(template_path, config=ManualArgs(ignore_checks=["W3005"]))
    assert not matches, "\n".join(str(m) for m in matches)
