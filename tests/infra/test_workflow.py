"""The job state machine: the stage interpreter's routes, catches, and the task contracts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Capture, Match, Template
from qlayer_infra import workflow as wf
from qlayer_infra.extract import DEFAULT_PSEUDO, all_states, resolve_intrinsics

from qlayer import interpreter
from qlayer.core import transitions

STEP_PAYLOAD = {"job_id.$": "$.job_id", "decision.$": "$.decision"}


def _choices(state: dict[str, Any]) -> dict[str, str]:
    """A Choice state's StringEquals value -> Next."""
    return {c["StringEquals"]: c["Next"] for c in state["Choices"] if "StringEquals" in c}


def test_state_machine_is_traced_logged_and_named(template: Template) -> None:
    template.has_resource_properties(
        "AWS::StepFunctions::StateMachine",
        {
            "StateMachineName": "qlayer-dev-jobs",
            "StateMachineType": "STANDARD",
            "TracingConfiguration": {"Enabled": True},
            "LoggingConfiguration": {
                "Level": "ALL",
                "IncludeExecutionData": True,
                "Destinations": Match.any_value(),
            },
        },
    )
    (group,) = [
        g
        for g in template.find_resources("AWS::Logs::LogGroup").values()
        if "LogGroupName" in g["Properties"]
    ]
    assert "KmsKeyId" in group["Properties"] and group["DeletionPolicy"] == "Retain"
    # Retained: a fixed name would collide after `cdk destroy` (issue 7 item 9).
    name = resolve_intrinsics(group["Properties"]["LogGroupName"], lambda lid, attr: lid)
    tail = DEFAULT_PSEUDO["AWS::StackId"].rsplit("-", 1)[1]
    assert name == f"/aws/vendedlogs/states/qlayer-dev-jobs-{tail}"


def test_starts_by_loading_the_job(definition: dict[str, Any]) -> None:
    assert definition["StartAt"] == "Load job"
    load = definition["States"]["Load job"]
    assert load["Parameters"] == {"job_id.$": "$.job_id", "execution.$": "$$.Execution.Id"}
    assert load["ResultPath"] == "$.decision"
    assert load["Next"] == wf.ENV_READY


def test_an_environment_is_built_before_the_first_stage_only_when_the_loader_asks(
    definition: dict[str, Any], stack
) -> None:
    """ "Load job" marks a first decision whose environment is not built
    (``extra.build_env``, qlayer.aws.steps.env_gate); anything else goes to Route."""
    from qlayer.aws import steps

    assert wf.ENV_BUILD_FIELD == steps.BUILD_ENV
    states = definition["States"]
    ready = states[wf.ENV_READY]
    assert ready["Type"] == "Choice" and ready["Default"] == wf.ROUTE
    assert ready["Choices"] == [
        {"Variable": "$.decision.extra.build_env", "IsPresent": True, "Next": wf.BUILD_ENV}
    ]
    build = states[wf.BUILD_ENV]
    assert build["Resource"].endswith(":states:::batch:submitJob.sync")
    assert build["Parameters"]["Parameters"] == {"env.$": "$.decision.extra.build_env"}
    assert build["Parameters"]["JobName.$"] == "States.Format('{}-env', $.job_id)"
    assert build["ResultPath"] == "$.batch"  # the decision travels on to "Check environment"
    assert build["Next"] == wf.CHECK_ENV
    assert [c["Next"] for c in build["Catch"]] == [wf.RECORD_FAILURE]
    check = states[wf.CHECK_ENV]
    read = states[wf.READ_OUTCOME]
    assert check["Parameters"] == STEP_PAYLOAD
    assert check["Resource"] == read["Resource"]  # the read_outcome function
    assert check["ResultPath"] == "$.decision" and check["Next"] == wf.ROUTE


def test_route_follows_the_interpreter(definition: dict[str, Any]) -> None:
    route = definition["States"]["Route"]
    assert route["Type"] == "Choice"
    assert _choices(route) == {
        "next": "Choose compute",
        "execute": "Execute",
        "fanout": "Fan out",
        "done": "Finalise",
        "error": "Fail job",
    }
    assert set(_choices(route)) == set(interpreter.DECISION_KINDS)
    # The interpreter's table and the synthesised Route state say the same thing.
    assert _choices(route) == transitions.ROUTES  # the engine's table and the Route state agree
    assert _choices(route) == wf.ROUTES
    assert route["Default"] == "Unroutable decision"


