"""Cloud in a box: the synthesized stack's state machine, run by moto with the real handlers.

The stack is synthesized once (tests/functional/cloud_box.py); the definition moto runs
is extracted from that template, never written by hand. Lambda tasks, S3 notifications
and the harness's SQS pump call ``functions/<name>/app.py`` in this process; Batch jobs
run ``python -m qlayer.aws.batch_entry`` in this process (moto_patches.py).

Every example program runs here through ``Client.aws`` and on the local substrate
(``Client.local``, its own home and daemon) with the same arguments and seeds: same
results and the same final job state. Then the failure paths (a stage raising, a Batch
job failing, a fan-out child failing, a QPU task timing out, a cancel), the inbox
trigger, and a job started with plain boto3.

Two synthesized stacks: the default one, and ``env_name="short"`` with
``qpu_heartbeat_s=1, qpu_timeout_s=2`` (stack props, nothing patched) whose state machine
is created over the same moto resources (same logical ids) for the QPU timeout test.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cloud_box import REGION, STACK_NAME, CloudBox, running, synthesize

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PROGRAMS = Path(__file__).parent / "programs"
TINY = PROGRAMS / "aws_tiny.py"


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return {
        "main": synthesize(tmp_path_factory.mktemp("box.out")),
        "short": synthesize(
            tmp_path_factory.mktemp("box-short.out"),
            env_name="short",
            qpu_heartbeat_s=1,
            qpu_timeout_s=2,
        ),
    }


@pytest.fixture(scope="module")
def box(templates: dict[str, dict[str, Any]]) -> Iterator[CloudBox]:
    with running(templates["main"]) as b:
        b.short_machine_arn = b.add_machine(templates["short"])  # type: ignore[attr-defined]
        yield b


@pytest.fixture(autouse=True)
def _healthy_pump(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "box" in request.fixturenames:
        b = request.getfixturevalue("box")
        errors, b.pump_errors[:] = list(b.pump_errors), []
        b.batch_fault = lambda name: None
        assert not errors, f"the SQS pump failed: {errors!r}"


@pytest.fixture(scope="module")
def cloud(box: CloudBox) -> Any:
    """``Client.aws`` as a user makes it: the stack's outputs come from (moto's) CloudFormation."""
    from qlayer import Client

    return Client.aws(stack=STACK_NAME, region=REGION, session=box.session)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from qlayer import Client

    client = Client.local(home=tmp_path_factory.mktemp("home"), workers=2)
    try:
        yield client
    finally:
        client.down()
        client._conn.close()


# -- helpers ----------------------------------------------------------------------------
def finish(
    box: CloudBox, job: Any, timeout: float = 180, machine_arn: str | None = None
) -> dict[str, Any]:
    """Wait for the job's execution, then for its row to be final; ``job.info()``."""
    desc = box.wait_execution(job.job_id, timeout, machine_arn=machine_arn)
    try:
        job.wait(timeout=10)
        return job.info()  # type: ignore[no-any-return]
    except TimeoutError as exc:
        failures = [
            e for e in box.history(job.job_id) if "Failed" in e["type"] or "Fail" in e["type"]
        ]
        raise AssertionError(f"{exc}; execution {desc['status']}: {failures}") from exc


def assert_same(aws: Any, local: Any, *, rel: float = 1e-9, path: str = "$") -> None:
    """Equal JSON; floats to ``rel`` (summation order may differ between processes)."""
    if isinstance(local, float) or isinstance(aws, float):
        assert isinstance(aws, (int, float)) and isinstance(local, (int, float)), path
        if math.isnan(local):
            assert math.isnan(aws), path
        else:
            assert aws == pytest.approx(local, rel=rel, abs=1e-12), path
    elif isinstance(local, dict):
        assert isinstance(aws, dict) and set(aws) == set(local), (path, set(aws) ^ set(local))
        for key in local:
            assert_same(aws[key], local[key], rel=rel, path=f"{path}.{key}")
    elif isinstance(local, (list, tuple)):
        assert isinstance(aws, (list, tuple)) and len(aws) == len(local), path
        for i, (a, b) in enumerate(zip(aws, local, strict=True)):
            assert_same(a, b, rel=rel, path=f"{path}[{i}]")
    else:
        assert aws == local, path


def run_both(
    box: CloudBox, cloud: Any, local: Any, program: Path, args: dict[str, Any]
) -> tuple[Any, Any, Any, Any]:
    """Submit to both substrates (the local daemon works meanwhile).

    Returns (aws job, its info, local job, its info).
    """
    local_job = local.run(program, args)
    aws_job = cloud.run(program, args)
    aws_row = finish(box, aws_job)
    local_job.wait(timeout=240)
    local_row = local_job.info()
    return aws_job, aws_row, local_job, local_row


