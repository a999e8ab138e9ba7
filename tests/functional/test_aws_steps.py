"""The stack's functions one at a time, in the cloud in a box: each edge case of a step,
invoked through the Lambda API as the state machine (or EventBridge, or S3) would, so each
handler runs in its own process with exactly its function's environment.

The whole-job scenarios are tests/functional/test_cloud_in_a_box.py; the QPU path is
test_aws_qpu.py. Job records are set up through the client's own calls (``prepare_job``,
the job store), never by writing DynamoDB items by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from cloud_box import PROGRAMS, running_box, until

from qlayer import keys
from qlayer.cloudbox import CloudBox
from qlayer.cloudbox.server import REGION
from qlayer.core.ports import Event
from qlayer.status import JobStatus

STACK = "Qlayer"
TINY = PROGRAMS / "aws_tiny.py"
BIG = PROGRAMS / "aws_big.py"
SLOW = PROGRAMS / "aws_slow.py"

pytestmark = [pytest.mark.moto, pytest.mark.slow]


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, stacks: Any) -> Iterator[CloudBox]:
    root = tmp_path_factory.mktemp("steps-box")
    with running_box(stacks, root) as running:
        yield running


@pytest.fixture(scope="module")
def svc(box: CloudBox) -> Any:
    from qlayer import Client

    return Client.aws(stack=STACK, region=REGION).services


def invoke(box: CloudBox, handler: str, event: dict[str, Any]) -> Any:
    """Invoke one of the stack's functions and return its answer (raise its error)."""
    name = box.pool(handler).spec.name
    answer = box.client("lambda").invoke(FunctionName=name, Payload=json.dumps(event).encode())
    body = json.loads(answer["Payload"].read() or b"null")
    if answer.get("FunctionError"):
        raise RuntimeError(f"{body.get('errorType')}: {body.get('errorMessage')}")
    return body


def new_job(svc: Any, program: Any = TINY, arguments: dict[str, Any] | None = None) -> str:
    from qlayer.aws.client import prepare_job

    return prepare_job(svc, program, arguments or {})  # type: ignore[no-any-return]


def first(svc: Any, job_id: str) -> dict[str, Any]:
    return svc.store.get_json(keys.job_input(job_id))["first"]  # type: ignore[no-any-return]


# -- Load job, Finalise ----------------------------------------------------------------------
def test_load_job_starts_the_job_and_refuses_an_ended_one(box: CloudBox, svc: Any) -> None:
    job_id = new_job(svc)
    decision = invoke(box, "loader", {"job_id": job_id, "execution": "arn:x"})
    assert decision == first(svc, job_id)
    assert svc.jobs.get(job_id).status == JobStatus.RUNNING
    assert svc.jobs.get(job_id).execution_arn == "arn:x"
    svc.jobs.update(job_id, status=JobStatus.CANCELLED, stage=None)
    ended = invoke(box, "loader", {"job_id": job_id})
    assert ended["kind"] == "error" and ended["error_type"] == "JobEnded"
    assert svc.jobs.get(job_id).status == JobStatus.CANCELLED


def test_load_job_refuses_a_bad_event_with_the_field_named(box: CloudBox) -> None:
    with pytest.raises(RuntimeError, match="job_id"):
        invoke(box, "loader", {"job_id": "../etc/passwd"})


def test_finalise_marks_done_once_and_never_revives_an_ended_job(box: CloudBox, svc: Any) -> None:
    job_id = new_job(svc)
    step = {"job_id": job_id, "decision": {"kind": "done", "seq": 3}}
    assert invoke(box, "finaliser", step)["changed"] is True
    assert invoke(box, "finaliser", step)["changed"] is False
    assert [e["event"] for e in svc.jobs.timeline(job_id)].count("done") == 1
    other = new_job(svc)
    svc.jobs.update(other, status=JobStatus.CANCELLED, stage=None)
    answer = invoke(box, "finaliser", {"job_id": other, "decision": {"kind": "done", "seq": 1}})
    assert (answer["status"], answer["changed"]) == ("CANCELLED", False)


# -- Fail job, and executions that ended ---------------------------------------------------------
def test_fail_job_keeps_a_caught_errors_cause(box: CloudBox, svc: Any) -> None:
    job_id = new_job(svc)
    cause = json.dumps({"errorMessage": "the stage runner ran out of time", "errorType": "X"})
    failure = {"Error": "Lambda.Unknown", "Cause": cause}
    event = {"job_id": job_id, "decision": {"kind": "error", "failure": failure}}
    assert invoke(box, "fail_job", event)["changed"] is True
    job = svc.jobs.get(job_id)
    assert job.status == JobStatus.ERROR and job.error_type == "Error"
    assert job.message == "Lambda.Unknown: the stage runner ran out of time"
    assert svc.store.get_json(keys.job_error(job_id))["message"] == job.message
    # a final status is never overwritten
    again = {"job_id": job_id, "decision": {"kind": "error", "message": "later"}}
    assert invoke(box, "fail_job", again)["changed"] is False
    assert svc.jobs.get(job_id).message == job.message