def test_choose_compute(definition: dict[str, Any]) -> None:
    choose = definition["States"]["Choose compute"]
    assert choose["Choices"][0]["Variable"] == "$.decision.compute.kind"
    assert _choices(choose) == {
        "lambda": "Run stage on Lambda",
        "batch": "Run stage on Batch",
        "batch-gpu": "Run stage on Batch GPU",
    }


def test_execute_routes_on_the_planner_tier(definition: dict[str, Any]) -> None:
    execute = definition["States"]["Execute"]
    assert execute["Choices"][0]["Variable"] == "$.decision.plan.tier"
    assert _choices(execute) == {
        "lambda": "Simulate on Lambda",
        "batch": "Simulate on Batch",
        "batch-gpu": "Simulate on Batch GPU",
        "qpu": "Wait for QPU",
    }


@pytest.mark.parametrize(
    ("state", "then"),
    [
        ("Run stage on Lambda", "Route"),
        ("Simulate on Lambda", "Route"),
        ("Read stage outcome", "Route"),
        ("Fan in", "Route"),
    ],
)
def test_decision_steps_get_pointers_and_return_a_decision(
    definition: dict[str, Any], state: str, then: str
) -> None:
    task = definition["States"][state]
    assert task["Type"] == "Task"
    assert task["Resource"].startswith(
        "arn:aws:lambda:"
    )  # payload only: the handler's return value
    assert task["Parameters"] == STEP_PAYLOAD
    assert task["ResultPath"] == "$.decision"
    assert task["Next"] == then


@pytest.mark.parametrize(
    ("state", "queue", "gpu"),
    [
        ("Run stage on Batch", "cpu_queue", False),
        ("Run stage on Batch GPU", "gpu_queue", True),
        ("Simulate on Batch", "cpu_queue", False),
        ("Simulate on Batch GPU", "gpu_queue", True),
    ],
)
def test_batch_steps(
    definition: dict[str, Any],
    template_json: dict[str, Any],
    stack,
    state: str,
    queue: str,
    gpu: bool,
) -> None:
    task = definition["States"][state]
    assert task["Resource"] == "arn:aws:states:::batch:submitJob.sync"
    params = task["Parameters"]
    queue_id = stack.resolve(getattr(stack.compute, queue).node.default_child.logical_id)
    assert params["JobQueue"].endswith(f"job-queue/{queue_id}")
    assert params["Parameters"]["job_id.$"] == "$.job_id"
    assert params["Parameters"]["seq.$"] == "States.Format('{}', $.decision.seq)"
    if state.startswith("Simulate"):
        assert params["Parameters"]["stage"] == "execute"
    else:
        assert params["Parameters"]["stage.$"] == "$.decision.stage"
    kinds = {r["Type"] for r in params["ContainerOverrides"]["ResourceRequirements"]}
    assert kinds == ({"VCPU", "MEMORY", "GPU"} if gpu else {"VCPU", "MEMORY"})
    assert (
        task["ResultPath"] == "$.batch"
    )  # Batch returns no decision: keep $.decision for the reader
    assert task["Next"] == "Read stage outcome"


def test_wait_for_qpu(definition: dict[str, Any]) -> None:
    wait = definition["States"]["Wait for QPU"]
    assert wait["Resource"] == "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
    assert wait["HeartbeatSeconds"] == 3600
    assert wait["TimeoutSeconds"] == 7 * 24 * 3600
    assert wait["Parameters"]["QueueUrl"].startswith("https://sqs.")
    assert wait["Parameters"]["MessageBody"] == {
        "task_token.$": "$$.Task.Token",
        "job_id.$": "$.job_id",
        "seq.$": "$.decision.seq",
        "request_key.$": "$.decision.request_key",
        "backend.$": "$.decision.backend",
        "execution.$": "$$.Execution.Id",
        "heartbeat_s": 3600,  # the poller keeps the token alive at a third of it
    }
    assert wait["ResultPath"] == "$.decision"
    assert wait["Next"] == "Route"