def final_status(job: Any) -> str:
    return str(job.status().value)


# -- the definition really is the synthesized one ----------------------------------------
def test_the_machine_runs_the_extracted_definition(box: CloudBox) -> None:
    sfn = box.session.client("stepfunctions")
    deployed = json.loads(sfn.describe_state_machine(stateMachineArn=box.machine_arn)["definition"])
    assert deployed == box.definition
    from qlayer_infra import workflow as wf

    assert deployed["StartAt"] == wf.LOAD
    for state in (wf.RUN_BATCH, wf.WAIT_QPU, wf.RUN_CHILDREN, wf.RUN_CHILDREN_DISTRIBUTED):
        assert state in deployed["States"]
    # every Lambda task points at a moto function this box made
    arns = {s["Resource"] for s in deployed["States"].values() if s.get("Type") == "Task"} | {
        s.get("Parameters", {}).get("FunctionName") for s in deployed["States"].values()
    }
    functions = {
        f["FunctionArn"] for f in box.session.client("lambda").list_functions()["Functions"]
    }
    lambda_refs = {a for a in arns if a and ":function:" in a}
    assert lambda_refs and lambda_refs <= functions


# -- every example, on both substrates ------------------------------------------------------
def test_ghz_sampling_batch_stage_and_qpu_wait(box: CloudBox, cloud: Any, local: Any) -> None:
    """transpile is compute="batch" (submitJob.sync), fake_brisbane is a QPU (SQS + token)."""
    args = {"qubits": 3, "shots": 500, "optimization_level": 1}
    aws_job, aws_row, local_job, _ = run_both(box, cloud, local, EXAMPLES / "ghz_sampling.py", args)
    assert final_status(aws_job) == final_status(local_job) == "DONE", aws_row["message"]
    states = box.entered_states(aws_job.job_id)
    assert "Run stage on Batch" in states and "Read stage outcome" in states
    assert "Wait for QPU" in states and states[-1] == "Job done"
    assert any(r["name"].startswith(aws_job.job_id) for r in box.batch_runs)
    assert any(m.get("job_id") == aws_job.job_id for m in box.dispatched)
    aws_result, local_result = aws_job.result(wait=False), local_job.result(wait=False)
    # same seed, same device noise model, same transpiled circuit: the same counts
    assert_same(aws_result, local_result)
    assert "histogram.png" in aws_job.files()
    assert aws_job.info()["console_url"].endswith(box.execution_arn(aws_job.job_id))


def test_qaoa_maxcut(box: CloudBox, cloud: Any, local: Any) -> None:
    args = {"nodes": 4, "p": 1, "maxiter": 3, "shots": 400, "optimization_level": 1}
    aws_job, aws_row, local_job, _ = run_both(box, cloud, local, EXAMPLES / "qaoa_maxcut.py", args)
    assert final_status(aws_job) == final_status(local_job) == "DONE", aws_row["message"]
    aws_result, local_result = aws_job.result(wait=False), local_job.result(wait=False)
    assert aws_result["iterations"] == 3
    assert_same(aws_result, local_result)
    assert box.entered_states(aws_job.job_id).count("Simulate on Lambda") >= 3


def test_vqe_h2(box: CloudBox, cloud: Any, local: Any) -> None:
    args = {"maxiter": 3}
    aws_job, aws_row, local_job, _ = run_both(box, cloud, local, EXAMPLES / "vqe_h2.py", args)
    assert final_status(aws_job) == final_status(local_job) == "DONE", aws_row["message"]
    assert_same(aws_job.result(wait=False), local_job.result(wait=False))


def test_parameter_sweep_inline_map(box: CloudBox, cloud: Any, local: Any) -> None:
    """5 points: "Inline or distributed" picks the inline Map; one child execution per point."""
    args = {"points": 5, "shots": 300}
    aws_job, aws_row, local_job, _ = run_both(
        box, cloud, local, EXAMPLES / "parameter_sweep.py", args
    )
    assert final_status(aws_job) == final_status(local_job) == "DONE", aws_row["message"]
    assert_same(aws_job.result(wait=False), local_job.result(wait=False))
    states = box.entered_states(aws_job.job_id)
    assert "Run children" in states and "Run children (distributed)" not in states
    children = aws_job.children()
    assert len(children) == 5 and all(c.status().value == "DONE" for c in children)
    sfn = box.session.client("stepfunctions")
    for child in children:
        desc = sfn.describe_execution(executionArn=box.execution_arn(child.job_id))
        assert desc["status"] == "SUCCEEDED" and desc["name"] == child.job_id


