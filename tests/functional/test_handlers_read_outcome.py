"""functions/read_outcome ("Read stage outcome" after Batch), with moto (mock_aws): S3, DynamoDB."""

from __future__ import annotations

from aws_fixtures import event, invoke, submit

from qlayer.aws import batch_entry, handlers
from qlayer.aws.events import LoadEvent, StepEvent, parse


def test_reads_what_the_batch_entry_wrote(aws, monkeypatch):
    """moto: batch_entry runs the stage (as in the container), read_outcome returns its decision."""
    from aws_fixtures import lambda_env

    job_id = submit(aws)
    first = handlers.load_job(LoadEvent(job_id=job_id), aws)
    for key, value in lambda_env(aws).items():
        monkeypatch.setenv(key, value)
    handlers.services.cache_clear()
    assert batch_entry.main(["--job-id", job_id, "--seq", "0", "--stage", "build"]) == 0
    batch_decision = {**first, "compute": {**first["compute"], "kind": "batch"}}
    out = invoke("read_outcome", {"job_id": job_id, "decision": batch_decision}, aws, monkeypatch)
    assert out["kind"] == "execute" and out["seq"] == 1
    assert aws.jobs.get(job_id).runs == {"build": [0]}
    # the simulation on Batch: --stage execute
    handlers.services.cache_clear()
    assert batch_entry.main(["--job-id", job_id, "--seq", "1", "--stage", "execute"]) == 0
    handlers.services.cache_clear()
    nxt = invoke("read_outcome", {"job_id": job_id, "decision": out}, aws, monkeypatch)
    assert nxt["kind"] == "next" and nxt["stage"] == "tally"


def test_missing_output_is_an_error_decision(aws, monkeypatch):
    """moto: a Batch job that wrote nothing -> error decision that says where to look."""
    job_id = submit(aws)
    first = handlers.load_job(LoadEvent(job_id=job_id), aws)
    out = invoke("read_outcome", {"job_id": job_id, "decision": first}, aws, monkeypatch)
    assert out["kind"] == "error" and out["error_type"] == "BatchOutputMissing"
    assert "CloudWatch" in out["message"]


def test_batch_bound_execute_gets_compute():
    """An execute decision for Batch carries the compute its Batch state reads."""
    from qlayer.interpreter import Decision

    d = handlers.with_compute(
        Decision("execute", seq=1, plan={"tier": "batch-gpu", "memory_mb": 40000})
    )
    assert d.compute is not None and d.compute["kind"] == "batch-gpu" and d.compute["gpus"] == 1


def test_sample_event():
    assert parse(StepEvent, event("read_outcome")).decision.kind == "next"