def test_fan_out_inline_up_to_the_interpreter_limit_then_distributed(
    definition: dict[str, Any],
) -> None:
    states = definition["States"]
    assert states["Fan out"]["Next"] == "Start children"
    start = states["Start children"]
    assert start["Parameters"] == STEP_PAYLOAD and start["ResultPath"] == "$.fanout"
    assert start["Next"] == "Inline or distributed"
    choice = states["Inline or distributed"]
    assert wf.INLINE_MAP_LIMIT == interpreter.INLINE_MAP_LIMIT
    assert choice["Choices"] == [
        {
            "Variable": "$.decision.count",
            "NumericGreaterThan": interpreter.INLINE_MAP_LIMIT,
            "Next": "Run children (distributed)",
        }
    ]
    assert choice["Default"] == "Run children"

    inline = states["Run children"]
    assert inline["ItemsPath"] == "$.fanout.children"
    distributed = states["Run children (distributed)"]
    assert distributed["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    reader = distributed["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject"
    assert reader["ReaderConfig"]["InputType"] == "JSON"
    assert reader["Parameters"]["Key.$"] == "$.fanout.children_key"
    for state in (inline, distributed):
        assert state["ItemSelector"] == {"child_id.$": "$$.Map.Item.Value"}
        assert state["ResultPath"] is None  # children's results stay in S3
        assert state["Next"] == "Fan in"
        (child,) = state["ItemProcessor"]["States"].values()
        assert child["Resource"] == "arn:aws:states:::states:startExecution.sync:2"
        # This same machine, by its fixed name: no circular reference to its own ARN.
        assert child["Parameters"]["StateMachineArn"] == (
            "arn:aws:states:us-east-1:123456789012:stateMachine:qlayer-dev-jobs"
        )
        assert child["Parameters"]["Name.$"] == "$.child_id"
        assert child["Parameters"]["Input"]["job_id.$"] == "$.child_id"


def test_done_and_error_end_the_execution(definition: dict[str, Any]) -> None:
    states = definition["States"]
    assert states["Finalise"]["Parameters"] == STEP_PAYLOAD
    assert states["Finalise"]["Next"] == "Job done"
    assert states["Job done"]["Type"] == "Succeed"
    assert states["Fail job"]["Parameters"] == STEP_PAYLOAD
    assert states["Fail job"]["Next"] == "Job failed"
    assert states["Job failed"]["Type"] == "Fail"


def test_every_task_catches_everything_into_fail_job(definition: dict[str, Any]) -> None:
    states = all_states(definition)
    tasks = {n: s for n, s in states.items() if s["Type"] in {"Task", "Map"}}
    inside_maps = {"Run child job", "Run child job (distributed)"}
    for name, state in tasks.items():
        if name in inside_maps:
            continue  # a child failure fails its Map, which is caught
        catches = state.get("Catch", [])
        assert catches, f"{name!r} has no Catch"
        assert catches[0]["ErrorEquals"] == ["States.ALL"]
        expected = "Failure not recorded" if name == "Fail job" else "Record failure"
        assert catches[0]["Next"] == expected, name
        assert catches[0]["ResultPath"] == "$.error", name  # keeps $.job_id
    record = states["Record failure"]
    assert record["Parameters"]["job_id.$"] == "$.job_id"
    assert record["Parameters"]["decision"]["kind"] == "error"
    assert record["Next"] == "Fail job"
    assert states["Unroutable decision"]["Next"] == "Fail job"


def test_every_choice_guards_a_missing_field(definition: dict[str, Any]) -> None:
    for name in ("Route", "Choose compute", "Execute"):
        first = definition["States"][name]["Choices"][0]
        assert first["IsPresent"] is False and first["Next"] == "Unroutable decision", name


def test_console_names(definition: dict[str, Any]) -> None:
    names = set(all_states(definition))
    expected = {
        wf.LOAD,
        wf.ENV_READY,
        wf.BUILD_ENV,
        wf.CHECK_ENV,
        wf.ROUTE,
        wf.CHOOSE_COMPUTE,
        wf.RUN_LAMBDA,
        wf.RUN_BATCH,
        wf.RUN_BATCH_GPU,
        wf.READ_OUTCOME,
        wf.EXECUTE,
        wf.SIM_LAMBDA,
        wf.SIM_BATCH,
        wf.SIM_BATCH_GPU,
        wf.WAIT_QPU,
        wf.FAN_OUT,
        wf.START_CHILDREN,
        wf.INLINE_OR_DISTRIBUTED,
        wf.RUN_CHILDREN,
        wf.RUN_CHILDREN_DISTRIBUTED,
        wf.RUN_CHILD,
        wf.RUN_CHILD_DISTRIBUTED,
        wf.FAN_IN,
        wf.FINALISE,
        wf.JOB_DONE,
        wf.FAIL_JOB,
        wf.JOB_FAILED,
        wf.RECORD_FAILURE,
        wf.UNROUTABLE,
        wf.FAILURE_NOT_RECORDED,
    }
    assert names == expected


def test_state_machine_may_submit_to_its_batch_queues(template: Template, stack) -> None:
    c = stack.compute
    template.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "Roles": [stack.resolve(stack.workflow.state_machine.role.role_name)],
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": "batch:SubmitJob",
                                "Resource": [
                                    stack.resolve(x)
                                    for x in (
                                        c.cpu_queue.job_queue_arn,
                                        c.gpu_queue.job_queue_arn,
                                        c.cpu_job.job_definition_arn,
                                        c.gpu_job.job_definition_arn,
                                        c.env_build_job.job_definition_arn,
                                    )
                                ],
                            }
                        )
                    ]
                )
            },
        },
    )


