"""QlayerStack: the whole AWS substrate, composed from one construct per component."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from constructs import Construct

from qlayer.aws import config
from qlayer_infra import access, nag
from qlayer_infra.batch import BatchLimits
from qlayer_infra.compute import (
    BATCH,
    DEFAULT_CPU_INSTANCE_TYPES,
    DEFAULT_GPU_INSTANCE_TYPES,
    ENV_BUILD,
    Compute,
    function_timeout_s,
)
from qlayer_infra.dispatch import Dispatch
from qlayer_infra.gateway import DEFAULT_BURST_LIMIT, DEFAULT_RATE_LIMIT, Gateway
from qlayer_infra.ops import Ops
from qlayer_infra.storage import INBOX_PREFIX, Storage
from qlayer_infra.workflow import DEFAULT_DISTRIBUTED_CONCURRENCY, JobWorkflow, state_machine_arn

_ENV_NAME = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
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
        env[config.PROVIDERS_ENV] = ",".join(specs)
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
        env[config.RATE_LIMITS_ENV] = json.dumps(table, sort_keys=True, separators=(",", ":"))
    return env


class QlayerStack(Stack):
    """qlayer on AWS: artifacts, job tables, the job state machine, QPU dispatch, Batch, alarms.

    Keyword-only properties (environments differ by arguments, not by if/else):

    Args:
        env_name: Short lowercase name (``dev``, ``prod``) used in resource names.
        qpu_heartbeat_s: "Wait for QPU" fails if no heartbeat arrives for this long (the
            poller sends one per poll).
        qpu_timeout_s: "Wait for QPU" fails after this long in total (default 7 days).
        gpu_instance_types: EC2 instance types (or families) of the GPU compute environment;
            each must be one :mod:`qlayer_infra.instances` knows the size of.
        cpu_instance_types: EC2 instance types or families of the CPU compute environment.
        stage_memory_mb: Memory of the stage-runner Lambda (stages with compute="lambda").
        simulator_memory_mb: Memory of the simulator Lambda (planner tier "lambda").
        stage_tmp_mb: The stage-runner Lambda's /tmp (512-10240 MiB), where it unpacks
            jobs' environments; a job whose environment does not fit runs its Lambda
            stages on Batch (``qlayer.planner.env_on_lambda``).
        max_cpu_vcpus, max_gpu_vcpus: Batch compute environment ceilings.
        providers_secret_name: Secrets Manager name of the provider settings; default
            ``qlayer/<env>/providers-<id>``, unique to the stack (the secret is retained).
        removal_policy: RETAIN for data (default); DESTROY for throwaway test stacks.
        provider_plugins: Extra QPU providers, ``prefix=module:factory[,...]`` (see
            ``qlayer.providers.registry``); sets ``QLAYER_PROVIDERS`` on the stage runner,
            simulator, dispatcher, poller and Batch. The modules must be in the runner image.
        rate_limits: Dispatch limits by backend or prefix, e.g.
            ``{"ibm": {"max_in_flight": 3, "submits_per_s": 0.08}}``; sets
            ``QLAYER_RATE_LIMITS`` (JSON) on the same.
        max_distributed_concurrency: Child jobs a Distributed Map fan-out runs at once
            (default 250: see ``qlayer_infra.workflow.DEFAULT_DISTRIBUTED_CONCURRENCY``).
        batch_unplaceable_timeout_s: A Batch job no instance type or vCPU ceiling can ever
            fit is cancelled after this long RUNNABLE (600-86400; default 600).
        batch_no_capacity_timeout_s: A Batch job waiting for EC2 capacity is cancelled after
            this long RUNNABLE (600-86400; default 7200).
        braket_regions: Regions besides the stack's whose Amazon Braket devices jobs may use
            (each QPU lives in one region, e.g. ``["us-west-1", "eu-north-1"]``).
        gateway_rate_limit, gateway_burst_limit: Requests per second and burst the Qiskit
            Serverless gateway's API stage accepts (then 429 Too Many Requests).

    Raises:
        ValueError: A property out of range, a malformed plugin list or limit, or an
            instance type whose size is unknown (synthesis stops with the reason).
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
        stage_tmp_mb: int = 2048,
        max_cpu_vcpus: int = 256,
        max_gpu_vcpus: int = 96,
        providers_secret_name: str | None = None,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
        provider_plugins: str | None = None,
        rate_limits: Mapping[str, Mapping[str, float]] | None = None,
        max_distributed_concurrency: int = DEFAULT_DISTRIBUTED_CONCURRENCY,
        batch_unplaceable_timeout_s: int = 600,
        batch_no_capacity_timeout_s: int = 7200,
        braket_regions: Sequence[str] = (),
        gateway_rate_limit: float = DEFAULT_RATE_LIMIT,
        gateway_burst_limit: int = DEFAULT_BURST_LIMIT,
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
        bad_regions = [r for r in braket_regions if not _REGION.match(r)]
        if bad_regions or isinstance(braket_regions, str):
            raise ValueError(
                f"braket_regions {braket_regions!r}: give a list of region names like 'us-west-1'"
            )
        batch_limits = BatchLimits(
            unplaceable_s=batch_unplaceable_timeout_s, no_capacity_s=batch_no_capacity_timeout_s
        )
        super().__init__(scope, construct_id, description=f"qlayer ({env_name})", **kwargs)

        storage = Storage(self, "Storage", env_name=env_name, removal_policy=removal_policy)
        ops = Ops(
            self,
            "Ops",
            env_name=env_name,
            secret_name=providers_secret_name,
            removal_policy=removal_policy,
        )
        dispatch = Dispatch(
            self,
            "Dispatch",
            dispatcher_timeout=Duration.seconds(function_timeout_s("dispatcher")),
            key=ops.key,
        )
        gateway = Gateway(
            self,
            "Gateway",
            env_name=env_name,
            key=ops.key,
            rate_limit=gateway_rate_limit,
            burst_limit=gateway_burst_limit,
            removal_policy=removal_policy,
        )
        # Every value a function's environment may hold; each function takes its row of
        # qlayer.aws.config.FUNCTION_ENV (Compute adds QLAYER_RESOURCES and the names).
        environment = {
            config.BUCKET_ENV: storage.bucket.bucket_name,
            config.JOBS_TABLE_ENV: storage.jobs.table_name,
            config.TASKS_TABLE_ENV: storage.tasks.table_name,
            config.STATE_MACHINE_ARN_ENV: state_machine_arn(self, env_name),
            config.DISPATCH_QUEUE_URL_ENV: dispatch.queue.queue_url,
            config.PROVIDERS_SECRET_ARN_ENV: ops.providers_secret.secret_arn,
            config.BRAKET_BUCKET_ENV: storage.braket_results.bucket_name,
            config.GATEWAY_TOKEN_SECRET_ARN_ENV: gateway.token.secret_arn,
            **provider_env,
        }
        compute = Compute(
            self,
            "Compute",
            env_name=env_name,
            key=ops.key,
            environment=environment,
            stage_memory_mb=stage_memory_mb,
            simulator_memory_mb=simulator_memory_mb,
            stage_tmp_mb=stage_tmp_mb,
            cpu_instance_types=cpu_instance_types,
            gpu_instance_types=gpu_instance_types,
            max_cpu_vcpus=max_cpu_vcpus,
            max_gpu_vcpus=max_gpu_vcpus,
            batch_limits=batch_limits,
            removal_policy=removal_policy,
        )
        fns = compute.functions
        dispatch.connect(dispatcher=fns["dispatcher"], poller=fns["poller"])
        gateway.connect(function=fns["gateway"])
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
            max_distributed_concurrency=max_distributed_concurrency,
            removal_policy=removal_policy,
        )
        machine = workflow.state_machine
        ops.add_alarms(dlq=dispatch.dlq, state_machine=machine)
        ops.add_job_events(state_machine=machine)

        # An upload to inbox/*.json starts a job.
        storage.bucket.add_event_notification(
            s3.EventType.OBJECT_CREATED,
            s3n.LambdaDestination(fns["trigger"]),
            s3.NotificationKeyFilter(prefix=INBOX_PREFIX, suffix=".json"),
        )
        access.grant_all(
            principals={
                **fns,
                BATCH: compute.batch_job_role,
                ENV_BUILD: compute.env_build_role,
            },
            bucket=storage.bucket,
            jobs=storage.jobs,
            tasks=storage.tasks,
            braket_results=storage.braket_results,
            secret=ops.providers_secret,
            dispatch_queue=dispatch.queue,
            state_machine=machine,
            state_machine_name=workflow.name,
            gateway_token=gateway.token,
            braket_regions=braket_regions,
        )
        nag.acknowledge(
            self,
            storage=storage,
            compute=compute,
            workflow=workflow,
            dispatch=dispatch,
            gateway=gateway,
            braket_regions=braket_regions,
        )

        self.gateway = gateway
        self.storage, self.ops, self.compute, self.dispatch, self.workflow = (
            storage,
            ops,
            compute,
            dispatch,
            workflow,
        )
        self._outputs(
            storage=storage,
            ops=ops,
            compute=compute,
            dispatch=dispatch,
            workflow=workflow,
            gateway=gateway,
        )

    def _outputs(
        self,
        *,
        storage: Storage,
        ops: Ops,
        compute: Compute,
        dispatch: Dispatch,
        workflow: JobWorkflow,
        gateway: Gateway,
    ) -> None:
        """The names a client (qlayer.aws.config.STACK_OUTPUTS) and an operator need."""
        machine = workflow.state_machine
        region = Stack.of(self).region
        outputs = {
            "BucketName": (storage.bucket.bucket_name, "Artifacts bucket"),
            "StateMachineArn": (machine.state_machine_arn, "Job state machine"),
            "JobsTableName": (storage.jobs.table_name, "Jobs table"),
            "TasksTableName": (storage.tasks.table_name, "QPU tasks table"),
            "DispatchQueueUrl": (dispatch.queue.queue_url, "QPU dispatch queue"),
            "ProvidersSecretArn": (
                ops.providers_secret.secret_arn,
                "Provider settings (JSON): put the IBM Quantum token here",
            ),
            "ProvidersSecretName": (ops.providers_secret.secret_name, "Provider settings"),
            "JobEventsTopicArn": (
                ops.job_events.topic_arn,
                "One message per finished job: subscribe to hear when jobs end",
            ),
            "BraketResultsBucketName": (
                storage.braket_results.bucket_name,
                "Where Amazon Braket writes task results",
            ),
            "StateMachineLogGroupName": (
                workflow.log_group.log_group_name,
                "Execution history of the job state machine",
            ),
            "Resources": (
                compute.resources.to_json(),
                "What one stage or simulation can get here (QLAYER_RESOURCES)",
            ),
            "GatewayUrl": (
                gateway.api.url if gateway.api else "",
                "Qiskit Serverless gateway: ServerlessClient(host=<this>, token=...)",
            ),
            "GatewayTokenSecretArn": (
                gateway.token.secret_arn,
                "The gateway's bearer token (Secrets Manager): ServerlessClient(token=...)",
            ),
            "StateMachineConsoleUrl": (
                f"https://{region}.console.aws.amazon.com/states/home?region={region}"
                f"#/statemachines/view/{machine.state_machine_arn}",
                "Watch jobs here",
            ),
        }
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)
