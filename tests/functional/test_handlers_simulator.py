"""functions/simulator ("Simulate on Lambda"), with moto (mock_aws): S3, DynamoDB."""

from __future__ import annotations

from aws_fixtures import event, invoke, submit

from qlayer import keys
from qlayer.aws import handlers
from qlayer.aws.events import LoadEvent, StepEvent, parse


def _to_execute(svc, **arguments):
    job_id = submit(svc, arguments=arguments)
    first = handlers.load_job(LoadEvent(job_id=job_id), svc)
    return job_id, handlers.run_stage_step(
        parse(StepEvent, {"job_id": job_id, "decision": first}), svc
    )


def test_simulator_runs_the_request_and_hands_it_on(aws, monkeypatch):
    """moto: the result is stored and the next decision points at the 'then' stage."""
    job_id, decision = _to_execute(aws, shots=50)
    out = invoke("simulator", {"job_id": job_id, "decision": decision}, aws, monkeypatch)
    assert out["kind"] == "next" and out["stage"] == "tally" and out["seq"] == 2
    result = aws.store.get_value(keys.execute_result(job_id, 1))
    assert sum(result[0].data.meas.get_counts().values()) == 50
    again = invoke("simulator", {"job_id": job_id, "decision": decision}, aws, monkeypatch)
    assert again == out  # idempotent
    assert "sampler on aer" in aws.store.get_text(keys.log_key(job_id, 1, "execute"))


def test_simulator_failure_is_an_error_decision(aws, monkeypatch):
    """moto: a provider that raises -> error decision, recorded in output.json."""
    job_id, decision = _to_execute(aws)
    decision = {**decision, "backend": "fake_nowhere"}
    out = invoke("simulator", {"job_id": job_id, "decision": decision}, aws, monkeypatch)
    assert out["kind"] == "error" and "fake_nowhere" in out["message"]
    assert aws.store.exists(keys.step_dir(job_id, 1, "execute") + "output.json")


def test_sample_event():
    assert parse(StepEvent, event("simulator")).decision.kind == "execute"