def test_ended_executions_reach_fail_job(template: Template, stack) -> None:
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": ["aws.states"],
                "detail-type": ["Step Functions Execution Status Change"],
                "detail": {
                    "status": ["FAILED", "TIMED_OUT", "ABORTED"],
                    "stateMachineArn": [
                        stack.resolve(stack.workflow.state_machine.state_machine_arn)
                    ],
                },
            },
            "Targets": [
                Match.object_like(
                    {"Arn": stack.resolve(stack.compute.functions["fail_job"].function_arn)}
                )
            ],
        },
    )


def test_state_machine_may_start_its_children(template: Template, stack) -> None:
    own_arn = {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":states:",
                {"Ref": "AWS::Region"},
                ":",
                {"Ref": "AWS::AccountId"},
                ":stateMachine:qlayer-dev-jobs",
            ],
        ]
    }
    template.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "Roles": [stack.resolve(stack.workflow.state_machine.role.role_name)],
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Action": "states:StartExecution", "Resource": own_arn})]
                )
            },
        },
    )


# -- retries: throttling must not fail a sweep; a step's own failure is never retried -------
LAMBDA_STATES = [
    "Load job",
    "Run stage on Lambda",
    "Read stage outcome",
    "Simulate on Lambda",
    "Start children",
    "Fan in",
    "Finalise",
    "Fail job",
]
BATCH_STATES = [
    "Run stage on Batch",
    "Run stage on Batch GPU",
    "Simulate on Batch",
    "Simulate on Batch GPU",
]
CHILD_STATES = ["Run child job", "Run child job (distributed)"]
OWN_FAILURES = {"States.ALL", "States.TaskFailed", "States.Timeout", "States.HeartbeatTimeout"}


def _retried(state: dict[str, Any]) -> set[str]:
    return {e for r in state.get("Retry", []) for e in r["ErrorEquals"]}


def _backs_off_with_jitter(state: dict[str, Any]) -> None:
    for retrier in state["Retry"]:
        assert retrier["BackoffRate"] > 1 and retrier["JitterStrategy"] == "FULL", retrier
        assert retrier["MaxAttempts"] >= 6 and retrier["MaxDelaySeconds"] <= 120, retrier


@pytest.mark.parametrize("name", LAMBDA_STATES)
def test_lambda_steps_retry_throttling(definition: dict[str, Any], name: str) -> None:
    """Only service exceptions were retried: TooManyRequests (concurrency) failed the job."""
    state = definition["States"][name]
    assert {
        "Lambda.TooManyRequestsException",
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
    } <= _retried(state)
    assert not _retried(state) & OWN_FAILURES  # an exception the handler raised is final
    _backs_off_with_jitter(state)


