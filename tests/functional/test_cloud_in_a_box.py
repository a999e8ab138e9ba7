"""Cloud in a box: the deployed stack, minus AWS (qlayer/cloudbox, tests/functional/cloud_box.py).

moto's server plays AWS over HTTP; the synthesized template's resources, the extracted
state machine, each function in its own processes with its own environment, Batch jobs
as processes, the SQS event source mapping and the EventBridge rules are the stack's.
One box serves the whole module.

Every example program runs here through ``Client.aws`` and on the local substrate
(``Client.local``, its own home and daemon) with the same arguments and seeds: same
results and the same final job state. Then the failure paths (a stage raising, a Batch
job dying, a fan-out child failing, a QPU task timing out, a cancel), the inbox trigger
(asynchronous), plain boto3, the CLI, and what the box must hold to the template (each
runtime's environment, the queue's redrive policy, the mapping's batch size, the secret).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from cloud_box import (
    EXAMPLES,
    FAKE_QPU_CODE,
    PROGRAMS,
    PROVIDER_PLUGINS,
    SCHEDULE_SPEEDUP,
    assert_no_execute_result,
    assert_same,
    dispatched,
    finish,
    run_both,
    running_box,
    s3_json,
    s3_json_now,
    status,
    until,
    wait_queue_empty,
)

from qlayer.cloudbox import CloudBox
from qlayer.cloudbox.runtimes import BOX_VARIABLES, LAMBDA_SERVICE_VARIABLES
from qlayer.cloudbox.server import REGION

STACK = "Qlayer"
TINY = PROGRAMS / "aws_tiny.py"
ARGS_TYPED = PROGRAMS.parents[1] / "e2e" / "programs" / "args_typed.py"


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, stacks: Any) -> Iterator[CloudBox]:
    root = tmp_path_factory.mktemp("cloudbox")
    with running_box(stacks, root) as running:
        yield running


@pytest.fixture(scope="module")
def cloud(box: CloudBox) -> Any:
    """``Client.aws`` as a user makes it: the outputs come from (moto's) CloudFormation."""
    from qlayer import Client

    return Client.aws(stack=STACK, region=REGION)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from qlayer import Client

    client = Client.local(home=tmp_path_factory.mktemp("home"), workers=2)
    try:
        yield client
    finally:
        client.down()
        client._conn.close()


# -- the box holds to the template ---------------------------------------------------------
def test_the_machine_runs_the_extracted_definition(box: CloudBox) -> None:
    from qlayer_infra import workflow as wf

    sfn = box.client("stepfunctions")
    deployed = json.loads(sfn.describe_state_machine(stateMachineArn=box.machine_arn)["definition"])
    assert deployed == box.definition
    assert deployed["StartAt"] == wf.LOAD
    for state in (wf.RUN_BATCH, wf.WAIT_QPU, wf.RUN_CHILDREN, wf.RUN_CHILDREN_DISTRIBUTED):
        assert state in deployed["States"]
    tasks = [s for s in deployed["States"].values() if s.get("Type") == "Task"]
    lambda_refs = {s["Resource"] for s in tasks if ":function:" in s["Resource"]}
    functions = {f["FunctionArn"] for f in box.client("lambda").list_functions()["Functions"]}
    assert lambda_refs and lambda_refs <= functions


def test_each_runtime_has_its_functions_template_environment_and_nothing_else(
    box: CloudBox,
) -> None:
    """Read from /proc: the template's variables, the Lambda service's, the box's two
    (endpoint, /tmp), an image function's image ENV (and the fake QPU's folder the box
    bakes into the image); none of this test process's."""
    assert box.deployment is not None
    documented = set(LAMBDA_SERVICE_VARIABLES) | set(BOX_VARIABLES)
    resources = box.synthesis.template["Resources"]
    checked = []
    for name, record in box.deployment.functions.items():
        template_env = {
            k: str(v)
            for k, v in box.deployment.ev(
                resources[record.logical_id]["Properties"]["Environment"]["Variables"]
            ).items()
        }
        pool = box.pool(name)
        image = pool.spec.image
        image_keys = set(image.environment(box.workdir)) if image else set()
        runtimes = pool.runtimes()
        assert runtimes, f"{name} has no runtime"
        for runtime in runtimes:
            env = runtime.environ()
            assert {k: env[k] for k in template_env} == template_env, name
            extra = set(env) - set(template_env)
            assert extra <= documented | image_keys, (name, extra - documented - image_keys)
            assert env["AWS_LAMBDA_FUNCTION_NAME"] == record.name
            assert env["AWS_ENDPOINT_URL"] == box.server.endpoint
            assert "PYTEST_CURRENT_TEST" not in env and "VIRTUAL_ENV" not in env
            checked.append(name)
    assert set(checked) == set(box.deployment.functions)
    # what the merged environment used to hide: only fail_job has the queue's URL
    # among the light functions, and only the trigger the state machine's ARN
    loader = box.pool("loader").runtimes()[0].environ()
    assert "QLAYER_DISPATCH_QUEUE_URL" not in loader and "QLAYER_STATE_MACHINE_ARN" not in loader
    assert "QLAYER_DISPATCH_QUEUE_URL" in box.pool("fail_job").runtimes()[0].environ()
    assert "QLAYER_PROVIDERS" in box.pool("dispatcher").runtimes()[0].environ()


def test_the_queue_carries_the_templates_redrive_policy_and_the_poller_its_batch_size(
    box: CloudBox,
) -> None:
    """The dispatch queue as the template makes it, its DLQ after maxReceiveCount
    receives (moto applies the policy), and the event source mapping's BatchSize."""
    from qlayer_infra.extract import functions_by_name

    template = box.synthesis.template["Resources"]
    queue_props = next(
        r["Properties"]
        for r in template.values()
        if r["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in r["Properties"]
    )
    esm_props = next(
        r["Properties"] for r in template.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"
    )
    sqs, url = box.client("sqs"), box.outputs["DispatchQueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    policy = json.loads(attrs["RedrivePolicy"])
    assert policy["maxReceiveCount"] == queue_props["RedrivePolicy"]["maxReceiveCount"]
    assert int(attrs["VisibilityTimeout"]) == queue_props["VisibilityTimeout"]
    dlq_url = sqs.get_queue_url(QueueName=policy["deadLetterTargetArn"].split(":")[-1])["QueueUrl"]

    mapping = box.event_source_mapping()
    assert mapping["BatchSize"] == esm_props["BatchSize"]
    assert mapping["MaximumBatchingWindowInSeconds"] == esm_props["MaximumBatchingWindowInSeconds"]
    assert mapping["FunctionResponseTypes"] == esm_props["FunctionResponseTypes"]
    dispatcher = box.deployment.functions["dispatcher"]  # type: ignore[union-attr]
    assert functions_by_name(box.synthesis.template)["dispatcher"] == dispatcher.logical_id
    assert mapping["FunctionArn"] == dispatcher.arn

    with box.sqs_mapping_disabled():
        sqs.send_message(QueueUrl=url, MessageBody="cloudbox probe: not a dispatch message")
        for _ in range(policy["maxReceiveCount"]):
            got = until(
                "the probe",
                lambda: sqs.receive_message(QueueUrl=url, VisibilityTimeout=0).get("Messages"),
            )
            assert got[0]["Body"].startswith("cloudbox probe")
        assert sqs.receive_message(QueueUrl=url, VisibilityTimeout=0).get("Messages") is None
        dead = until("the DLQ", lambda: sqs.receive_message(QueueUrl=dlq_url).get("Messages"))
        assert dead[0]["Body"].startswith("cloudbox probe")
        sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=dead[0]["ReceiptHandle"])
        poller = box.pollers[0]
        seen = len(poller.batches)
        for n in range(esm_props["BatchSize"] + 2):
            sqs.send_message(QueueUrl=url, MessageBody=f"cloudbox probe {n}")
    # the dispatcher drops what is no dispatch message; the poller took the template's 5
    until("the probes delivered", lambda: sum(poller.batches[seen:]) >= esm_props["BatchSize"] + 2)
    assert max(poller.batches[seen:]) == esm_props["BatchSize"]


def test_the_poller_runs_on_its_schedule_rule(box: CloudBox) -> None:
    """rate(1 minute) from the template, fired SCHEDULE_SPEEDUP times faster; the poller's
    invocations are asynchronous, with the documented "Scheduled Event"."""
    rule = next(
        r["Properties"]
        for r in box.synthesis.template["Resources"].values()
        if r["Type"] == "AWS::Events::Rule" and "ScheduleExpression" in r["Properties"]
    )
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert box.events is not None
    assert box.events.period_s(rule["ScheduleExpression"]) == 60 / SCHEDULE_SPEEDUP
    poller = box.deployment.functions["poller"]  # type: ignore[union-attr]
    before = box.pool("poller").invocations

    def fired() -> list[dict[str, Any]]:
        return [f for f in box.events.fired if f["target"] == poller.arn]  # type: ignore[union-attr]

    until(
        "two scheduled polls", lambda: len(fired()) >= 2 and box.pool("poller").invocations > before
    )
    assert fired()[-1]["event"]["detail-type"] == "Scheduled Event"


def test_the_secret_starts_as_the_stack_makes_it_until_a_user_puts_settings(
    box: CloudBox,
) -> None:
    """The stack creates the secret holding ``{}`` (no provider settings yet, as
    docs/deploy.md says); a user puts theirs with put_secret_value after the deploy."""
    from qlayer.aws import secrets

    assert box.deployment is not None
    arn = box.deployment.secret_arn
    sm = box.client("secretsmanager")
    assert sm.get_secret_value(SecretId=arn)["SecretString"] == "{}"
    assert secrets.provider_settings(arn, sm) == {}
    secrets._CACHE.clear()  # a new process (each runtime reads the secret once)
    settings = {"ibm_channel": "ibm_quantum_platform", "braket_region": REGION}
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps(settings))
    assert secrets.provider_settings(arn, sm) == settings


# -- every example, on both substrates ------------------------------------------------------
def test_ghz_sampling_batch_stage_and_qpu_wait(box: CloudBox, cloud: Any, local: Any) -> None:
    """transpile is compute="batch" (submitJob.sync), fake_brisbane is a QPU (SQS + token)."""
    args = {"qubits": 3, "shots": 500, "optimization_level": 1}
    aws_job, aws_row, local_job, _ = run_both(box, cloud, local, EXAMPLES / "ghz_sampling.py", args)
    assert status(aws_job) == status(local_job) == "DONE", aws_row["message"]
    states = box.entered_states(aws_job.job_id)
    assert "Run stage on Batch" in states and "Read stage outcome" in states
    assert "Wait for QPU" in states and states[-1] == "Job done"
    assert box.batch is not None
    runs = [r for r in box.batch.runs if r.name.startswith(aws_job.job_id)]
    assert runs and runs[0].exit_code == 0
    assert runs[0].command[:3] == ["python", "-m", "qlayer.aws.batch_entry"]
    assert runs[0].environment["MANAGED_BY_AWS"] == "STARTED_BY_STEP_FUNCTIONS"
    assert aws_job.job_id in {m.get("job_id") for m in dispatched(box)}
    # same seed, same device noise model, same transpiled circuit: the same counts
    assert_same(aws_job.result(wait=False), local_job.result(wait=False))
    assert "histogram.png" in aws_job.files()
    assert aws_job.info()["console_url"].endswith(box.execution_arn(aws_job.job_id))


def test_qaoa_maxcut(box: CloudBox, cloud: Any, local: Any) -> None:
    args = {"nodes": 4, "p": 1, "maxiter": 3, "shots": 400, "optimization_level": 1}
    aws_job, aws_row, local_job, _ = run_both(box, cloud, local, EXAMPLES / "qaoa_maxcut.py", args)
    assert status(aws_job) == status(local_job) == "DONE", aws_row["message"]
    aws_result = aws_job.result(wait=False)
    assert aws_result["iterations"] == 3
    assert_same(aws_result, local_job.result(wait=False))
    assert box.entered_states(aws_job.job_id).count("Simulate on Lambda") >= 3


def test_vqe_h2(box: CloudBox, cloud: Any, local: Any) -> None:
    aws_job, aws_row, local_job, _ = run_both(
        box, cloud, local, EXAMPLES / "vqe_h2.py", {"maxiter": 3}
    )
    assert status(aws_job) == status(local_job) == "DONE", aws_row["message"]
    assert_same(aws_job.result(wait=False), local_job.result(wait=False))


def test_parameter_sweep_inline_map(box: CloudBox, cloud: Any, local: Any) -> None:
    """5 points: "Inline or distributed" picks the inline Map; one child execution per point."""
    args = {"points": 5, "shots": 300}
    aws_job, aws_row, local_job, _ = run_both(
        box, cloud, local, EXAMPLES / "parameter_sweep.py", args
    )
    assert status(aws_job) == status(local_job) == "DONE", aws_row["message"]
    assert_same(aws_job.result(wait=False), local_job.result(wait=False))
    states = box.entered_states(aws_job.job_id)
    assert "Run children" in states and "Run children (distributed)" not in states
    children = aws_job.children()
    assert len(children) == 5 and all(c.status().value == "DONE" for c in children)
    sfn = box.client("stepfunctions")
    for child in children:
        desc = sfn.describe_execution(executionArn=box.execution_arn(child.job_id))
        assert desc["status"] == "SUCCEEDED" and desc["name"] == child.job_id


def test_fan_out_past_40_takes_the_distributed_map(box: CloudBox, cloud: Any) -> None:
    """41 items: the Distributed Map (S3 item reader); more invocations than runtimes."""
    job = cloud.run(TINY, {"fan": 41})
    row = finish(box, job, timeout=400)
    states = box.entered_states(job.job_id)
    assert "Run children (distributed)" in states and "Run children" not in states
    assert row["status"] == "DONE", row["message"]
    assert job.result(wait=False) == {"squares": [i * i for i in range(41)]}
    pool = box.pool("loader")
    assert pool.peak <= pool.max_processes


# -- failure paths ------------------------------------------------------------------------------
def test_a_stage_raising_ends_in_error_with_its_message(
    box: CloudBox, cloud: Any, local: Any
) -> None:
    aws_job, aws_row, _, local_row = run_both(box, cloud, local, TINY, {"fail_at": "build"})
    assert aws_row["status"] == local_row["status"] == "ERROR"
    assert "build failed on purpose" in aws_row["message"]
    assert aws_row["error_type"] == local_row["error_type"] == "ValueError"
    assert box.entered_states(aws_job.job_id)[-2:] == ["Fail job", "Job failed"]
    assert aws_job.error()["message"] == aws_row["message"]
    # the execution ended FAILED: the status rule (EventBridge) invoked fail_job with the
    # documented event; the job, already in ERROR, stays as it was
    assert box.events is not None
    fired = until(
        "the execution-status event",
        lambda: [
            f
            for f in box.events.fired  # type: ignore[union-attr]
            if f["event"]["detail"].get("name") == aws_job.job_id
        ],
    )
    assert fired[0]["event"]["detail-type"] == "Step Functions Execution Status Change"
    assert fired[0]["event"]["detail"]["status"] == "FAILED"
    assert fired[0]["target"] == box.deployment.functions["fail_job"].arn  # type: ignore[union-attr]
    until("fail_job's runs", box.lambdas.idle)
    assert aws_job.info()["message"] == aws_row["message"]


def test_a_failing_child_fails_the_parent(box: CloudBox, cloud: Any, local: Any) -> None:
    args = {"fan": 3, "fail_at": "square"}
    aws_job, aws_row, _, local_row = run_both(box, cloud, local, TINY, args)
    assert aws_row["status"] == local_row["status"] == "ERROR"
    assert "item 1 failed on purpose" in aws_row["message"], aws_row["message"]
    states = box.entered_states(aws_job.job_id)
    assert "Record failure" in states and states[-1] == "Job failed"


def test_a_batch_job_whose_container_dies_ends_in_error(box: CloudBox, cloud: Any) -> None:
    """The stage's process is killed (as by the OOM killer): Batch says FAILED, exit 137."""
    job = cloud.run(PROGRAMS / "aws_batch_dies.py", {})
    row = finish(box, job)
    assert row["status"] == "ERROR"
    assert row["error_type"] == "States.TaskFailed"
    assert "Essential container in task exited" in row["message"], row["message"]
    states = box.entered_states(job.job_id)
    assert states[-4:] == ["Run stage on Batch", "Record failure", "Fail job", "Job failed"]
    assert box.batch is not None
    (run,) = [r for r in box.batch.runs if r.name.startswith(job.job_id)]
    assert run.exit_code == 137
    described = box.client("batch").describe_jobs(jobs=[run.job_id])["jobs"][0]
    # (moto's DescribeJobs leaves container.exitCode out; the box records it on the run)
    assert described["status"] == "FAILED"
    assert described["statusReason"] == "Essential container in task exited"
    # the container's environment: the job definition's, Step Functions' override, Batch's
    definition = box.client("batch").describe_job_definitions(
        jobDefinitions=[described["jobDefinition"]]
    )["jobDefinitions"][0]
    for item in definition["containerProperties"]["environment"]:
        assert run.environment[item["name"]] == item["value"]
    assert run.environment["AWS_BATCH_JOB_ID"] == run.job_id
    assert "PYTEST_CURRENT_TEST" not in run.environment


def test_a_qpu_task_timing_out_ends_in_error(box: CloudBox) -> None:
    """The "short" stack (qpu_heartbeat_s=1): the mapping is off, the heartbeat times out.

    moto reports the heartbeat expiry as ``States.Timeout`` with an empty cause; AWS
    reports ``States.HeartbeatTimeout``. Both are caught by "Record failure" (States.ALL).
    """
    from qlayer.aws.client import AwsClient
    from qlayer.aws.services import Services

    short_arn = box.short_arn  # type: ignore[attr-defined]
    base = AwsClient(stack=STACK, region=REGION).services
    short = AwsClient(services=Services.create(replace(base.config, state_machine_arn=short_arn)))
    with box.sqs_mapping_disabled():
        job = short.run(TINY, {"shots": 16}, backend="fake_brisbane")
        row = finish(box, job, timeout=60, machine_arn=short_arn)
    assert row["status"] == "ERROR"
    assert row["error_type"] in ("States.HeartbeatTimeout", "States.Timeout"), row
    assert row["message"].startswith(row["error_type"])
    states = box.entered_states(job.job_id, machine_arn=short_arn)
    assert states[-4:] == ["Wait for QPU", "Record failure", "Fail job", "Job failed"]
    # the late message is delivered once the mapping is on again: the job stays in
    # ERROR, and the dispatcher runs nothing for a job that has ended
    wait_queue_empty(box)
    assert job.status().value == "ERROR"
    assert_no_execute_result(short, job.job_id)


def test_cancel_while_waiting_for_the_qpu(box: CloudBox, cloud: Any) -> None:
    """Cancel a job whose execution waits in "Wait for QPU": CANCELLED at once, and the
    late QPU answer leaves it CANCELLED. (moto 5.2.5's StopExecution flags the execution
    ABORTED but a state blocked on a task token runs on once answered, where AWS aborts.)
    """
    with box.sqs_mapping_disabled():
        job = cloud.run(TINY, {"shots": 16}, backend="fake_brisbane")
        until("Wait for QPU", lambda: "Wait for QPU" in box.entered_states(job.job_id), 60)
        assert job.cancel() is True
        assert job.status().value == "CANCELLED"
    desc = box.wait_execution(job.job_id, 60)
    assert desc["status"] in ("ABORTED", "FAILED")
    wait_queue_empty(box)
    until("the async invocations", box.lambdas.idle)
    assert_no_execute_result(cloud, job.job_id)
    assert job.status().value == "CANCELLED"
    assert job.info()["error_type"] is None
    assert job.cancel() is False
    # the status rule hands the stopped execution to fail_job, which leaves it CANCELLED
    assert box.events is not None
    until(
        "the execution-status event",
        lambda: any(
            f["event"]["detail"].get("name") == job.job_id
            for f in box.events.fired  # type: ignore[union-attr]
        ),
    )
    until("fail_job's run", box.lambdas.idle)
    assert job.status().value == "CANCELLED"


# -- a QPU through a provider plugin (the fake QPU service) ----------------------------------
def test_a_qpu_job_through_the_provider_plugin(
    box: CloudBox, cloud: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``provider_plugins="fakeqpu=fake_qpu:FakeQpu"``: the dispatcher submits to the fake
    QPU service, the scheduled poller follows it (QUEUED, RUNNING, DONE), then the
    SendTaskSuccess wakes the execution. Nothing injected.

    The client checks backend names with its own registry before it submits, so the
    user's machine has the plugin too (QLAYER_PROVIDERS and the plugin's code).
    """
    monkeypatch.setenv("QLAYER_PROVIDERS", PROVIDER_PLUGINS)
    monkeypatch.setenv("QLAYER_FAKE_QPU_DIR", str(box.fake_qpu_dir))  # type: ignore[attr-defined]
    monkeypatch.syspath_prepend(str(FAKE_QPU_CODE))
    job = cloud.run(TINY, {"shots": 32}, backend="fakeqpu_ok")
    row = finish(box, job, timeout=240)
    assert row["status"] == "DONE", (row["message"], box.function_log("dispatcher")[-3000:])
    result = job.result(wait=False)
    assert result["shots"] == 32 and sum(result["counts"].values()) == 32
    assert "Wait for QPU" in box.entered_states(job.job_id)
    from fake_qpu import FakeQpu

    service = FakeQpu(box.fake_qpu_dir)  # type: ignore[attr-defined]
    submitted = [c for c in service.calls("submit") if c["outcome"] == "ok"]
    assert len(submitted) == 1
    assert len(service.calls("status")) >= 3


def test_an_inbox_spec_for_the_plugin_qpu_runs_to_done(box: CloudBox) -> None:
    """A plain-boto3 user names the plugin's backend in a spec: the stack has the plugin."""
    import boto3

    s3, bucket = boto3.client("s3", region_name=REGION), box.outputs["BucketName"]
    s3.put_object(Bucket=bucket, Key="inbox/qpu.py", Body=TINY.read_bytes())
    spec = {"program": "inbox/qpu.py", "arguments": {"shots": 16}, "backend": "fakeqpu_ok"}
    s3.put_object(Bucket=bucket, Key="inbox/qpu.json", Body=json.dumps(spec).encode())
    outcome = until(
        "the spec's report",
        lambda: (
            s3_json_now(box, "inbox/qpu.json.result.json")
            or s3_json_now(box, "inbox/qpu.json.error.json")
        ),
        timeout=240,
    )
    assert outcome.get("status") == "DONE", outcome


# -- the inbox trigger and plain boto3 ------------------------------------------------------------
def test_an_inbox_upload_starts_a_job(box: CloudBox, cloud: Any) -> None:
    """S3 ObjectCreated on inbox/*.json -> the trigger, asynchronously -> a DONE job, and
    its report next to the spec (polled for: it is written after the job ends)."""
    from qlayer import keys

    s3, bucket = box.client("s3"), box.outputs["BucketName"]
    s3.put_object(Bucket=bucket, Key="inbox/tiny.py", Body=TINY.read_bytes())
    spec = {"program": "inbox/tiny.py", "arguments": {"shots": 32}, "backend": "aer"}
    s3.put_object(Bucket=bucket, Key="inbox/my spec 1.json", Body=json.dumps(spec).encode())
    started = s3_json(box, "inbox/my spec 1.json.job.json")
    report = s3_json(box, "inbox/my spec 1.json.result.json", timeout=180)
    job = cloud.job(started["job_id"])
    assert started["execution_arn"].endswith(job.job_id)
    assert report["status"] == "DONE" and report["result_key"] == keys.job_result(job.job_id)
    assert report["result"]["shots"] == 32
    assert job.status().value == "DONE", job.info()["message"]
    result = job.result(wait=False)
    assert result["shots"] == 32 and sum(result["counts"].values()) == 32
    # the spec's key (with a space) reached the trigger and is recorded in the job's input
    store = cloud.services.store
    assert store.get_json(keys.job_input(job.job_id))["spec_key"] == "inbox/my spec 1.json"


def test_a_malformed_inbox_spec_yields_an_error_object_and_an_error_job(
    box: CloudBox, cloud: Any
) -> None:
    s3, bucket = box.client("s3"), box.outputs["BucketName"]
    key = "inbox/bad.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"programme": "x.py"}).encode())
    body = s3_json(box, key + ".error.json")
    assert body["spec_key"] == key and "program" in body["message"]
    job = cloud.job(body["job_id"])
    assert job.status().value == "ERROR"
    assert job.info()["message"] == body["message"]


def test_plain_boto3_inbox_job_runs_to_done(box: CloudBox) -> None:
    """No qlayer client: put_object of a program and a spec, then read the report."""
    import boto3

    s3 = boto3.client("s3", region_name=REGION)  # AWS_ENDPOINT_URL points at the box
    bucket = box.outputs["BucketName"]
    s3.put_object(
        Bucket=bucket,
        Key="programs/uploads/sweep.py",
        Body=(EXAMPLES / "parameter_sweep.py").read_bytes(),
    )
    spec = {"program": "programs/uploads/sweep.py", "arguments": {"points": 3, "shots": 100}}
    s3.put_object(Bucket=bucket, Key="inbox/sweep.json", Body=json.dumps(spec).encode())
    report = s3_json(box, "inbox/sweep.json.result.json", timeout=240)
    assert report["status"] == "DONE", report
    job_id = report["job_id"]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{job_id}/")["Contents"]
    assert f"jobs/{job_id}/result.json" in [o["Key"] for o in listed]
    item = boto3.client("dynamodb", region_name=REGION).get_item(
        TableName=box.outputs["JobsTableName"], Key={"job_id": {"S": job_id}}
    )["Item"]
    assert item["status"]["S"] == "DONE"


def test_plain_boto3_start_execution_with_the_documented_input(box: CloudBox) -> None:
    """A prepared job (the client's prepare step) started by plain boto3: name = job id."""
    import boto3

    from qlayer.aws.client import AwsClient, prepare_job

    job_id = prepare_job(AwsClient(stack=STACK, region=REGION).services, TINY, {"shots": 8})
    boto3.client("stepfunctions", region_name=REGION).start_execution(
        stateMachineArn=box.outputs["StateMachineArn"],
        name=job_id,
        input=json.dumps({"job_id": job_id}),
    )
    assert box.wait_execution(job_id, 60)["status"] == "SUCCEEDED"
    item = boto3.client("dynamodb", region_name=REGION).get_item(
        TableName=box.outputs["JobsTableName"], Key={"job_id": {"S": job_id}}
    )["Item"]
    assert item["status"]["S"] == "DONE"


def test_the_cli_with_target_aws(box: CloudBox) -> None:
    """`qlayer --target aws` drives the same commands against the stack (the box stands in)."""
    from typer.testing import CliRunner

    from qlayer.cli import app

    runner = CliRunner()
    base = ["--target", "aws", "--stack", STACK, "--region", REGION]
    submitted = runner.invoke(app, [*base, "run", str(TINY), "--arg", "shots=16", "--json"])
    assert submitted.exit_code == 0, submitted.output
    job_id = json.loads(submitted.stdout)["job_id"]
    done = runner.invoke(app, [*base, "result", job_id, "--wait", "--timeout", "120", "--json"])
    assert done.exit_code == 0, done.output
    assert sum(json.loads(done.stdout)["counts"].values()) == 16
    info = json.loads(runner.invoke(app, [*base, "status", job_id, "--json"]).stdout)
    assert info["status"] == "DONE" and info["console_url"].startswith("https://")
    assert info["usage"]["shots"] == 16
    assert "hello from build" in runner.invoke(app, [*base, "logs", job_id]).stdout
    assert json.loads(runner.invoke(app, [*base, "files", job_id, "--json"]).stdout) == ["note.txt"]
    listed = json.loads(runner.invoke(app, [*base, "jobs", "--json"]).stdout)
    assert job_id in {j["job_id"] for j in listed}
    assert runner.invoke(app, [*base, "down"]).exit_code == 2  # no daemon on AWS


# -- typed arguments ------------------------------------------------------------------------
def test_a_circuit_and_an_array_as_arguments(box: CloudBox, cloud: Any) -> None:
    """Issue 8.2/8.3 on the stack: a circuit and an array reach the Lambda stages through
    S3 sidecars and DynamoDB (the record holds references, not the array)."""
    import numpy as np
    from qiskit import QuantumCircuit

    from qlayer import keys

    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    weights = np.linspace(0, 1, 50_000)
    job = cloud.run(ARGS_TYPED, {"circuit": circuit, "weights": weights, "extra": (1, 2)})
    result = job.result(timeout=240)
    assert result["qubits"] == 2 and result["shots"] == 64 and result["extra"] == (1, 2)
    assert np.array_equal(result["weights"], weights)
    assert job.info()["arguments"]["weights"] == {
        "$q": "ndarray",
        "file": f"jobs/{job.job_id}/input-0.npy",
    }
    assert cloud.services.store.exists(keys.job_prefix(job.job_id) + "input-0.npy")


# -- program environments (issue 10) ----------------------------------------------------------
PENDULUM = PROGRAMS / "aws_pendulum.py"
GONE = PROGRAMS / "aws_gone_package.py"


def _env_builds(box: CloudBox) -> list[Any]:
    assert box.batch is not None
    return [r for r in box.batch.runs if r.command[:3] == ["python", "-m", "qlayer.aws.env_build"]]


def _events(job: Any) -> list[str]:
    return [e["event"] for e in job.timeline()]


def test_a_program_needing_pendulum_runs_to_done_and_its_lock_builds_once(
    box: CloudBox, cloud: Any
) -> None:
    """pendulum is in neither the base nor the runner image: the first job builds its
    environment on Batch (BUILDING), every stage runner (Lambda, a fan-out's children, Batch)
    imports it from there; a second job of the same lock starts with no build."""
    from qlayer import keys

    before = len(_env_builds(box))
    job = cloud.run(PENDULUM, {})
    env = cloud.services.jobs.get(job.job_id).env
    assert env and cloud.services.store.exists(keys.env_lock(env))
    row = finish(box, job, timeout=400)
    assert row["status"] == "DONE", row["message"]
    result = job.result(wait=False)
    assert result["offsets"] == {"Europe/Paris": 2, "Asia/Tokyo": 9}
    assert "/qlayer-envs/" in result["file"]  # unpacked by the Batch stage runner
    states = box.entered_states(job.job_id)
    assert states[:4] == [
        "Load job",
        "Environment ready?",
        "Build environment",
        "Check environment",
    ]
    assert "Run stage on Batch" in states
    events = _events(job)
    assert events.index("building environment") < events.index("environment ready")
    assert events.index("environment ready") < events.index("started")
    (build,) = _env_builds(box)[before:]
    assert build.name == f"{job.job_id}-env" and build.exit_code == 0
    built = cloud.services.store.get_json(keys.env_built(env))
    assert [p.split("==")[0] for p in built["packages"]].count("pendulum") == 1
    assert cloud.services.store.get_json(keys.ENV_BASE)["python"] == "3.11"
    for child in job.children():
        assert cloud.services.jobs.get(child.job_id).env == env
        assert "Build environment" not in box.entered_states(child.job_id)

    again = cloud.run(PENDULUM, {"zones": ["America/New_York"]})
    assert cloud.services.jobs.get(again.job_id).env == env
    row = finish(box, again, timeout=300)
    assert row["status"] == "DONE", row["message"]
    assert again.result(wait=False)["offsets"] == {"America/New_York": -4}
    assert "Build environment" not in box.entered_states(again.job_id)
    assert len(_env_builds(box)) == before + 1  # no second build of the same lock
    ready = [e for e in again.timeline() if e["event"] == "environment ready"]
    assert ready[0]["detail"]["build"] == "skipped"
    assert "building environment" not in _events(again)


def test_a_job_without_requirements_sees_no_environment(box: CloudBox, cloud: Any) -> None:
    job = cloud.run(PROGRAMS / "aws_no_requirements.py", {})
    assert job.result(timeout=240) == {"pendulum": None}
    assert cloud.services.jobs.get(job.job_id).env is None
    assert "Build environment" not in box.entered_states(job.job_id)


def test_a_bad_requirement_fails_at_submit_or_in_the_build_with_the_installers_reason(
    box: CloudBox, cloud: Any
) -> None:
    """No such package: refused at submit (the resolver's reason). A lock whose pin no
    longer installs (resolved before, gone from the index since): the build fails, the job
    ends in ERROR with uv's message before any stage runs, and a second job of that lock
    fails the same way without building again (for FAILURE_TTL_S)."""
    from qlayer import keys
    from qlayer.aws.envs import stack_base
    from qlayer.envs import Lock, check_requirements, spec_hash
    from qlayer.errors import RequirementError

    with pytest.raises(RequirementError, match="qlayer-test-gone-package") as refused:
        cloud.run(GONE, {})
    assert "not found" in str(refused.value) or "No solution" in str(refused.value)

    store = cloud.services.store
    wanted = check_requirements(["qlayer-test-gone-package==1.0"])
    base = stack_base(store)
    lock = Lock(wanted, install=wanted, base=base.identity())
    store.put_json(keys.env_lock(lock.hash), lock.to_json())
    store.put_json(
        keys.env_resolution(spec_hash(wanted, base)),
        {"env": lock.hash, "requirements": list(wanted)},
    )
    before = len(_env_builds(box))
    job = cloud.run(GONE, {})
    row = finish(box, job, timeout=300)
    assert row["status"] == "ERROR" and row["error_type"] == "EnvBuildError"
    assert "qlayer-test-gone-package" in row["message"], row["message"]
    assert "building the program's environment failed" in row["message"]
    states = box.entered_states(job.job_id)
    assert "Build environment" in states and not [s for s in states if "stage" in s]
    assert "started" not in _events(job)
    assert len(_env_builds(box)) == before + 1

    again = cloud.run(GONE, {})
    row = finish(box, again, timeout=120)
    assert row["status"] == "ERROR" and row["error_type"] == "EnvBuildError"
    assert "Build environment" not in box.entered_states(again.job_id)
    assert len(_env_builds(box)) == before + 1


# -- the Qiskit Serverless gateway behind API Gateway (issue 11) ----------------------------
SERVERLESS_FUNCTIONS = PROGRAMS.parents[1] / "e2e" / "serverless_functions"
SERVERLESS_NOTEBOOK = PROGRAMS.parent / "serverless_notebook.py"


def gateway_token(box: CloudBox) -> str:
    """The token as a user reads it after a deploy: from the secret the output names."""
    arn = box.outputs["GatewayTokenSecretArn"]
    return str(box.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])


