"""Loading a program: an import that never ends is stopped and named."""

from __future__ import annotations

import re
import threading

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


@pytest.mark.timeout(30)
def test_an_import_that_loops_off_the_main_thread_is_bounded_too(looping):
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_path(looping)
        except ProgramError as exc:
            errors.append(exc)

    thread = threading.Thread(target=load)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    [error] = errors
    assert "did not finish within 0.5 s" in str(error)
