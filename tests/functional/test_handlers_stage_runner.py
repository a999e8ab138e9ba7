"""The stage runner handler ("Run stage on Lambda"), with moto (mock_aws): S3, DynamoDB."""

from __future__ import annotations

from aws_fixtures import event, submit

from qlayer import keys
from qlayer.aws import handlers
from qlayer.aws.events import LoadEvent, StepEvent, parse
from qlayer.status import JobStatus


def step(svc, fn, job_id, decision):
    return fn(parse(StepEvent, {"job_id": job_id, "decision": decision}), svc)


def test_runs_the_first_stage_and_records_progress(aws):
    """moto: loader -> stage runner -> execute decision; the run is counted once."""
    job_id = submit(aws)
    first = handlers.load_job(LoadEvent(job_id=job_id, execution="arn:x"), aws)
    assert first["kind"] == "next" and first["stage"] == "build"
    decision = step(aws, handlers.run_stage_step, job_id, first)
    assert decision["kind"] == "execute"
    assert decision["plan"]["tier"] == "lambda"
    record = aws.jobs.get(job_id)
    assert record.status == JobStatus.RUNNING
    assert record.stage == "execute" and record.seq == 1
    assert record.runs == {"build": [0]}
    # idempotent: running the step again returns the recorded decision, counts nothing twice
    again = step(aws, handlers.run_stage_step, job_id, first)
    assert again == decision
    assert aws.jobs.get(job_id).runs == {"build": [0]}
    assert "hello from build" in aws.store.get_text(keys.log_key(job_id, 0, "build"))


def test_whole_job_in_process(aws):
    """moto: every step of a sampling job, in the order the state machine calls them."""
    job_id = submit(aws, arguments={"shots": 32})
    decision = handlers.load_job(LoadEvent(job_id=job_id), aws)
    decision = step(aws, handlers.run_stage_step, job_id, decision)
    decision = step(aws, handlers.simulate, job_id, decision)
    assert decision["kind"] == "next" and decision["stage"] == "tally"
    decision = step(aws, handlers.run_stage_step, job_id, decision)
    assert decision["kind"] == "done"
    out = step(aws, handlers.finalise, job_id, decision)
    assert out["status"] == "DONE"
    result = aws.store.get_value(keys.job_result(job_id))
    assert result["shots"] == 32 and sum(result["counts"].values()) == 32
    events = [e["event"] for e in aws.jobs.get(job_id).timeline]
    assert events[0] == "submitted" and events[-1] == "done"


def test_stage_error_becomes_an_error_decision(aws):
    """moto: a stage that raises -> error decision with the exception's message."""
    job_id = submit(aws, arguments={"fail_at": "build"})
    decision = handlers.load_job(LoadEvent(job_id=job_id), aws)
    decision = step(aws, handlers.run_stage_step, job_id, decision)
    assert decision["kind"] == "error"
    assert decision["error_type"] == "ValueError"
    assert "build failed on purpose" in decision["message"]


def test_prepare_for_a_spec_job(aws):
    """moto: a job whose first stage is unknown (inbox spec) is prepared by the stage runner."""
    from aws_fixtures import PROGRAMS

    from qlayer.program import bundle, upload

    program_id = upload(aws.store, bundle(PROGRAMS / "aws_tiny.py"))
    job_id = "20260101-000000-abcdef"
    aws.store.put_json(
        keys.job_input(job_id),
        {"program_id": program_id, "arguments": {"shots": 16}, "backend": None, "prepared": False},
    )
    aws.jobs.put_job(
        job_id, program_id=program_id, workflow="", arguments={"shots": 16}, backend=""
    )
    decision = handlers.load_job(LoadEvent(job_id=job_id), aws)
    assert decision["compute"] == {"kind": "lambda"} and decision["extra"] == {"prepare": True}
    decision = step(aws, handlers.run_stage_step, job_id, decision)
    assert decision["kind"] == "execute"
    record = aws.jobs.get(job_id)
    assert record.workflow == "aws_tiny" and record.backend == "aer"
    assert record.arguments == {"shots": 16, "fan": 0, "fail_at": ""}


def test_prepare_reports_bad_arguments(aws):
    """moto: unknown arguments in a spec job -> error decision naming them."""
    from aws_fixtures import PROGRAMS

    from qlayer.program import bundle, upload

    program_id = upload(aws.store, bundle(PROGRAMS / "aws_tiny.py"))
    job_id = "20260101-000000-bbbbbb"
    aws.store.put_json(
        keys.job_input(job_id),
        {"program_id": program_id, "arguments": {"nope": 1}, "prepared": False},
    )
    aws.jobs.put_job(job_id, program_id=program_id, workflow="", arguments={"nope": 1}, backend="")
    decision = handlers.load_job(LoadEvent(job_id=job_id), aws)
    decision = step(aws, handlers.run_stage_step, job_id, decision)
    assert decision["kind"] == "error" and decision["error_type"] == "ArgumentError"
    assert "nope" in decision["message"]


def test_sample_event_parses():
    """The sample event in tests/events is what the state machine sends."""
    parsed = parse(StepEvent, event("stage_runner"))
    assert parsed.decision.kind == "next"