def _status_change(job_id: str, status: str) -> dict[str, Any]:
    return {
        "source": "aws.states",
        "detail-type": "Step Functions Execution Status Change",
        "detail": {
            "executionArn": f"arn:aws:states:{REGION}:123456789012:execution:m:{job_id}",
            "name": job_id,
            "status": status,
            "cause": "States.Timeout",
        },
    }


def test_executions_that_ended_badly_end_their_jobs(box: CloudBox, svc: Any) -> None:
    cancelled = new_job(svc)
    svc.jobs.request_cancel(cancelled)
    assert invoke(box, "fail_job", _status_change(cancelled, "ABORTED"))["changed"] is True
    assert svc.jobs.get(cancelled).status == JobStatus.CANCELLED
    timed_out = new_job(svc)
    assert invoke(box, "fail_job", _status_change(timed_out, "TIMED_OUT"))["changed"] is True
    job = svc.jobs.get(timed_out)
    assert (job.status, job.error_type) == (JobStatus.ERROR, "ExecutionTimedOut")
    assert job.message == "the job's execution timed out: States.Timeout"
    unknown = invoke(box, "fail_job", _status_change("20200101-000000-abcdef", "FAILED"))
    assert unknown["changed"] is False


def test_a_job_never_submitted_still_ends_visibly_in_error(box: CloudBox, svc: Any) -> None:
    """An execution started by hand for a job id that has no record: the failure makes one."""
    job_id = "20200101-000000-0a0b0c"
    event = {"job_id": job_id, "decision": {"kind": "error", "message": "no input.json"}}
    assert invoke(box, "fail_job", event)["changed"] is True
    job = svc.jobs.get(job_id)
    assert job.status == JobStatus.ERROR and job.message == "no input.json"


# -- stages ------------------------------------------------------------------------------------
def test_a_lambda_stage_above_the_stage_runners_memory_is_refused(box: CloudBox, svc: Any) -> None:
    """The stack says what a Lambda stage gets (QLAYER_RESOURCES): a stage declaring more
    is refused by the client before anything runs, and by the stage runner if it gets
    there another way (an inbox spec)."""
    from qlayer.errors import WorkflowError

    with pytest.raises(WorkflowError, match="stage_memory_mb"):
        new_job(svc, BIG)
    step = {
        "job_id": new_job(svc),
        "decision": {
            "kind": "next",
            "seq": 0,
            "stage": "build",
            "compute": {"kind": "lambda", "memory_mb": 8192},
        },
    }
    refused = invoke(box, "stage_runner", step)
    assert refused["kind"] == "error" and refused["error_type"] == "PlannerError"
    assert "memory_mb=8192" in refused["message"] and "4096" in refused["message"]


def test_a_lambda_stage_is_stopped_at_its_timeout(box: CloudBox, svc: Any) -> None:
    """``timeout_s`` reaches AWS: the stage runner stops a stage past it, with the reason."""
    job_id = new_job(svc, SLOW)
    invoke(box, "loader", {"job_id": job_id})
    decision = invoke(box, "stage_runner", {"job_id": job_id, "decision": first(svc, job_id)})
    assert decision["kind"] == "error" and decision["error_type"] == "Timeout"
    assert "exceeded its timeout of 2 s" in decision["message"]


def test_read_outcome_of_a_batch_job_that_wrote_nothing(box: CloudBox, svc: Any) -> None:
    job_id = new_job(svc)
    step = {"job_id": job_id, "decision": {"kind": "next", "seq": 4, "stage": "tally"}}
    outcome = invoke(box, "read_outcome", step)
    assert outcome["kind"] == "error" and outcome["error_type"] == "BatchOutputMissing"
    assert "CloudWatch" in outcome["message"]