def client_notebook(*args: str, tmp_path: Any, box: CloudBox | None = None) -> dict[str, Any]:
    """Run tests/functional/serverless_notebook.py with the real client, in its own venv."""
    import os
    import subprocess

    from serverless_envs import client_python

    out = tmp_path / f"seen-{len(list(tmp_path.iterdir()))}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHONPATH"))}
    done = subprocess.run(
        [str(client_python()), str(SERVERLESS_NOTEBOOK), *args, str(out)],
        capture_output=True,
        text=True,
        timeout=540,
        env=env,
    )
    if done.returncode != 0:  # the gateway function's own log says why it answered 500
        seen = box.function_log("gateway")[-4000:] if box is not None else ""
        raise AssertionError(done.stdout[-3000:] + done.stderr[-3000:] + seen)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_the_gateway_url_is_the_api_stage_served_on_loopback(box: CloudBox) -> None:
    """The output GatewayUrl names the REST API's stage; in the box its execute-api origin is
    the loopback front, which invokes the template's proxy function through the Lambda API."""
    assert box.deployment is not None
    (api,) = box.deployment.apis.values()
    url = box.outputs["GatewayUrl"]
    assert url == f"{box.fronts[0].origin}/{api.stage}/" and url.startswith("http://127.0.0.1:")
    apis = box.client("apigateway").get_rest_apis()["items"]
    assert [a["id"] for a in apis] == [api.api_id]
    gateway = box.deployment.functions["gateway"]
    assert box.deployment.function_named(api.function_logical_id) == gateway.name
    assert "Runtime" in gateway.properties  # a zip function on the light layer: no qiskit


