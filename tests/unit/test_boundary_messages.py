"""Error messages at the argument and artifact boundary (issue 9.10): each says what is
wrong, where, once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qlayer import codec
from qlayer.aws.events import JobSpec
from qlayer.errors import (
    ArtifactError,
    BackendError,
    CodecError,
    ProgramError,
)
from qlayer.program import bundle
from qlayer.store.local import FolderStore


def test_a_program_with_null_bytes_names_the_file_and_the_null_bytes(tmp_path):
    program = tmp_path / "nulls.py"
    program.write_bytes(b"x = 1\n\0\n")
    with pytest.raises(ProgramError) as caught:
        bundle(program)
    message = str(caught.value)
    assert str(program) in message
    assert "null bytes" in message
    assert "None" not in message


def test_a_corrupted_result_is_reported_once(tmp_path):
    store = FolderStore(tmp_path)
    key = "jobs/j1/result.json"
    store.put_bytes(key, b"{not json")
    with pytest.raises(ArtifactError) as caught:
        store.get_value(key)
    message = str(caught.value)
    assert "corrupted" in message
    assert message.count(key) == 1, message
    assert message.count("corrupted") == 1, message


def test_deep_nesting_abbreviates_the_path():
    value: list = []
    for _ in range(250):
        value = [value]
    with pytest.raises(CodecError) as caught:
        codec.dumps(value, where="the output of stage 'build'")
    message = str(caught.value)
    assert "nested deeper than" in message
    assert message.count("[0]") < 40, message
    assert len(message) < 300, message


@pytest.mark.parametrize(
    "program", ["inbox/x.py\n", "inbox/x\n.py", "inbox/x.py\r", "programs/ab\n"]
)
def test_a_job_spec_refuses_control_characters(program):
    with pytest.raises(ValidationError, match="program"):
        JobSpec(program=program)


def test_an_inbox_spec_backend_with_a_newline_is_refused():
    from qlayer.aws.inbox import _check_backend_name

    _check_backend_name("ibm_torino")
    with pytest.raises(BackendError, match="invalid backend name"):
        _check_backend_name("aer\n")
