"""AWS Batch for :class:`~qlayer_infra.compute.Compute`: the VPC, compute environments, queues
and job definitions.

Built inside the Compute construct with the construct ids it always had, so the
logical ids (and the deployed resources) stay the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aws_cdk import Duration, Size
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

#: The Batch container command; Ref:: parameters come from SubmitJob's Parameters.
BATCH_COMMAND: tuple[str, ...] = (
    "python",
    "-m",
    "qlayer.aws.batch_entry",
    "--job-id",
    "Ref::job_id",
    "--seq",
    "Ref::seq",
    "--stage",
    "Ref::stage",
)

#: The environment build's command (qlayer.aws.env_build): install one lock, store it.
ENV_BUILD_COMMAND: tuple[str, ...] = ("python", "-m", "qlayer.aws.env_build", "--env", "Ref::env")
#: What one environment build gets: uv is quick, but a source distribution may compile.
ENV_BUILD_SIZE_VCPUS, ENV_BUILD_SIZE_MIB = 2, 4096
#: The build job's timeout (the installer's own is 25 minutes: qlayer.aws.env_build).
ENV_BUILD_TIMEOUT = Duration.minutes(30)

#: Batch accepts JobStateTimeLimitActions.MaxTimeSeconds in this range.
TIME_LIMIT_RANGE_S = (600, 86400)

#: Why a RUNNABLE job can never start: its requirements exceed every instance type, or the
#: compute environment's maxvCpus. Nothing will change by waiting.
UNPLACEABLE_REASONS = (
    batch.JobStateTimeLimitActionsReason.JOB_RESOURCE_REQUIREMENT,
    batch.JobStateTimeLimitActionsReason.COMPUTE_ENVIRONMENT_MAX_RESOURCE,
)
#: EC2 has no capacity for the instance types: it may come back, so this waits longer.
NO_CAPACITY_REASONS = (batch.JobStateTimeLimitActionsReason.INSUFFICIENT_INSTANCE_CAPACITY,)


@dataclass(frozen=True)
class BatchLimits:
    """How long a job may sit RUNNABLE before its queue cancels it.

    Attributes:
        unplaceable_s: When no instance type (or the vCPU ceiling) can ever fit the job.
        no_capacity_s: When EC2 has no capacity for the instance types right now.
    """

    unplaceable_s: int = 600
    no_capacity_s: int = 7200

    def __post_init__(self) -> None:
        low, high = TIME_LIMIT_RANGE_S
        for name in ("unplaceable_s", "no_capacity_s"):
            seconds = getattr(self, name)
            if not low <= seconds <= high:
                raise ValueError(
                    f"Batch RUNNABLE time limit {name}={seconds}: Batch accepts {low}-{high} s"
                )

    def actions(self) -> list[batch.JobStateTimeLimitAction]:
        """The queue's JobStateTimeLimitActions: cancel, with the reason Batch detected."""
        timed = [(r, self.unplaceable_s) for r in UNPLACEABLE_REASONS]
        timed += [(r, self.no_capacity_s) for r in NO_CAPACITY_REASONS]
        return [
            batch.JobStateTimeLimitAction(
                action=batch.JobStateTimeLimitActionsAction.CANCEL,
                max_time=Duration.seconds(after),
                reason=reason,
                state=batch.JobStateTimeLimitActionsState.RUNNABLE,
            )
            for reason, after in timed
        ]


@dataclass(frozen=True)
class JobSize:
    """Default vCPUs / memory (MiB) / GPUs of a job definition (SubmitJob overrides them)."""

    vcpus: int
    memory_mib: int
    gpus: int | None = None


@dataclass
class BatchParts:
    """What :func:`build_batch` made."""

    vpc: ec2.Vpc
    job_role: iam.Role
    cpu_queue: batch.JobQueue
    gpu_queue: batch.JobQueue
    cpu_job: batch.EcsJobDefinition
    gpu_job: batch.EcsJobDefinition
    env_role: iam.Role
    env_job: batch.EcsJobDefinition