def test_the_gateway_answers_its_token_only_and_refuses_malformed_requests(
    box: CloudBox,
) -> None:
    import httpx

    url, token = box.outputs["GatewayUrl"], gateway_token(box)
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("api/v1/programs/").status_code == 401
        wrong = http.get("api/v1/programs/", headers={"Authorization": f"Bearer {token[:-1]}x"})
        assert wrong.status_code == 401 and "invalid token" in wrong.json()["message"]
        listed = http.get("api/v1/programs/", headers=auth)
        assert listed.status_code == 200 and isinstance(listed.json(), list)
        refused = [
            http.post("api/v1/programs/run/", content=b"{not json", headers=auth),
            http.post("api/v1/programs/run/", json=[1, 2], headers=auth),
            http.post("api/v1/programs/run/", json={"title": "../../etc"}, headers=auth),
            http.post("api/v1/programs/upload/", json={"title": "x"}, headers=auth),
            http.post(
                "api/v1/programs/upload/",
                content=b"--b\r\nno headers\r\n--b--\r\n",
                headers={**auth, "Content-Type": "multipart/form-data; boundary=b"},
            ),
            http.get("api/v1/files/download/", params={"file": "../../jobs/x"}, headers=auth),
            http.get("api/v1/jobs/..%2F..%2Fprograms/", headers=auth),
            http.get("api/v1/jobs/provider/", params={"function": "mapped"}, headers=auth),
        ]
        for answer in refused:
            assert 400 <= answer.status_code < 500, (answer.request.url, answer.text)
            assert "message" in answer.json() and "Traceback" not in answer.text
        assert http.get("api/v1/nothing-here/", headers=auth).status_code == 404
        big = http.post("api/v1/programs/run/", content=b"x" * (4 * 2**20 + 2**18), headers=auth)
        assert big.status_code == 413, big.text  # the function's bound, before decoding
        anonymous = http.post("api/v1/programs/run/", content=b"x" * (4 * 2**20 + 2**18))
        assert anonymous.status_code == 401  # the token first: nothing of the body is read
        huge = http.post("api/v1/programs/run/", content=b"x" * (10 * 2**20 + 1), headers=auth)
        assert huge.status_code == 413  # API Gateway's payload limit
    other_stage = httpx.get(f"{box.fronts[0].origin}/prod/api/v1/programs/", headers=auth)
    assert other_stage.status_code == 403
    assert token not in box.function_log("gateway")


