"""Light entry points must not drag in heavy libraries (CLI start-up, Lambda cold starts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("qiskit", "qiskit_aer", "qiskit_ibm_runtime", "numpy", "scipy", "matplotlib", "braket")


@pytest.mark.parametrize(
    "module",
    [
        "qlayer",
        "qlayer.client",
        "qlayer.cli",
        "qlayer.steps",
        "qlayer.codec",
        "qlayer.core.transitions",
        "qlayer.dispatch",
    ],
)
def test_light_imports(module):
    code = (
        f"import sys, {module}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"importing {module} imported {done.stdout.strip()}"


#: What a submission from the command line must not wait for (typer alone brings pydantic).
CLI_LIBRARIES = ("typer", "rich", "pydantic", "qlayer.cli_app", "qlayer.workflow")


@pytest.mark.parametrize("module", ["qlayer.cli", "qlayer.local.client"])
def test_the_submit_path_imports_no_cli_library(module):
    code = (
        f"import sys, {module}\nprint(','.join(m for m in {CLI_LIBRARIES!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"importing {module} imported {done.stdout.strip()}"
