"""Event models of the AWS handlers: the shapes accepted, and the errors for the rest (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlayer.aws.events import (
    DispatchMessage,
    EventError,
    ExecutionStatusChange,
    FailureEvent,
    JobSpec,
    LoadEvent,
    S3Event,
    SqsEvent,
    StepEvent,
    parse,
)

EVENTS = Path(__file__).parents[1] / "events"


def sample(name):
    return json.loads((EVENTS / f"{name}.json").read_text())


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (LoadEvent, "loader"),
        (StepEvent, "stage_runner"),
        (StepEvent, "simulator"),
        (StepEvent, "read_outcome"),
        (StepEvent, "start_children"),
        (StepEvent, "fan_in"),
        (StepEvent, "finaliser"),
        (FailureEvent, "fail_job"),
        (FailureEvent, "fail_job_record_failure"),
        (ExecutionStatusChange, "execution_aborted"),
        (S3Event, "trigger_s3"),
        (SqsEvent, "dispatcher_sqs"),
    ],
)
def test_every_sample_event_parses(model, name):
    parse(model, sample(name))


def test_job_spec_accepts_the_documented_forms():
    assert JobSpec.model_validate({"program": "programs/abc123/"}).program_id == "abc123"
    spec = JobSpec.model_validate(
        {"program": "inbox/ghz.py", "arguments": {"n": 3}, "backend": "aer"}
    )
    assert spec.program_id is None and spec.arguments == {"n": 3}
    assert JobSpec.model_validate({"program": "programs/uploads/ghz.py"}).program_id is None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "program: Field required"),
        ({"program": "../../etc/passwd.py"}, "program"),
        ({"program": "run.sh"}, "programs/<id>/"),
        ({"program": "private/keys.py"}, "under programs/ or inbox/"),
        ({"program": "programs/a/", "arguments": [1]}, "arguments"),
        ({"program": "programs/a/", "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"program": "programs/a/", "backend": ""}, "backend"),
    ],
)
def test_job_spec_errors_name_the_field(body, words):
    with pytest.raises(EventError, match="invalid job spec") as info:
        parse(JobSpec, body, what="job spec")
    assert words in str(info.value)


def test_step_event_errors():
    with pytest.raises(EventError, match=r"decision\.kind"):
        parse(StepEvent, {"job_id": "j", "decision": {"kind": "explode"}})
    with pytest.raises(EventError, match="job_id"):
        parse(StepEvent, {"job_id": "a/b", "decision": {"kind": "done"}})
    extra = parse(
        StepEvent, {"job_id": "j", "decision": {"kind": "next", "stage": "s", "extra": {"p": 1}}}
    )
    assert extra.decision_json() == {"kind": "next", "seq": 0, "stage": "s", "extra": {"p": 1}}


def test_dispatch_message():
    assert parse(DispatchMessage, {"action": "cancel", "job_id": "j"}).check().seq is None
    with pytest.raises(EventError, match="lacks seq, task_token"):
        parse(DispatchMessage, {"job_id": "j"}).check()
    assert (
        parse(
            DispatchMessage,
            {"job_id": "j", "seq": "3", "task_token": "t", "request_key": "k", "backend": "aer"},
        ).seq
        == 3
    )


def test_light_handlers_import_no_qiskit():
    """The handlers that run from the zip + light layer must not import qiskit (it is not
    there): each app module, as Lambda imports it, with what it imports."""
    import subprocess
    import sys

    light = ["trigger", "loader", "read_outcome", "start_children", "fan_in", "finaliser"]
    light.append("fail_job")
    modules = ", ".join(f"functions.{name}.app" for name in light)
    code = f"import sys, {modules}\nprint([m for m in sys.modules if m.startswith('qiskit')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
