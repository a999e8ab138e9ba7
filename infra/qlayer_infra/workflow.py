"""The job state machine: the stage interpreter of qlayer/interpreter.py, in Step Functions.

Every step ends in a Decision (``{"kind": "next"|"execute"|"fanout"|"done"|"error",
"seq": ...}``) stored at ``$.decision``; "Route" sends it on by ``kind``.
Only ``$.job_id``, ``$.decision`` and small pointers travel in the state.

::

    Load job -> Environment ready? -> Route
                                   -> Build environment -> Check environment -> Route
    Route -next->    Choose compute -lambda->    Run stage on Lambda -> Route
                                    -batch->     Run stage on Batch -> Read stage outcome -> Route
                                    -batch-gpu-> Run stage on Batch GPU -> Read stage outcome
    Route -execute-> Execute -lambda->    Simulate on Lambda -> Route
                             -batch->     Simulate on Batch -> Read stage outcome
                             -batch-gpu-> Simulate on Batch GPU -> Read stage outcome
                             -qpu->       Wait for QPU (SQS + task token) -> Route
    Route -fanout->  Fan out -> Start children -> Inline or distributed
                     -> Run children | Run children (distributed) -> Fan in -> Route
    Route -done->    Finalise -> Job done
    Route -error->   Fail job -> Job failed

Every task catches every error into ``$.error`` and goes to "Record failure" ->
"Fail job", so a failure always lands the job in ERROR with its reason. Before that,
throttling and transient service errors are retried (see :mod:`qlayer_infra.retries`);
a step's own failure or timeout never is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from aws_cdk import Annotations, ArnFormat, Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from qlayer_infra import access, retries
from qlayer_infra.compute import Compute
from qlayer_infra.naming import unique_suffix
from qlayer_infra.patterns import execution_ended

#: Step Functions Map runs inline up to this many items, Distributed Map past it
#: (the same number as qlayer.interpreter.INLINE_MAP_LIMIT; a test holds them equal).
INLINE_MAP_LIMIT = 40

#: Distributed Map children running at once, by default. Each child job runs one step at a
#: time, so this bounds a sweep's concurrent Lambda invocations (the account's default
#: concurrency is 1000, shared with every other job, the dispatcher and the poller) and
#: its StartExecution burst (a token bucket of 800 in most regions, 1300 in the largest,
#: refilled at 150-300 per second): 250 fits both with room to spare. A start that is
#: throttled anyway is retried (retries.CHILD), not counted as a failed child.
DEFAULT_DISTRIBUTED_CONCURRENCY = 250
#: Step Functions' ceiling for a Distributed Map's MaxConcurrency.
MAX_DISTRIBUTED_CONCURRENCY = 10_000

#: The field of a first decision's ``extra`` naming an environment to build first
#: (qlayer.aws.steps.BUILD_ENV; a test holds them equal).
ENV_BUILD_FIELD = "build_env"

#: The payload every Lambda step after "Load job" receives.
STEP_PAYLOAD = {"job_id.$": "$.job_id", "decision.$": "$.decision"}

#: State names, as the console shows them. Tests and the moto harness use these.
LOAD = "Load job"
ENV_READY = "Environment ready?"
BUILD_ENV = "Build environment"
CHECK_ENV = "Check environment"
ROUTE = "Route"
CHOOSE_COMPUTE = "Choose compute"
RUN_LAMBDA = "Run stage on Lambda"
RUN_BATCH = "Run stage on Batch"
RUN_BATCH_GPU = "Run stage on Batch GPU"
READ_OUTCOME = "Read stage outcome"
EXECUTE = "Execute"
SIM_LAMBDA = "Simulate on Lambda"
SIM_BATCH = "Simulate on Batch"
SIM_BATCH_GPU = "Simulate on Batch GPU"
WAIT_QPU = "Wait for QPU"
FAN_OUT = "Fan out"  # a Pass that names the branch; "Start children" does the work
START_CHILDREN = "Start children"
INLINE_OR_DISTRIBUTED = "Inline or distributed"
RUN_CHILDREN = "Run children"
RUN_CHILDREN_DISTRIBUTED = "Run children (distributed)"
RUN_CHILD = "Run child job"
RUN_CHILD_DISTRIBUTED = "Run child job (distributed)"
FAN_IN = "Fan in"
FINALISE = "Finalise"
JOB_DONE = "Job done"
FAIL_JOB = "Fail job"
JOB_FAILED = "Job failed"
RECORD_FAILURE = "Record failure"
UNROUTABLE = "Unroutable decision"
FAILURE_NOT_RECORDED = "Failure not recorded"

_Retryable = TypeVar("_Retryable", sfn.TaskStateBase, sfn.CustomState)

#: Route: Decision.kind -> the state it goes to.
ROUTES: dict[str, str] = {
    "next": CHOOSE_COMPUTE,
    "execute": EXECUTE,
    "fanout": FAN_OUT,
    "done": FINALISE,
    "error": FAIL_JOB,
}
#: Choose compute: decision.compute.kind -> state.
COMPUTE_ROUTES: dict[str, str] = {
    "lambda": RUN_LAMBDA,
    "batch": RUN_BATCH,
    "batch-gpu": RUN_BATCH_GPU,
}
#: Execute: decision.plan.tier -> state.
TIER_ROUTES: dict[str, str] = {
    "lambda": SIM_LAMBDA,
    "batch": SIM_BATCH,
    "batch-gpu": SIM_BATCH_GPU,
    "qpu": WAIT_QPU,
}


def state_machine_name(env_name: str) -> str:
    """The fixed name of the job state machine (children start executions of it by name)."""
    return f"qlayer-{env_name}-jobs"


def state_machine_arn(scope: Construct, env_name: str) -> str:
    """The ARN of the job state machine, from its fixed name (known before it exists)."""
    return Stack.of(scope).format_arn(
        service="states",
        resource="stateMachine",
        resource_name=state_machine_name(env_name),
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )


class JobWorkflow(Construct):
    """The Standard state machine that drives one job, with its log group.

    Attributes:
        state_machine: The job state machine (execution name = job id,
            input ``{"job_id": "<id>"}``).
        log_group: Execution history at level ALL, encrypted with ``key``.
        status_rule: Executions that end FAILED/TIMED_OUT/ABORTED -> fail_job (a safety net
            for failures the definition cannot catch, and the hook for cancel).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        env_name: str,
        compute: Compute,
        bucket: s3.IBucket,
        dispatch_queue: sqs.IQueue,
        key: kms.IKey,
        qpu_heartbeat: Duration = Duration.hours(1),
        qpu_timeout: Duration = Duration.days(7),
        max_children_concurrency: int = 40,
        max_distributed_concurrency: int = DEFAULT_DISTRIBUTED_CONCURRENCY,
        log_retention: logs.RetentionDays = logs.RetentionDays.THREE_MONTHS,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        if not 1 <= max_distributed_concurrency <= MAX_DISTRIBUTED_CONCURRENCY:
            raise ValueError(
                f"max_distributed_concurrency={max_distributed_concurrency}: use 1-"
                f"{MAX_DISTRIBUTED_CONCURRENCY} (default {DEFAULT_DISTRIBUTED_CONCURRENCY})"
            )
        super().__init__(scope, id)
        self.name = state_machine_name(env_name)
        fns = compute.functions
        self._catchables: list[
            sfn.TaskStateBase | sfn.CustomState | sfn.Map | sfn.DistributedMap
        ] = []

        # -- the ends ------------------------------------------------------------------
        job_failed = sfn.Fail(
            self,
            "JobFailed",
            state_name=JOB_FAILED,
            error="JobFailed",
            cause="The job is in ERROR; the reason is in jobs/<job_id>/error.json",
        )
        not_recorded = sfn.Fail(
            self,
            "FailureNotRecorded",
            state_name=FAILURE_NOT_RECORDED,
            error="FailureNotRecorded",
            cause="The job failed and fail_job could not record it; see this execution's history",
        )
        fail_job = self._lambda(
            FAIL_JOB, fns["fail_job"], result_path=sfn.JsonPath.DISCARD, catch=False
        )
        fail_job.add_catch(not_recorded, errors=["States.ALL"], result_path="$.error")
        fail_job.next(job_failed)

        self.record_failure = sfn.Pass(
            self,
            "RecordFailure",
            state_name=RECORD_FAILURE,
            comment="A step raised or timed out: turn the caught error into an error decision",
            parameters={
                "job_id": sfn.JsonPath.string_at("$.job_id"),
                "decision": {
                    "kind": "error",
                    "error_type": sfn.JsonPath.string_at("$.error.Error"),
                    "failure": sfn.JsonPath.object_at("$.error"),
                },
            },
        ).next(fail_job)
        unroutable = sfn.Pass(
            self,
            "Unroutable",
            state_name=UNROUTABLE,
            comment="A decision this state machine cannot route: fail the job with it",
            parameters={
                "job_id": sfn.JsonPath.string_at("$.job_id"),
                "decision": {
                    "kind": "error",
                    "error_type": "UnroutableDecision",
                    "message": "a step returned a decision with no known kind, compute.kind "
                    "or plan.tier",
                    "failure": sfn.JsonPath.object_at("$.decision"),
                },
            },
        ).next(fail_job)

        finalise = self._lambda(FINALISE, fns["finaliser"], result_path=sfn.JsonPath.DISCARD)
        finalise.next(sfn.Succeed(self, "JobDone", state_name=JOB_DONE))

        # -- route ---------------------------------------------------------------------
        route = sfn.Choice(
            self, "Route", state_name=ROUTE, comment="Where the last step's decision goes"
        )
        load = self._lambda(
            LOAD,
            fns["loader"],
            payload={"job_id.$": "$.job_id", "execution.$": "$$.Execution.Id"},
        )

        # -- the job's environment, built once per lock ----------------------------------
        # "Load job" marks a first decision whose environment is not built yet
        # (qlayer.aws.steps.env_gate): it is built on Batch, then checked, before any stage.
        build_env = self._env_build(compute)
        check_env = self._lambda(CHECK_ENV, fns["read_outcome"])
        build_env.next(check_env)
        check_env.next(route)
        load.next(
            sfn.Choice(
                self,
                "EnvironmentReady",
                state_name=ENV_READY,
                comment="Build the job's environment first, the first time its lock is used",
            )
            .when(sfn.Condition.is_present(f"$.decision.extra.{ENV_BUILD_FIELD}"), build_env)
            .otherwise(route)
        )

        # -- run a stage ---------------------------------------------------------------
        read_outcome = self._lambda(READ_OUTCOME, fns["read_outcome"])
        read_outcome.next(route)
        run_lambda = self._lambda(RUN_LAMBDA, fns["stage_runner"])
        run_lambda.next(route)
        run_batch = self._batch(
            RUN_BATCH, compute.cpu_queue, compute.cpu_job, stage="$.decision.stage"
        )
        run_batch.next(read_outcome)
        run_batch_gpu = self._batch(
            RUN_BATCH_GPU, compute.gpu_queue, compute.gpu_job, stage="$.decision.stage", gpus=True
        )
        run_batch_gpu.next(read_outcome)
        choose = self._choice(
            CHOOSE_COMPUTE,
            "$.decision.compute.kind",
            {
                "lambda": run_lambda,
                "batch": run_batch,
                "batch-gpu": run_batch_gpu,
            },
            unroutable,
            comment="Where the next stage runs (its @wf.stage(compute=...))",
        )

        # -- execute -------------------------------------------------------------------
        sim_lambda = self._lambda(SIM_LAMBDA, fns["simulator"])
        sim_lambda.next(route)
        sim_batch = self._batch(SIM_BATCH, compute.cpu_queue, compute.cpu_job, stage=None)
        sim_batch.next(read_outcome)
        sim_batch_gpu = self._batch(
            SIM_BATCH_GPU, compute.gpu_queue, compute.gpu_job, stage=None, gpus=True
        )
        sim_batch_gpu.next(read_outcome)
        wait_qpu = tasks.SqsSendMessage(
            self,
            "WaitForQpu",
            state_name=WAIT_QPU,
            comment="Queue the request to the dispatcher; SendTaskSuccess brings the next decision",
            queue=dispatch_queue,
            integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
            message_body=sfn.TaskInput.from_object(
                {
                    "task_token": sfn.JsonPath.task_token,
                    "job_id": sfn.JsonPath.string_at("$.job_id"),
                    "seq": sfn.JsonPath.number_at("$.decision.seq"),
                    "request_key": sfn.JsonPath.string_at("$.decision.request_key"),
                    "backend": sfn.JsonPath.string_at("$.decision.backend"),
                    "execution": sfn.JsonPath.string_at("$$.Execution.Id"),
                    # how often the poller must keep the token alive (it paces itself)
                    "heartbeat_s": int(qpu_heartbeat.to_seconds()),
                }
            ),
            heartbeat_timeout=sfn.Timeout.duration(qpu_heartbeat),
            task_timeout=sfn.Timeout.duration(qpu_timeout),
            result_path="$.decision",
        )
        _retry(wait_qpu, retries.SQS)
        self._catchables.append(wait_qpu)
        wait_qpu.next(route)
        execute = self._choice(
            EXECUTE,
            "$.decision.plan.tier",
            {
                "lambda": sim_lambda,
                "batch": sim_batch,
                "batch-gpu": sim_batch_gpu,
                "qpu": wait_qpu,
            },
            unroutable,
            comment="The resource planner's tier for this execute request",
        )

        # -- fan out -------------------------------------------------------------------
        start_children = self._lambda(START_CHILDREN, fns["start_children"], result_path="$.fanout")
        fan_out = sfn.Pass(
            self,
            "FanOut",
            state_name=FAN_OUT,
            comment="A fan-out decision: one child job per item; 'Fan in' hands on their results",
        ).next(start_children)
        own_machine = sfn.StateMachine.from_state_machine_name(self, "Self", self.name)

        def run_child(construct_id: str, name: str) -> tasks.StepFunctionsStartExecution:
            child = tasks.StepFunctionsStartExecution(
                self,
                construct_id,
                state_name=name,
                comment="Run one child job (this state machine, execution name = child job id)",
                state_machine=own_machine,
                integration_pattern=sfn.IntegrationPattern.RUN_JOB,
                name=sfn.JsonPath.string_at("$.child_id"),
                input=sfn.TaskInput.from_object({"job_id": sfn.JsonPath.string_at("$.child_id")}),
                associate_with_parent=True,
                result_selector={"status": sfn.JsonPath.string_at("$.Status")},
            )
            return _retry(child, retries.CHILD)

        inline = sfn.Map(
            self,
            "RunChildren",
            state_name=RUN_CHILDREN,
            items_path="$.fanout.children",
            item_selector={"child_id": sfn.JsonPath.string_at("$$.Map.Item.Value")},
            max_concurrency=max_children_concurrency,
            result_path=sfn.JsonPath.DISCARD,
        ).item_processor(run_child("RunChild", RUN_CHILD))
        distributed = sfn.DistributedMap(
            self,
            "RunChildrenDistributed",
            state_name=RUN_CHILDREN_DISTRIBUTED,
            item_reader=sfn.S3JsonItemReader(
                bucket=bucket, key=sfn.JsonPath.string_at("$.fanout.children_key")
            ),
            item_selector={"child_id": sfn.JsonPath.string_at("$$.Map.Item.Value")},
            max_concurrency=max_distributed_concurrency,
            result_path=sfn.JsonPath.DISCARD,
            map_execution_type=sfn.StateMachineType.STANDARD,
        ).item_processor(
            run_child("RunChildDistributed", RUN_CHILD_DISTRIBUTED),
            mode=sfn.ProcessorMode.DISTRIBUTED,
            execution_type=sfn.ProcessorType.STANDARD,
        )
        # aws-cdk-lib 2.2xx validates ProcessorConfig.executionType but then warns that it is
        # ignored in favour of mapExecutionType; both say STANDARD.
        Annotations.of(distributed).acknowledge_warning(
            "@aws-cdk/aws-stepfunctions:propertyIgnored",
            "ProcessorConfig.executionType is required by CDK's own validation; same type",
        )
        self._catchables += [inline, distributed]
        fan_in = self._lambda(FAN_IN, fns["fan_in"])
        inline.next(fan_in)
        distributed.next(fan_in)
        fan_in.next(route)
        start_children.next(
            sfn.Choice(
                self,
                "InlineOrDistributed",
                state_name=INLINE_OR_DISTRIBUTED,
                comment=f"Map inline up to {INLINE_MAP_LIMIT} children, Distributed Map past it",
            )
            .when(
                sfn.Condition.number_greater_than("$.decision.count", INLINE_MAP_LIMIT), distributed
            )
            .otherwise(inline)
        )

        targets_by_kind: Mapping[str, sfn.IChainable] = {
            "next": choose,
            "execute": execute,
            "fanout": fan_out,
            "done": finalise,
            "error": fail_job,
        }
        route.when(sfn.Condition.is_not_present("$.decision.kind"), unroutable)
        for kind, target in targets_by_kind.items():
            route.when(sfn.Condition.string_equals("$.decision.kind", kind), target)
        route.otherwise(unroutable)

        for state in self._catchables:
            state.add_catch(self.record_failure, errors=["States.ALL"], result_path="$.error")

        self.log_group = logs.LogGroup(
            self,
            "Logs",
            # Retained: a fixed name would collide with the group a destroyed stack left.
            log_group_name=f"/aws/vendedlogs/states/{self.name}-{unique_suffix()}",
            retention=log_retention,
            encryption_key=key,
            removal_policy=removal_policy,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=self.name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            comment='qlayer: one execution per job; input {"job_id": "<id>"}, name = job id',
            definition_body=sfn.DefinitionBody.from_chainable(load),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True
            ),
        )
        access.grant_batch_jobs(
            self.state_machine,
            [
                compute.cpu_queue.job_queue_arn,
                compute.gpu_queue.job_queue_arn,
                compute.cpu_job.job_definition_arn,
                compute.gpu_job.job_definition_arn,
                compute.env_build_job.job_definition_arn,
            ],
        )
        self.status_rule = events.Rule(
            self,
            "ExecutionEnded",
            description="qlayer: record jobs whose execution failed, timed out or was stopped",
            event_pattern=execution_ended(self.state_machine, ["FAILED", "TIMED_OUT", "ABORTED"]),
            targets=[targets.LambdaFunction(fns["fail_job"], retry_attempts=4)],
        )

    # -- helpers ---------------------------------------------------------------------------
    def _lambda(
        self,
        name: str,
        fn: lambda_.IFunction,
        *,
        payload: Mapping[str, str] = STEP_PAYLOAD,
        result_path: str = "$.decision",
        catch: bool = True,
    ) -> tasks.LambdaInvoke:
        task = tasks.LambdaInvoke(
            self,
            _construct_id(name),
            state_name=name,
            lambda_function=fn,
            payload=sfn.TaskInput.from_object(dict(payload)),
            payload_response_only=True,
            result_path=result_path,
            retry_on_service_exceptions=False,  # retries.LAMBDA covers them, and throttling
        )
        _retry(task, retries.LAMBDA)
        if catch:
            self._catchables.append(task)
        return task

    def _batch(
        self,
        name: str,
        queue: object,
        job_definition: object,
        *,
        stage: str | None,
        gpus: bool = False,
    ) -> sfn.CustomState:
        """A Batch submitJob.sync state; the container writes output.json for "Read stage outcome".

        ``stage`` is the JSONPath of the stage name, or None for a simulation (stage "execute").
        The decision's ``compute`` gives vCPUs, memory (MiB), on the GPU queue GPUs, and
        ``timeout_s`` (at least 60, Batch's minimum): the job's attempt is stopped after it,
        and the state fails with States.TaskFailed like any failed job.
        """
        requirements = [
            {"Type": "VCPU", "Value.$": "States.Format('{}', $.decision.compute.vcpus)"},
            {"Type": "MEMORY", "Value.$": "States.Format('{}', $.decision.compute.memory_mb)"},
        ]
        if gpus:
            requirements.append(
                {"Type": "GPU", "Value.$": "States.Format('{}', $.decision.compute.gpus)"}
            )
        stage_param: dict[str, str] = {"stage.$": stage} if stage else {"stage": "execute"}
        state = sfn.CustomState(
            self,
            name,  # CustomState takes its state name from the construct id
            state_json={
                "Type": "Task",
                "Comment": "qlayer.aws.batch_entry in the runner image; Batch returns no payload",
                "Resource": f"arn:{Aws.PARTITION}:states:::batch:submitJob.sync",
                "Parameters": {
                    "JobName.$": "States.Format('{}-{}', $.job_id, $.decision.seq)",
                    "JobQueue": queue.job_queue_arn,  # type: ignore[attr-defined]
                    "JobDefinition": job_definition.job_definition_arn,  # type: ignore[attr-defined]
                    "Parameters": {
                        "job_id.$": "$.job_id",
                        "seq.$": "States.Format('{}', $.decision.seq)",
                        **stage_param,
                    },
                    "ContainerOverrides": {"ResourceRequirements": requirements},
                    "Timeout": {"AttemptDurationSeconds.$": "$.decision.compute.timeout_s"},
                },
                "ResultSelector": {"batch_job_id.$": "$.JobId"},
                "ResultPath": "$.batch",
            },
        )
        _retry(state, retries.BATCH)
        self._catchables.append(state)
        return state

    def _env_build(self, compute: Compute) -> sfn.CustomState:
        """ "Build environment": a Batch submitJob.sync of the environment build on the CPU
        queue; it records the outcome under envs/<hash>/ for "Check environment"."""
        state = sfn.CustomState(
            self,
            BUILD_ENV,
            state_json={
                "Type": "Task",
                "Comment": "qlayer.aws.env_build: install the job's lock with uv, store it",
                "Resource": f"arn:{Aws.PARTITION}:states:::batch:submitJob.sync",
                "Parameters": {
                    "JobName.$": "States.Format('{}-env', $.job_id)",
                    "JobQueue": compute.cpu_queue.job_queue_arn,
                    "JobDefinition": compute.env_build_job.job_definition_arn,
                    "Parameters": {"env.$": f"$.decision.extra.{ENV_BUILD_FIELD}"},
                },
                "ResultSelector": {"batch_job_id.$": "$.JobId"},
                "ResultPath": "$.batch",
            },
        )
        _retry(state, retries.BATCH)
        self._catchables.append(state)
        return state

    def _choice(
        self,
        name: str,
        path: str,
        branches: Mapping[str, sfn.IChainable],
        unroutable: sfn.IChainable,
        *,
        comment: str,
    ) -> sfn.Choice:
        choice = sfn.Choice(self, _construct_id(name), state_name=name, comment=comment)
        choice.when(sfn.Condition.is_not_present(path), unroutable)
        for value, target in branches.items():
            choice.when(sfn.Condition.string_equals(path, value), target)
        return choice.otherwise(unroutable)


def _retry(state: _Retryable, policy: retries.RetryPolicy) -> _Retryable:
    state.add_retry(
        errors=list(policy.errors),
        interval=Duration.seconds(policy.interval_s),
        max_attempts=policy.max_attempts,
        backoff_rate=policy.backoff_rate,
        max_delay=Duration.seconds(policy.max_delay_s),
        jitter_strategy=sfn.JitterType.FULL,
    )
    return state


def _construct_id(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("(", " ").replace(")", " ").split())
