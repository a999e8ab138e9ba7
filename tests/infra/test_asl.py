"""asl-validator on the state machine definition extracted from the template."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from .conftest import INFRA

VALIDATOR = INFRA / "node_modules" / ".bin" / "asl-validator"


def test_definition_is_valid_asl(definition: dict[str, Any], tmp_path: Path) -> None:
    assert VALIDATOR.exists(), (
        f"{VALIDATOR} is missing: run `npm ci --prefix infra` "
        "(installs asl-validator and the CDK CLI)"
    )
    path = tmp_path / "definition.asl.json"
    path.write_text(json.dumps(definition, indent=2))
    result = subprocess.run(
        [str(VALIDATOR), "--json-path", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