def test_fan_out_past_40_takes_the_distributed_map(box: CloudBox, cloud: Any) -> None:
    """41 items: "Inline or distributed" routes to the Distributed Map (S3 item reader)."""
    job = cloud.run(TINY, {"fan": 41})
    row = finish(box, job, timeout=240)
    states = box.entered_states(job.job_id)
    assert "Run children (distributed)" in states and "Run children" not in states
    assert row["status"] == "DONE", row["message"]
    assert job.result(wait=False) == {"squares": [i * i for i in range(41)]}


# -- failure paths ------------------------------------------------------------------------------
def test_a_stage_raising_ends_in_error_with_its_message(
    box: CloudBox, cloud: Any, local: Any
) -> None:
    args = {"fail_at": "build"}
    aws_job, aws_row, _local_job, local_row = run_both(box, cloud, local, TINY, args)
    assert aws_row["status"] == local_row["status"] == "ERROR"
    assert "build failed on purpose" in aws_row["message"]
    assert aws_row["error_type"] == local_row["error_type"] == "ValueError"
    assert box.entered_states(aws_job.job_id)[-2:] == ["Fail job", "Job failed"]
    assert aws_job.error()["message"] == aws_row["message"]


def test_a_failing_child_fails_the_parent(box: CloudBox, cloud: Any, local: Any) -> None:
    args = {"fan": 3, "fail_at": "square"}
    aws_job, aws_row, _local_job, local_row = run_both(box, cloud, local, TINY, args)
    assert aws_row["status"] == local_row["status"] == "ERROR"
    assert "item 1 failed on purpose" in aws_row["message"], aws_row["message"]
    states = box.entered_states(aws_job.job_id)
    assert "Record failure" in states and states[-1] == "Job failed"


def test_a_failing_batch_job_ends_in_error(box: CloudBox, cloud: Any) -> None:
    reason = "OutOfMemoryError: Container killed due to memory usage"
    box.batch_fault = lambda name: reason
    job = cloud.run(EXAMPLES / "ghz_sampling.py", {"qubits": 3, "shots": 100})
    row = finish(box, job)
    assert row["status"] == "ERROR"
    assert row["error_type"] == "States.TaskFailed"
    assert reason in row["message"], row["message"]
    states = box.entered_states(job.job_id)
    assert states[-4:] == ["Run stage on Batch", "Record failure", "Fail job", "Job failed"]


def test_a_qpu_task_timing_out_ends_in_error(box: CloudBox) -> None:
    """The "short" stack (qpu_heartbeat_s=1): no dispatcher answers, the heartbeat times out.

    moto reports the heartbeat expiry as ``States.Timeout`` with an empty cause; AWS
    reports ``States.HeartbeatTimeout``. Both are caught by "Record failure" (States.ALL).
    """
    from qlayer.aws.handlers import Services

    from qlayer.aws.client import AwsClient

    base = AwsClient(stack=STACK_NAME, region=REGION, session=box.session).services
    config = replace(base.config, state_machine_arn=box.short_machine_arn)  # type: ignore[attr-defined]
    short = AwsClient(services=Services.create(config, box.session))
    with box.pump_paused():
        job = short.run(TINY, {"shots": 16}, backend="fake_brisbane")
        row = finish(box, job, timeout=30, machine_arn=box.short_machine_arn)  # type: ignore[attr-defined]
    assert row["status"] == "ERROR"
    assert row["error_type"] in ("States.HeartbeatTimeout", "States.Timeout"), row
    assert row["message"].startswith(row["error_type"])
    states = box.entered_states(job.job_id, machine_arn=box.short_machine_arn)  # type: ignore[attr-defined]
    assert states[-4:] == ["Wait for QPU", "Record failure", "Fail job", "Job failed"]
    # the late message is still delivered once the pump runs: the job stays in ERROR,
    # and the dispatcher runs nothing for a job that has ended
    wait_queue_empty(box)
    assert job.status().value == "ERROR"
    assert_no_execute_result(short, job.job_id)


def assert_no_execute_result(client: Any, job_id: str) -> None:
    store = client.services.store
    ran = [k for k in store.list(f"jobs/{job_id}/stages/") if k.endswith("-execute/result.json")]
    assert ran == [], f"the dispatcher ran provider work for an ended job: {ran}"


