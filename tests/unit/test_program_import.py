"""Loading a program: an import that never ends is stopped and named."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from qlayer.errors import ProgramError
from qlayer.program import load_path

LOOPING = """\
from qlayer import Done, Workflow

wf = Workflow("looping")

count = 0
while True:
    count += 1


@wf.stage()
def only(args):
    return Done(args)
"""


@pytest.fixture
def looping(tmp_path, monkeypatch):
    monkeypatch.setenv("QLAYER_IMPORT_TIMEOUT_S", "0.5")
    path = tmp_path / "looping.py"
    path.write_text(LOOPING)
    return path


@pytest.mark.timeout(30)
def test_an_import_that_loops_is_stopped_and_says_where_and_what_to_do(looping):
    with pytest.raises(ProgramError) as raised:
        load_path(looping)
    message = str(raised.value)
    assert "importing looping.py did not finish within 0.5 s" in message
    assert re.search(r"it was at looping\.py, line [67]\)", message)  # in the loop
    assert "move long work" in message and "QLAYER_IMPORT_TIMEOUT_S" in message


OFF_THE_MAIN_THREAD = """
import sys, threading
from qlayer.errors import ProgramError
from qlayer.program import load_path

errors = []

def load():
    try:
        load_path(sys.argv[1])
    except ProgramError as exc:
        errors.append(exc)

thread = threading.Thread(target=load)
thread.start()
thread.join(20)
print("alive" if thread.is_alive() else str(errors[0]) if errors else "no error")
"""


@pytest.mark.timeout(60)
def test_an_import_that_loops_off_the_main_thread_is_bounded_too(looping):
    # In a process of its own: the abandoned import keeps spinning until that process
    # ends, and would slow every test after it if it ran here.
    done = subprocess.run(
        [sys.executable, "-c", OFF_THE_MAIN_THREAD, str(looping)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert "did not finish within 0.5 s" in done.stdout


def test_a_missing_module_at_top_level_says_to_import_requirements_in_the_stages(tmp_path):
    program = tmp_path / "needs.py"
    program.write_text(
        "import qlayer_no_such_module_xyz\n"
        "from qlayer import Workflow\n"
        "wf = Workflow('needs', requirements=['qlayer-no-such-module-xyz'])\n"
    )
    with pytest.raises(ProgramError, match="import it inside the stage functions"):
        load_path(program)
