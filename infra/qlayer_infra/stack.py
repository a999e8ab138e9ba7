"""QlayerStack: the whole AWS substrate, composed from one construct per component."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from constructs import Construct

from qlayer_infra import nag
from qlayer_infra.compute import DEFAULT_CPU_INSTANCE_TYPES, DEFAULT_GPU_INSTANCE_TYPES, Compute
from qlayer_infra.dispatch import Dispatch
from qlayer_infra.ops import PROVIDERS_SECRET_NAME, Ops
from qlayer_infra.storage import INBOX_PREFIX, JOBS_PREFIX, PROGRAMS_PREFIX, Storage
from qlayer_infra.workflow import JobWorkflow

_ENV_NAME = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
#: One provider plugin: ``[prefix=]module.path:factory`` or ``[prefix=]/path/file.py:factory``.
_PLUGIN = re.compile(r"^(?:[a-z][a-z0-9_]*=)?[^\s,=:]+:[A-Za-z_][A-Za-z0-9_]*$")


def provider_settings(
    provider_plugins: str | None, rate_limits: Mapping[str, Mapping[str, float]] | None
) -> dict[str, str]:
    """``QLAYER_PROVIDERS`` / ``QLAYER_RATE_LIMITS`` for the functions that resolve backends.

    Raises:
        ValueError: A plugin not of the form ``prefix=module:factory``, or limits that are
            not ``{name: {limit: positive number}}``.
    """
    env: dict[str, str] = {}
    if provider_plugins is not None:
        specs = [p.strip() for p in provider_plugins.split(",")]
        bad = [p for p in specs if not _PLUGIN.match(p)]
        if not specs or bad:
            raise ValueError(
                f"provider_plugins {provider_plugins!r}: give a comma-separated list of "
                "prefix=module.path:factory (e.g. 'myqpu=my_company.qlayer_plugin:MyQpu')"
            )
        env["QLAYER_PROVIDERS"] = ",".join(specs)
    if rate_limits is not None:
        table: dict[str, dict[str, float]] = {}
        for name, limits in rate_limits.items():
            if not isinstance(name, str) or not name or not isinstance(limits, Mapping):
                raise ValueError(
                    f"rate_limits: {name!r} must name a backend or prefix and map to "
                    '{"max_in_flight": 3, "submits_per_s": 0.08, ...}'
                )
            for key, value in limits.items():
                number = value if isinstance(value, int | float) else math.nan
                if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
                    raise ValueError(
                        f"rate_limits[{name!r}][{key!r}] = {value!r}: use a positive number"
                    )
            table[name] = dict(limits)
        env["QLAYER_RATE_LIMITS"] = json.dumps(table, sort_keys=True, separators=(",", ":"))
    return env


class QlayerStack(Stack):
    """qlayer on AWS: artifacts, job tables, the job state machine, QPU dispatch, Batch, alarms.

    Keyword-only properties (environments differ by arguments, not by if/else):

    Args:
        env_name: Short lowercase name (``dev``, ``prod``) used in resource names.
        qpu_heartbeat_s: "Wait for QPU" fails if no heartbeat arrives for this long (the
            poller sends one per poll).
        qpu_timeout_s: "Wait for QPU" fails after this long in total (default 7 days).
        gpu_instance_types: EC2 instance types of the GPU compute environment.
        cpu_instance_types: EC2 instance types or families of the CPU compute environment.
        stage_memory_mb: Memory of the stage-runner Lambda (stages with compute="lambda").
        simulator_memory_mb: Memory of the simulator Lambda (planner tier "lambda").
        max_cpu_vcpus, max_gpu_vcpus: Batch compute environment ceilings.
        providers_secret_name: Secrets Manager name of the provider settings.
        provider_plugins: Extra QPU providers, ``prefix=module:factory[,...]`` (see
            ``qlayer.providers.registry``); sets ``QLAYER_PROVIDERS`` on the stage runner,
            simulator, dispatcher, poller and Batch. The modules must be in the runner image.
        rate_limits: Dispatch limits by backend or prefix, e.g.
            ``{"ibm": {"max_in_flight": 3, "submits_per_s": 0.08}}``; sets
            ``QLAYER_RATE_LIMITS`` (JSON) on the same.
        removal_policy: RETAIN for data (default); DESTROY for throwaway test stacks.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_name: str = "dev",
        qpu_heartbeat_s: int = 3600,
        qpu_timeout_s: int = 7 * 24 * 3600,
        gpu_instance_types: Sequence[str] = DEFAULT_GPU_INSTANCE_TYPES,
        cpu_instance_types: Sequence[str] = DEFAULT_CPU_INSTANCE_TYPES,
        stage_memory_mb: int = 4096,
        simulator_memory_mb: int = 10240,
        max_cpu_vcpus: int = 256,
        max_gpu_vcpus: int = 96,
        providers_secret_name: str = PROVIDERS_SECRET_NAME,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
        provider_plugins: str | None = None,
        rate_limits: Mapping[str, Mapping[str, float]] | None = None,
        **kwargs,
    ) -> None:
        if not _ENV_NAME.match(env_name):
            raise ValueError(
                f"env_name {env_name!r}: use 1-12 lowercase letters, digits or '-', starting "
                "with a letter (it becomes part of bucket, queue and state machine names)"
            )
        if qpu_heartbeat_s <= 0 or qpu_timeout_s < qpu_heartbeat_s:
            raise ValueError(
                f"qpu_heartbeat_s={qpu_heartbeat_s}, qpu_timeout_s={qpu_timeout_s}: the heartbeat "
                "must be positive and no longer than the timeout"
            )
        provider_env = provider_settings(provider_plugins, rate_limits)
        super().__init__(scope, construct_id, description=f"qlayer ({env_name})", **kwargs)

        storage = Storage(self, "Storage", env_name=env_name, removal_policy=removal_policy)
        ops = Ops(
            self,
            "Ops",
            env_name=env_name,
            secret_name=providers_secret_name,
            removal_policy=removal_policy,
        )
        compute = Compute(
            self,
            "Compute",
            env_name=env_name,
            storage=storage,
            key=ops.key,
            stage_memory_mb=stage_memory_mb,
            simulator_memory_mb=simulator_memory_mb,
            cpu_instance_types=cpu_instance_types,
            gpu_instance_types=gpu_instance_types,
            max_cpu_vcpus=max_cpu_vcpus,
            max_gpu_vcpus=max_gpu_vcpus,
            provider_env=provider_env,
            removal_policy=removal_policy,
        )
        fns = compute.functions
        dispatch = Dispatch(
            self,
            "Dispatch",
            dispatcher=fns["dispatcher"],
            dispatcher_timeout=fns["dispatcher"].timeout or Duration.minutes(2),
            poller=fns["poller"],
            key=ops.key,
        )
        workflow = JobWorkflow(
            self,
            "Workflow",
            env_name=env_name,
            compute=compute,
            bucket=storage.bucket,
            dispatch_queue=dispatch.queue,
            key=ops.key,
            qpu_heartbeat=Duration.seconds(qpu_heartbeat_s),
            qpu_timeout=Duration.seconds(qpu_timeout_s),
            removal_policy=removal_policy,
        )
        machine = workflow.state_machine
        ops.add_alarms(dlq=dispatch.dlq, state_machine=machine)

        self._grant(storage=storage, ops=ops, compute=compute, dispatch=dispatch, workflow=workflow)
        nag.acknowledge(
            self, storage=storage, compute=compute, workflow=workflow, dispatch=dispatch
        )

        self.storage, self.ops, self.compute, self.dispatch, self.workflow = (
            storage,
            ops,
            compute,
            dispatch,
            workflow,
        )

        region = Stack.of(self).region
        CfnOutput(
            self, "BucketName", value=storage.bucket.bucket_name, description="Artifacts bucket"
        )
        CfnOutput(
            self,
            "StateMachineArn",
            value=machine.state_machine_arn,
            description="Job state machine",
        )
        CfnOutput(self, "JobsTableName", value=storage.jobs.table_name, description="Jobs table")
        CfnOutput(
            self, "TasksTableName", value=storage.tasks.table_name, description="QPU tasks table"
        )
        CfnOutput(
            self,
            "DispatchQueueUrl",
            value=dispatch.queue.queue_url,
            description="QPU dispatch queue",
        )
        CfnOutput(
            self,
            "StateMachineConsoleUrl",
            value=f"https://{region}.console.aws.amazon.com/states/home?region={region}"
            f"#/statemachines/view/{machine.state_machine_arn}",
            description="Watch jobs here",
        )

    def _grant(
        self,
        *,
        storage: Storage,
        ops: Ops,
        compute: Compute,
        dispatch: Dispatch,
        workflow: JobWorkflow,
    ) -> None:
        """Least privilege: each function gets only what its step needs."""
        fns = compute.functions
        bucket, jobs, tasks = storage.bucket, storage.jobs, storage.tasks
        machine = workflow.state_machine
        jobs_objects = f"{JOBS_PREFIX}*"

        # trigger: an upload to inbox/*.json starts a job.
        # It reads the spec (and a .py it names, under inbox/ or programs/), uploads the
        # program bundle, writes the job's inputs, and reports next to the spec.
        trigger = fns["trigger"]
        bucket.grant_read(trigger, f"{INBOX_PREFIX}*")
        bucket.grant_put(trigger, f"{INBOX_PREFIX}*")
        bucket.grant_read(trigger, f"{PROGRAMS_PREFIX}*")
        bucket.grant_put(trigger, f"{PROGRAMS_PREFIX}*")
        bucket.grant_put(trigger, jobs_objects)
        jobs.grant_read_write_data(trigger)
        machine.grant_start_execution(trigger)
        trigger.add_environment("QLAYER_STATE_MACHINE_ARN", machine.state_machine_arn)
        bucket.add_event_notification(
            s3.EventType.OBJECT_CREATED,
            s3n.LambdaDestination(trigger),
            s3.NotificationKeyFilter(prefix=INBOX_PREFIX, suffix=".json"),
        )

        # steps of the state machine: read the job's artifacts and the program, write the job's.
        for name in ("loader", "stage_runner", "start_children"):
            bucket.grant_read(fns[name], f"{PROGRAMS_PREFIX}*")
        for name in (
            "loader",
            "stage_runner",
            "simulator",
            "read_outcome",
            "start_children",
            "fan_in",
            "finaliser",
            "fail_job",
            "dispatcher",
            "poller",
        ):
            bucket.grant_read_write(fns[name], jobs_objects)
            jobs.grant_read_write_data(fns[name])
        bucket.grant_read_write(compute.batch_job_role, jobs_objects)
        bucket.grant_read(compute.batch_job_role, f"{PROGRAMS_PREFIX}*")
        jobs.grant_read_write_data(compute.batch_job_role)

        # finaliser and fail_job: a job started from an inbox spec gets its outcome next to it.
        for name in ("finaliser", "fail_job"):
            bucket.grant_put(fns[name], f"{INBOX_PREFIX}*")

        # fail_job: also cancels the provider job of a stopped execution through the dispatcher.
        dispatch.queue.grant_send_messages(fns["fail_job"])
        fns["fail_job"].add_environment("QLAYER_DISPATCH_QUEUE_URL", dispatch.queue.queue_url)

        # dispatcher and poller: the provider secret, the task table, task tokens, Braket.
        for name in ("dispatcher", "poller"):
            fn = fns[name]
            ops.providers_secret.grant_read(fn)
            tasks.grant_read_write_data(fn)
            machine.grant_task_response(fn)
            storage.braket_results.grant_read_write(fn)
            fn.add_environment("QLAYER_PROVIDERS_SECRET_ARN", ops.providers_secret.secret_arn)
            fn.add_environment("QLAYER_BRAKET_BUCKET", storage.braket_results.bucket_name)
            fn.add_to_role_policy(
                iam.PolicyStatement(
                    actions=[
                        "braket:GetDevice",
                        "braket:SearchDevices",
                        "braket:GetQuantumTask",
                        "braket:CancelQuantumTask",
                    ]
                    + (["braket:CreateQuantumTask"] if name == "dispatcher" else []),
                    resources=["*"],
                )
            )
        # The stage runner checks backend names when a stage returns Execute: it must know
        # that remote providers are configured (the ARN only; it cannot read the secret).
        fns["stage_runner"].add_environment(
            "QLAYER_PROVIDERS_SECRET_ARN", ops.providers_secret.secret_arn
        )