def build_batch(
    scope: Construct,
    *,
    env_name: str,
    environment: Mapping[str, str],
    env_build_environment: Mapping[str, str],
    cpu_image: ecr_assets.DockerImageAsset,
    gpu_image: ecr_assets.DockerImageAsset,
    cpu_instance_types: Sequence[str],
    gpu_instance_types: Sequence[str],
    max_cpu_vcpus: int,
    max_gpu_vcpus: int,
    gpu_job: JobSize,
    batch_timeout: Duration,
    limits: BatchLimits,
    log_group: logs.ILogGroup,
    flow_logs: logs.ILogGroup,
) -> BatchParts:
    """The VPC, the CPU and GPU compute environments and queues, and their job definitions.

    ``environment`` is the containers' environment (the ``"batch"`` row of FUNCTION_ENV),
    ``env_build_environment`` the environment build's (its ``"env_build"`` row).
    """
    vpc = ec2.Vpc(
        scope,
        "Vpc",
        max_azs=2,
        nat_gateways=1,
        subnet_configuration=[
            ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
            ec2.SubnetConfiguration(
                name="batch", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
            ),
        ],
        gateway_endpoints={
            "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
            "DynamoDB": ec2.GatewayVpcEndpointOptions(
                service=ec2.GatewayVpcEndpointAwsService.DYNAMODB
            ),
        },
        flow_logs={
            "all": ec2.FlowLogOptions(
                destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                traffic_type=ec2.FlowLogTrafficType.ALL,
            )
        },
    )
    private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

    job_role = iam.Role(
        scope,
        "BatchJobRole",
        assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
        description="qlayer Batch containers: run one stage or one simulation",
    )

    # EC2, not Fargate: the planner sends simulations of up to 240 GiB to the CPU queue,
    # and a stage may ask for any vCPU/memory pair; Fargate stops at 120 GiB and only
    # takes fixed vCPU/memory pairs.
    cpu_env = batch.ManagedEc2EcsComputeEnvironment(
        scope,
        "CpuCompute",
        vpc=vpc,
        vpc_subnets=private,
        **_instances(cpu_instance_types),
        use_optimal_instance_classes=False,
        minv_cpus=0,
        maxv_cpus=max_cpu_vcpus,
        allocation_strategy=batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
    )
    gpu_env = batch.ManagedEc2EcsComputeEnvironment(
        scope,
        "GpuCompute",
        vpc=vpc,
        vpc_subnets=private,
        **_instances(gpu_instance_types),
        use_optimal_instance_classes=False,
        images=[batch.EcsMachineImage(image_type=batch.EcsMachineImageType.ECS_AL2023_NVIDIA)],
        minv_cpus=0,
        maxv_cpus=max_gpu_vcpus,
        allocation_strategy=batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
    )
    queues = {
        kind: batch.JobQueue(
            scope,
            f"{kind}Queue",
            job_queue_name=f"qlayer-{env_name}-{kind.lower()}",
            compute_environments=[batch.OrderedComputeEnvironment(compute_environment=ce, order=1)],
            # A job no instance can place would otherwise wait RUNNABLE forever (and hold
            # its execution in "Run stage on Batch"); cancelled, it fails that state.
            job_state_time_limit_actions=limits.actions(),
        )
        for kind, ce in (("Cpu", cpu_env), ("Gpu", gpu_env))
    }

    parameters = {"job_id": "unset", "seq": "0", "stage": "unset"}
    logging = ecs.LogDriver.aws_logs(stream_prefix="qlayer", log_group=log_group)

    def job_definition(
        kind: str, image: ecr_assets.DockerImageAsset, size: JobSize
    ) -> batch.EcsJobDefinition:
        """One Batch job definition running the stage runner (``kind``: Cpu or Gpu)."""
        return batch.EcsJobDefinition(
            scope,
            f"{kind}Job",
            job_definition_name=f"qlayer-{env_name}-{kind.lower()}",
            parameters=parameters,
            timeout=batch_timeout,
            retry_attempts=1,
            propagate_tags=True,
            container=batch.EcsEc2ContainerDefinition(
                scope,
                f"{kind}Container",
                image=ecs.ContainerImage.from_docker_image_asset(image),
                cpu=size.vcpus,
                memory=Size.mebibytes(size.memory_mib),
                gpu=size.gpus,
                command=list(BATCH_COMMAND),
                environment=dict(environment),
                job_role=job_role,
                logging=logging,
            ),
        )

    # The environment build runs a package installer (code from the index): a role of
    # its own, which may touch envs/* only (qlayer_infra.access.ACCESS["env_build"]).
    env_role = iam.Role(
        scope,
        "EnvBuildRole",
        assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
        description="qlayer environment builds: install one lock, store it under envs/",
    )
    env_job = batch.EcsJobDefinition(
        scope,
        "EnvBuildJob",
        job_definition_name=f"qlayer-{env_name}-env-build",
        parameters={"env": "unset"},
        timeout=ENV_BUILD_TIMEOUT,
        retry_attempts=1,
        propagate_tags=True,
        container=batch.EcsEc2ContainerDefinition(
            scope,
            "EnvBuildContainer",
            image=ecs.ContainerImage.from_docker_image_asset(cpu_image),
            cpu=ENV_BUILD_SIZE_VCPUS,
            memory=Size.mebibytes(ENV_BUILD_SIZE_MIB),
            command=list(ENV_BUILD_COMMAND),
            environment=dict(env_build_environment),
            job_role=env_role,
            logging=logging,
        ),
    )

    return BatchParts(
        vpc=vpc,
        job_role=job_role,
        cpu_queue=queues["Cpu"],
        gpu_queue=queues["Gpu"],
        cpu_job=job_definition("Cpu", cpu_image, JobSize(1, 2048)),
        gpu_job=job_definition("Gpu", gpu_image, gpu_job),
        env_role=env_role,
        env_job=env_job,
    )


def _instances(names: Sequence[str]) -> dict[str, list[ec2.InstanceType] | list[ec2.InstanceClass]]:
    """Compute-environment properties for ``names``: types (``c6i.4xlarge``) and families
    (``c6i``: Batch picks a size)."""
    types = [ec2.InstanceType(n) for n in names if "." in n]
    families = []
    for name in (n for n in names if "." not in n):
        try:
            families.append(ec2.InstanceClass[name.upper()])
        except KeyError:
            raise ValueError(f"instance family {name!r} is not an EC2 instance class") from None
    return {"instance_types": types, "instance_classes": families}