def wait_queue_empty(box: CloudBox, timeout: float = 30) -> None:
    sqs = box.session.client("sqs")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attrs = sqs.get_queue_attributes(
            QueueUrl=box.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if not any(int(v) for v in attrs.values()):
            return
        time.sleep(0.1)
    raise TimeoutError("the dispatch queue did not drain")


def test_cancel_while_waiting_for_the_qpu(box: CloudBox, cloud: Any) -> None:
    """Cancel a job whose execution waits in "Wait for QPU": CANCELLED, execution ABORTED.

    moto limitation (5.2.5): StopExecution only flags the execution; a state blocked on
    a task token does not notice, and once the token is answered the execution runs on
    (here to "Fail job", as every later step finds the job ended) and ends FAILED, where
    AWS aborts at once (ABORTED). What holds on both: the job is CANCELLED at once, and
    the late QPU answer leaves it CANCELLED.
    """
    with box.pump_paused():
        job = cloud.run(TINY, {"shots": 16}, backend="fake_brisbane")
        deadline = time.monotonic() + 30
        while "Wait for QPU" not in box.entered_states(job.job_id):
            assert time.monotonic() < deadline, box.entered_states(job.job_id)
            time.sleep(0.05)
        assert job.cancel() is True
        assert job.status().value == "CANCELLED"
    desc = box.wait_execution(job.job_id, 30)
    assert desc["status"] in ("ABORTED", "FAILED")  # FAILED: moto, see above
    wait_queue_empty(box)
    assert_no_execute_result(cloud, job.job_id)
    assert job.status().value == "CANCELLED"
    assert job.info()["error_type"] is None
    assert job.cancel() is False


# -- the inbox trigger and plain boto3 ------------------------------------------------------------
def _newest_job(box: CloudBox, since: str) -> dict[str, Any] | None:
    """The newest job row created at or after ``since`` (by the jobs table's by_created index)."""
    ddb = box.session.client("dynamodb")
    items = ddb.query(
        TableName=box.outputs["JobsTableName"],
        IndexName="by_created",
        KeyConditionExpression="#k = :job AND created_at >= :since",
        ExpressionAttributeNames={"#k": "kind"},
        ExpressionAttributeValues={":job": {"S": "job"}, ":since": {"S": since}},
        ScanIndexForward=False,
    )["Items"]
    tops = [i for i in items if "parent_id" not in i]
    return tops[0] if tops else None


def _wait_row(box: CloudBox, since: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _newest_job(box, since)
        if row and row["status"]["S"] in ("DONE", "ERROR", "CANCELLED"):
            return row
        time.sleep(0.1)
    raise TimeoutError(f"no finished job since {since}: {_newest_job(box, since)}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))


def test_an_inbox_upload_starts_a_job(box: CloudBox, cloud: Any) -> None:
    """S3 ObjectCreated on inbox/*.json -> trigger Lambda (moto calls it) -> a DONE job."""
    s3 = box.session.client("s3")
    bucket = box.outputs["BucketName"]
    s3.put_object(Bucket=bucket, Key="inbox/tiny.py", Body=TINY.read_bytes())
    since = _now()
    spec = {"program": "inbox/tiny.py", "arguments": {"shots": 32}, "backend": "aer"}
    s3.put_object(Bucket=bucket, Key="inbox/my spec 1.json", Body=json.dumps(spec).encode())
    row = _wait_row(box, since)
    job = cloud.job(row["job_id"]["S"])
    assert job.status().value == "DONE", job.info()["message"]
    result = job.result(wait=False)
    assert result["shots"] == 32 and sum(result["counts"].values()) == 32
    # the spec's key (with a space) reached the trigger and is recorded in the job's input
    from qlayer import keys

    store = cloud.services.store
    assert store.get_json(keys.job_input(job.job_id))["spec_key"] == "inbox/my spec 1.json"
    # the job id, and then the result, are written next to the spec
    started = store.get_json("inbox/my spec 1.json.job.json")
    assert started["job_id"] == job.job_id and started["execution_arn"].endswith(job.job_id)
    report = store.get_json("inbox/my spec 1.json.result.json")
    assert report["status"] == "DONE" and report["result_key"] == keys.job_result(job.job_id)
    assert report["result"]["shots"] == 32


def test_a_malformed_inbox_spec_yields_an_error_object_and_an_error_job(
    box: CloudBox, cloud: Any
) -> None:
    s3 = box.session.client("s3")
    bucket = box.outputs["BucketName"]
    since = _now()
    key = "inbox/bad.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"programme": "x.py"}).encode())
    body = json.loads(s3.get_object(Bucket=bucket, Key=key + ".error.json")["Body"].read())
    assert body["spec_key"] == key and "program" in body["message"]
    job = cloud.job(body["job_id"])
    assert job.status().value == "ERROR"
    assert job.info()["message"] == body["message"]
    assert _newest_job(box, since)["job_id"]["S"] == body["job_id"]  # type: ignore[index]


def test_plain_boto3_inbox_job_runs_to_done(box: CloudBox) -> None:
    """No qlayer client: put_object of a program and a spec, then read the row and result.

    The documented ``start_execution`` input ``{"job_id"}`` needs a prepared job (an
    uploaded program folder and ``jobs/<id>/input.json``, whose format docs/deploy.md
    does not give): the inbox is the documented way in for plain boto3.
    """
    s3 = box.session.client("s3")
    bucket = box.outputs["BucketName"]
    s3.put_object(
        Bucket=bucket,
        Key="programs/uploads/sweep.py",
        Body=(EXAMPLES / "parameter_sweep.py").read_bytes(),
    )
    since = _now()
    spec = {"program": "programs/uploads/sweep.py", "arguments": {"points": 3, "shots": 100}}
    s3.put_object(Bucket=bucket, Key="inbox/sweep.json", Body=json.dumps(spec).encode())
    row = _wait_row(box, since, timeout=180)
    assert row["status"]["S"] == "DONE", row.get("message")
    job_id = row["job_id"]["S"]
    keys_there = [
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{job_id}/")["Contents"]
    ]
    assert f"jobs/{job_id}/result.json" in keys_there or any(
        k.startswith(f"jobs/{job_id}/result") for k in keys_there
    ), keys_there


def test_plain_boto3_start_execution_with_the_documented_input(box: CloudBox) -> None:
    """A prepared job (the client's prepare step) started by plain boto3: name = job id."""
    from qlayer.aws.client import AwsClient, prepare_job

    svc = AwsClient(stack=STACK_NAME, region=REGION, session=box.session).services
    job_id = prepare_job(svc, TINY, {"shots": 8})
    sfn = box.session.client("stepfunctions")
    sfn.start_execution(
        stateMachineArn=box.outputs["StateMachineArn"],
        name=job_id,
        input=json.dumps({"job_id": job_id}),
    )
    desc = box.wait_execution(job_id, 60)
    assert desc["status"] == "SUCCEEDED"
    item = box.session.client("dynamodb").get_item(
        TableName=box.outputs["JobsTableName"], Key={"job_id": {"S": job_id}}
    )["Item"]
    assert item["status"]["S"] == "DONE"


def _cli_json(stdout: str) -> Any:
    """The CLI's JSON, without the Powertools metric lines (EMF) that the in-process
    Lambda handlers print to the same stdout here (on AWS they go to CloudWatch)."""
    lines = [line for line in stdout.splitlines() if not line.startswith('{"_aws"')]
    return json.loads("\n".join(lines))


def test_the_cli_with_target_aws(box: CloudBox) -> None:
    """`qlayer --target aws` drives the same commands against the stack (moto stands in)."""
    from typer.testing import CliRunner

    from qlayer.cli import app

    runner = CliRunner()
    base = ["--target", "aws", "--stack", STACK_NAME, "--region", REGION]
    submitted = runner.invoke(app, [*base, "run", str(TINY), "--arg", "shots=16", "--json"])
    assert submitted.exit_code == 0, submitted.output
    job_id = _cli_json(submitted.stdout)["job_id"]
    done = runner.invoke(app, [*base, "result", job_id, "--wait", "--timeout", "120", "--json"])
    assert done.exit_code == 0, done.output
    assert sum(_cli_json(done.stdout)["counts"].values()) == 16
    status = runner.invoke(app, [*base, "status", job_id, "--json"])
    info = _cli_json(status.stdout)
    assert info["status"] == "DONE" and info["console_url"].startswith("https://")
    assert info["usage"]["shots"] == 16
    logs = runner.invoke(app, [*base, "logs", job_id])
    assert "hello from build" in logs.stdout
    files = runner.invoke(app, [*base, "files", job_id, "--json"])
    assert _cli_json(files.stdout) == ["note.txt"]
    listed = runner.invoke(app, [*base, "jobs", "--json"])
    assert job_id in {j["job_id"] for j in _cli_json(listed.stdout)}
    assert runner.invoke(app, [*base, "down"]).exit_code == 2  # no daemon on AWS