def test_many_children_stay_out_of_the_state(box: CloudBox, svc: Any) -> None:
    from qlayer import codec

    job_id = new_job(svc)
    items_key = keys.step_dir(job_id, 1, "fanout") + "items.json"
    svc.store.put_json(
        items_key,
        {"items": codec.encode(list(range(45))), "stage": "square", "then": "gather"},
    )
    decision = {
        "kind": "fanout",
        "seq": 1,
        "stage": "square",
        "then": "gather",
        "items_key": items_key,
        "count": 45,
        "compute": {"kind": "lambda"},
    }
    out = invoke(box, "start_children", {"job_id": job_id, "decision": decision})
    assert out["children"] == [] and out["count"] == 45
    assert len(svc.store.get_json(out["children_key"])) == 45
    parent = svc.jobs.get(job_id)
    assert (parent.children_total, parent.fanout_seq, parent.stage) == (45, 1, "square ×45")
    assert [c.item_index for c in svc.jobs.children(job_id)] == list(range(45))
    # a child that failed fails its parent, which cancels the others (fail_job on the child)
    child = f"{job_id}_1_3"
    failed = {"job_id": child, "decision": {"kind": "error", "message": "no", "seq": 0}}
    assert invoke(box, "fail_job", failed)["changed"] is True
    parent = svc.jobs.get(job_id)
    assert parent.status == JobStatus.ERROR
    assert parent.message == f"fan-out item 3 ({child}) failed: no"
    others = {c.status for c in svc.jobs.children(job_id) if c.job_id != child}
    assert others == {JobStatus.CANCELLED}


# -- the dispatcher and the trigger ------------------------------------------------------------
def test_a_malformed_dispatch_message_is_dropped_not_retried(box: CloudBox) -> None:
    records = [
        {"messageId": "m1", "receiptHandle": "r1", "body": "not json"},
        {"messageId": "m2", "receiptHandle": "r2", "body": json.dumps({"job_id": "x"})},
    ]
    assert invoke(box, "dispatcher", {"Records": records}) == {"batchItemFailures": []}


def test_the_trigger_ignores_its_own_reports_and_reports_a_bad_spec(
    box: CloudBox, svc: Any
) -> None:
    s3, bucket = box.client("s3"), box.outputs["BucketName"]

    def uploaded(key: str) -> dict[str, Any]:
        return {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "sequencer": "01"}},
                }
            ]
        }

    assert invoke(box, "trigger", uploaded("inbox/a.json.error.json")) == []
    s3.put_object(Bucket=bucket, Key="inbox/broken.json", Body=b"{not json")
    [report] = invoke(box, "trigger", uploaded("inbox/broken.json"))
    assert "not JSON" in report["error"]
    job = svc.jobs.get(report["job_id"])
    assert job.status == JobStatus.ERROR and "not JSON" in (job.message or "")
    until("the error report", lambda: svc.store.exists("inbox/broken.json.error.json"))


def test_the_client_reads_a_job_back(box: CloudBox, tmp_path: Any) -> None:
    """Result, logs, files, timeline, usage, listing and children through ``AwsJob``."""
    from cloud_box import finish

    from qlayer import Client
    from qlayer.errors import JobFailed, JobNotFound

    client = Client.aws(stack=STACK, region=REGION)
    job = client.run(TINY, {"shots": 20})
    assert finish(box, job)["status"] == "DONE"
    result = job.result(wait=True, timeout=5)
    assert result["shots"] == 20 and sum(result["counts"].values()) == 20
    assert "hello from build" in job.logs()
    assert job.files() == ["note.txt"]
    assert job.download("note.txt", tmp_path).read_text() == "a saved file"
    events = [e["event"] for e in job.timeline()]
    assert events[0] == "submitted" and events[-1] == "done"
    usage = job.usage()
    assert usage["shots"] == 20 and usage["executes"] == 1
    assert job.job_id in [j.job_id for j in client.jobs()]
    assert client.job(job.job_id).status() == JobStatus.DONE
    with pytest.raises(JobNotFound):
        client.job("20000101-000000-000000")
    failed = client.run(TINY, {"fail_at": "build"})
    finish(box, failed)
    with pytest.raises(JobFailed, match="build failed on purpose"):
        failed.result(timeout=5)
    assert failed.error()["error_type"] == "ValueError"
    fanned = client.run(TINY, {"fan": 2})
    assert finish(box, fanned)["status"] == "DONE"
    assert [c.job_id for c in fanned.children()] == [f"{fanned.job_id}_1_0", f"{fanned.job_id}_1_1"]
    assert fanned.info()["children"] == {"total": 2, "done": 2}
    assert "child" in fanned.logs(children=True)


def test_a_late_fact_of_an_ended_job_is_still_recorded(svc: Any) -> None:
    """The jobs table keeps late events (a provider's cancel) of a job that has ended."""
    job_id = new_job(svc)
    svc.jobs.update(job_id, status=JobStatus.ERROR, message="m", error_type="E")
    svc.jobs.add_event(job_id, Event(1, "execute", "provider job cancelled"))
    assert svc.jobs.timeline(job_id)[-1]["event"] == "provider job cancelled"