@pytest.mark.parametrize("name", BATCH_STATES)
def test_batch_steps_retry_submission_errors_not_failed_jobs(
    definition: dict[str, Any], name: str
) -> None:
    state = definition["States"][name]
    assert {"Batch.AWSBatchException", "Batch.TooManyRequestsException"} <= _retried(state)
    assert not _retried(state) & OWN_FAILURES  # a job that FAILED on its own stays failed
    assert "Batch.ClientException" not in _retried(state)  # a bad request stays bad
    _backs_off_with_jitter(state)


def test_wait_for_qpu_retries_sending_not_waiting(definition: dict[str, Any]) -> None:
    state = definition["States"]["Wait for QPU"]
    assert {"SQS.AmazonSQSException", "SQS.SdkClientException"} <= _retried(state)
    assert all(e.startswith("SQS.") for e in _retried(state))  # not the timeout/heartbeat
    _backs_off_with_jitter(state)


@pytest.mark.parametrize("name", CHILD_STATES)
def test_child_starts_retry_throttling_but_child_failures_fail_the_parent(
    definition: dict[str, Any], name: str
) -> None:
    state = all_states(definition)[name]
    assert {
        "StepFunctions.ExecutionLimitExceeded",
        "StepFunctions.AWSStepFunctionsException",
    } <= _retried(state)
    assert not _retried(state) & OWN_FAILURES
    _backs_off_with_jitter(state)


def test_fan_out_tolerates_no_failed_child(definition: dict[str, Any]) -> None:
    for name in ("Run children", "Run children (distributed)"):
        state = definition["States"][name]
        assert state.get("ToleratedFailurePercentage", 0) == 0, name
        assert state.get("ToleratedFailureCount", 0) == 0, name


def test_distributed_concurrency_fits_default_quotas(definition: dict[str, Any]) -> None:
    """1000 children at once met the account's 1000 Lambda concurrency and StartExecution's
    burst; the default leaves room for every other job."""
    concurrency = definition["States"]["Run children (distributed)"]["MaxConcurrency"]
    assert concurrency == wf.DEFAULT_DISTRIBUTED_CONCURRENCY == 250


def test_distributed_concurrency_is_a_property(tmp_path) -> None:
    from qlayer_infra.extract import state_machine_definition
    from qlayer_infra.stack import QlayerStack

    from .conftest import make_app

    stack = QlayerStack(make_app(tmp_path), "Wide", max_distributed_concurrency=600)
    asl = state_machine_definition(Template.from_stack(stack).to_json())
    assert asl["States"]["Run children (distributed)"]["MaxConcurrency"] == 600
    with pytest.raises(ValueError, match="max_distributed_concurrency"):
        QlayerStack(make_app(tmp_path / "b"), "Bad", max_distributed_concurrency=20_000)


# -- nothing waits forever in Batch ---------------------------------------------------------
@pytest.mark.parametrize("name", BATCH_STATES)
def test_batch_jobs_carry_the_step_timeout_and_fail_into_fail_job(
    definition: dict[str, Any], name: str
) -> None:
    """SubmitJob had no Timeout: a stuck container held the execution until the job
    definition's 12 h. A timed-out or queue-cancelled job ends FAILED: States.TaskFailed,
    not retried, caught into Record failure -> Fail job."""
    state = definition["States"][name]
    assert state["Parameters"]["Timeout"] == {
        "AttemptDurationSeconds.$": "$.decision.compute.timeout_s"
    }
    (catch,) = state["Catch"]
    assert catch == {
        "ErrorEquals": ["States.ALL"],
        "ResultPath": "$.error",
        "Next": "Record failure",
    }
    assert definition["States"]["Record failure"]["Next"] == "Fail job"


def test_state_machine_terminates_only_this_accounts_batch_jobs(template: Template, stack) -> None:
    statements = Capture()
    template.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "Roles": [stack.resolve(stack.workflow.state_machine.role.role_name)],
            "PolicyDocument": {"Statement": statements},
        },
    )
    for statement in statements.as_array():
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        if "batch:TerminateJob" in actions:
            assert statement["Resource"] != "*"
            assert ":job/*" in json.dumps(statement["Resource"])
        if statement["Resource"] == "*":  # DescribeJobs has no resource-level permissions
            assert not [a for a in actions if a.startswith("batch:") and a != "batch:DescribeJobs"]