@pytest.mark.slow
def test_the_serverless_client_runs_a_function_through_api_gateway_and_the_state_machine(
    box: CloudBox, tmp_path: Any
) -> None:
    """The real qiskit-serverless 0.37 client, host = the stack's GatewayUrl: upload, run
    with a circuit argument, in-job sub-status calls back through the API, result and logs
    as the library alone computes them; files; an error event sent from inside a job; a
    running job stopped."""
    from qlayer import Client

    seen = client_notebook(
        box.outputs["GatewayUrl"],
        gateway_token(box),
        str(SERVERLESS_FUNCTIONS),
        tmp_path=tmp_path,
        box=box,
    )
    alone = client_notebook("--in-process", str(SERVERLESS_FUNCTIONS), tmp_path=tmp_path)
    assert seen["status"] == "DONE", seen
    assert seen["result"] == alone["result"]
    assert seen["again"] == seen["result"] and seen["job_id"] in seen["listed"]
    assert "mapped" in seen["functions"]
    assert "mapping 3 qubits onto fake_manila" in seen["logs"]
    assert "provider-only note" not in seen["logs"]
    assert "provider-only note" in seen["provider_logs"]
    job_id = seen["job_id"]
    assert box.wait_execution(job_id)["status"] == "SUCCEEDED"
    assert "Run stage on Batch" in box.entered_states(job_id)
    job = Client.aws(stack=STACK, region=REGION).job(job_id)
    stages = [e["stage"] for e in job.timeline() if e["event"] == "sub-status"]
    assert stages == ["MAPPING", "OPTIMIZING_FOR_HARDWARE", "EXECUTING_QPU", "POST_PROCESSING"]
    # files through the API: a multipart upload, a binary download (base64 both ways)
    assert seen["files"] == ["weights.bin"] and seen["same_bytes"] is True
    assert seen["files_after"] == []
    # an error event sent from inside the job, and the client's exception naming it
    assert seen["fails_status"] == "ERROR"
    assert seen["error_events"][0]["code"] == "E_LIMIT"
    assert "limit 2 is below the minimum of 5" in seen["error"]
    # stop() of a running job: CANCELED for the client, the execution stopped, the row final
    assert seen["stop"] == "Job has been stopped." and seen["stopped_status"] == "CANCELED"
    assert box.wait_execution(seen["slow_job_id"], 30)["status"] == "ABORTED"
    # inside the job, its token reads its own job (the cancel wind-down's question) only
    assert "own status 200 RUNNING False" in seen["slow_logs"]
    assert "programs with a job token 403" in seen["slow_logs"]
    assert Client.aws(stack=STACK, region=REGION).job(seen["slow_job_id"]).status().value == (
        "CANCELLED"
    )
