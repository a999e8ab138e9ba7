"""Where code runs: the Lambda functions, the light layer, the runner images and AWS Batch.

Two kinds of Lambda function:

* light (zip + the layer built by ``layers/light/build.sh``): handlers that only
  move pointers and records; they import ``qlayer`` without qiskit;
* image (``layers/runner/Dockerfile``): handlers that import qiskit, Aer or a
  provider SDK; qiskit + qiskit-aer + scipy do not fit the 250 MB zip limit.

Batch runs the same image (x86_64) with ``python -m qlayer.aws.batch_entry``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Size
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from qlayer_infra import REPO_ROOT
from qlayer_infra.storage import Storage

#: Handlers in functions/<name>/app.py that run from the zip + light layer.
LIGHT_FUNCTIONS: tuple[str, ...] = (
    "trigger",
    "loader",
    "read_outcome",
    "start_children",
    "fan_in",
    "finaliser",
    "fail_job",
)
#: Handlers that import qiskit / Aer / provider SDKs, run from the runner image.
IMAGE_FUNCTIONS: tuple[str, ...] = ("stage_runner", "simulator", "dispatcher", "poller")
#: Functions that resolve backend names (and Batch): they get QLAYER_PROVIDERS / _RATE_LIMITS.
PROVIDER_ENV_FUNCTIONS: frozenset[str] = frozenset(IMAGE_FUNCTIONS)

LIGHT_LAYER_DIR = REPO_ROOT / "layers" / "light"
LAYER_STAMP = ".sources.json"
RUNNER_DOCKERFILE = "layers/runner/Dockerfile"
RUNNER_GPU_DOCKERFILE = "layers/runner-gpu/Dockerfile"

#: What the runner images are built from: the library, the handlers, the Dockerfiles.
#: Everything else in the repository (virtualenvs, node_modules, cdk.out) stays out.
IMAGE_CONTEXT_EXCLUDE: tuple[str, ...] = (
    "*",
    "!pyproject.toml",
    "!README.md",
    "!LICENSE",
    "!qlayer",
    "!functions",
    "!layers/runner",
    "!layers/runner-gpu",
    "**/__pycache__",
    "**/*.pyc",
)

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

DEFAULT_CPU_INSTANCE_TYPES: tuple[str, ...] = (
    "c6i.2xlarge",
    "c6i.4xlarge",
    "m6i.2xlarge",
    "m6i.4xlarge",
    "r6i.2xlarge",
    "r6i.4xlarge",
    "r6i.8xlarge",
)
DEFAULT_GPU_INSTANCE_TYPES: tuple[str, ...] = (
    "g5.xlarge",
    "g5.2xlarge",
    "g5.12xlarge",
    "p4d.24xlarge",
)

_TIMEOUTS_S = {
    "stage_runner": 900,
    "simulator": 900,
    "dispatcher": 120,
    "poller": 300,
    "trigger": 60,
}
_DEFAULT_TIMEOUT_S = 60


def _digest(paths: Sequence[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # an editor's temporary file, gone since the listing
            continue
        sha.update(str(path.relative_to(REPO_ROOT)).encode())
        sha.update(data)
    return sha.hexdigest()


def light_layer_sources() -> dict[str, str]:
    """Digests of what the light layer is built from: its requirements and the qlayer package."""
    deps = [LIGHT_LAYER_DIR / "requirements.txt", LIGHT_LAYER_DIR / "build.sh"]
    code = [
        REPO_ROOT / "pyproject.toml",
        *sorted(
            p
            for p in (REPO_ROOT / "qlayer").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ),
    ]
    return {"deps": _digest(deps), "code": _digest(code)}


def ensure_light_layer() -> str:
    """Return the folder of the built light layer, (re)building it if absent or stale.

    The build stamps ``build/.sources.json`` with :func:`light_layer_sources`: a changed
    requirements list rebuilds everything, a changed ``qlayer/`` refreshes only qlayer.
    A lock file serialises builds between processes (two test runs, a synth and a test).
    """
    built = LIGHT_LAYER_DIR / "build"
    stamp = built / LAYER_STAMP
    want = light_layer_sources()
    repo_tag = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"qlayer-light-layer-{repo_tag}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        have = json.loads(stamp.read_text()) if stamp.is_file() else {}
        if not (built / "python").is_dir() or have.get("deps") != want["deps"]:
            args = []
        elif have.get("code") != want["code"]:
            args = ["--code-only"]
        else:
            return str(built)
        env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
        script = str(LIGHT_LAYER_DIR / "build.sh")
        subprocess.run(["bash", script, *args], check=True, cwd=REPO_ROOT, env=env)
        stamp.write_text(json.dumps(want))
    return str(built)


def function_dir(name: str) -> str:
    """The asset folder of handler ``name`` (``functions/<name>``)."""
    path = REPO_ROOT / "functions" / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is missing: every handler lives in functions/<name>/app.py"
        )
    return str(path)


class Compute(Construct):
    """Lambda functions, the light layer, the runner images and the Batch queues.

    Attributes:
        functions: Every handler by name (see LIGHT_FUNCTIONS, IMAGE_FUNCTIONS).
        vpc: Two AZs; Batch runs in its private subnets.
        cpu_queue, gpu_queue: Batch job queues (EC2 c6i/m6i/r6i; EC2 g5/p4d GPU instances).
        cpu_job, gpu_job: Batch job definitions running ``qlayer.aws.batch_entry``.
        batch_job_role: The role Batch containers run as.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        env_name: str,
        storage: Storage,
        key: kms.IKey,
        stage_memory_mb: int = 4096,
        simulator_memory_mb: int = 10240,
        cpu_instance_types: Sequence[str] = DEFAULT_CPU_INSTANCE_TYPES,
        gpu_instance_types: Sequence[str] = DEFAULT_GPU_INSTANCE_TYPES,
        max_cpu_vcpus: int = 256,
        max_gpu_vcpus: int = 96,
        batch_timeout: Duration = Duration.hours(12),
        provider_env: Mapping[str, str] | None = None,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, id)
        self._key = key
        self._log_retention = log_retention
        self._removal_policy = removal_policy
        environment = {
            "QLAYER_ENV": env_name,
            "QLAYER_SUBSTRATE": "aws",
            "QLAYER_BUCKET": storage.bucket.bucket_name,
            "QLAYER_JOBS_TABLE": storage.jobs.table_name,
            "QLAYER_TASKS_TABLE": storage.tasks.table_name,
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        provider_env = dict(provider_env or {})

        self.layer = lambda_.LayerVersion(
            self,
            "LightLayer",
            code=lambda_.Code.from_asset(ensure_light_layer(), exclude=[LAYER_STAMP]),
            compatible_runtimes=[lambda_.Runtime.PYTHON_3_11],
            compatible_architectures=[lambda_.Architecture.X86_64],
            description="qlayer (no qiskit) + boto3 + aws-lambda-powertools + pydantic",
        )
        self.runner_image = ecr_assets.DockerImageAsset(
            self,
            "RunnerImage",
            directory=str(REPO_ROOT),
            file=RUNNER_DOCKERFILE,
            exclude=list(IMAGE_CONTEXT_EXCLUDE),
            platform=ecr_assets.Platform.LINUX_AMD64,
        )
        self.runner_gpu_image = ecr_assets.DockerImageAsset(
            self,
            "RunnerGpuImage",
            directory=str(REPO_ROOT),
            file=RUNNER_GPU_DOCKERFILE,
            exclude=list(IMAGE_CONTEXT_EXCLUDE),
            platform=ecr_assets.Platform.LINUX_AMD64,
        )

        memory = {"stage_runner": stage_memory_mb, "simulator": simulator_memory_mb}
        self.functions: dict[str, lambda_.Function] = {}
        for name in LIGHT_FUNCTIONS:
            self.functions[name] = lambda_.Function(
                self,
                _camel(name),
                runtime=lambda_.Runtime.PYTHON_3_11,
                architecture=lambda_.Architecture.X86_64,
                handler="app.lambda_handler",
                code=lambda_.Code.from_asset(
                    function_dir(name), exclude=["**/__pycache__", "**/*.pyc"]
                ),
                layers=[self.layer],
                memory_size=memory.get(name, 512),
                timeout=Duration.seconds(_TIMEOUTS_S.get(name, _DEFAULT_TIMEOUT_S)),
                tracing=lambda_.Tracing.ACTIVE,
                environment={
                    **environment,
                    "QLAYER_FUNCTION": name,
                    "POWERTOOLS_SERVICE_NAME": f"qlayer-{name}",
                },
                log_group=self._log_group(name),
                description=f"qlayer {env_name}: {name}",
            )
        for name in IMAGE_FUNCTIONS:
            self.functions[name] = lambda_.DockerImageFunction(
                self,
                _camel(name),
                code=lambda_.DockerImageCode.from_image_asset(
                    str(REPO_ROOT),
                    file=RUNNER_DOCKERFILE,
                    exclude=list(IMAGE_CONTEXT_EXCLUDE),
                    platform=ecr_assets.Platform.LINUX_AMD64,
                    entrypoint=["python", "-m", "awslambdaric"],
                    cmd=[f"functions.{name}.app.lambda_handler"],
                ),
                architecture=lambda_.Architecture.X86_64,
                memory_size=memory.get(name, 1024),
                timeout=Duration.seconds(_TIMEOUTS_S.get(name, _DEFAULT_TIMEOUT_S)),
                tracing=lambda_.Tracing.ACTIVE,
                environment={
                    **environment,
                    **(provider_env if name in PROVIDER_ENV_FUNCTIONS else {}),
                    "QLAYER_FUNCTION": name,
                    "POWERTOOLS_SERVICE_NAME": f"qlayer-{name}",
                },
                log_group=self._log_group(name),
                description=f"qlayer {env_name}: {name} (runner image)",
            )

        self._batch(
            env_name=env_name,
            storage=storage,
            environment={**environment, **provider_env},
            cpu_instance_types=cpu_instance_types,
            gpu_instance_types=gpu_instance_types,
            max_cpu_vcpus=max_cpu_vcpus,
            max_gpu_vcpus=max_gpu_vcpus,
            batch_timeout=batch_timeout,
        )

    def _log_group(self, name: str) -> logs.LogGroup:
        return logs.LogGroup(
            self,
            f"{_camel(name)}Logs",
            retention=self._log_retention,
            encryption_key=self._key,
            removal_policy=self._removal_policy,
        )

    def _batch(
        self,
        *,
        env_name: str,
        storage: Storage,
        environment: dict[str, str],
        cpu_instance_types: Sequence[str],
        gpu_instance_types: Sequence[str],
        max_cpu_vcpus: int,
        max_gpu_vcpus: int,
        batch_timeout: Duration,
    ) -> None:
        flow_logs = logs.LogGroup(
            self,
            "VpcFlowLogs",
            retention=self._log_retention,
            encryption_key=self._key,
            removal_policy=self._removal_policy,
        )
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=1,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                ),
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

        self.batch_job_role = iam.Role(
            self,
            "BatchJobRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="qlayer Batch containers: run one stage or one simulation",
        )
        batch_logs = logs.LogGroup(
            self,
            "BatchLogs",
            retention=self._log_retention,
            encryption_key=self._key,
            removal_policy=self._removal_policy,
        )

        # EC2, not Fargate: the planner sends simulations of up to 240 GiB to the CPU queue,
        # and a stage may ask for any vCPU/memory pair; Fargate stops at 120 GiB and only
        # takes fixed vCPU/memory pairs.
        cpu_env = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "CpuCompute",
            vpc=self.vpc,
            vpc_subnets=private,
            instance_types=[ec2.InstanceType(name) for name in cpu_instance_types],
            use_optimal_instance_classes=False,
            minv_cpus=0,
            maxv_cpus=max_cpu_vcpus,
            allocation_strategy=batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
        )
        self.cpu_queue = batch.JobQueue(
            self,
            "CpuQueue",
            job_queue_name=f"qlayer-{env_name}-cpu",
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=cpu_env, order=1)
            ],
        )
        gpu_env = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "GpuCompute",
            vpc=self.vpc,
            vpc_subnets=private,
            instance_types=[ec2.InstanceType(name) for name in gpu_instance_types],
            use_optimal_instance_classes=False,
            images=[batch.EcsMachineImage(image_type=batch.EcsMachineImageType.ECS_AL2023_NVIDIA)],
            minv_cpus=0,
            maxv_cpus=max_gpu_vcpus,
            allocation_strategy=batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
        )
        self.gpu_queue = batch.JobQueue(
            self,
            "GpuQueue",
            job_queue_name=f"qlayer-{env_name}-gpu",
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=gpu_env, order=1)
            ],
        )

        batch_env = {**environment, "POWERTOOLS_SERVICE_NAME": "qlayer-batch"}
        parameters = {"job_id": "unset", "seq": "0", "stage": "unset"}
        logging = ecs.LogDriver.aws_logs(stream_prefix="qlayer", log_group=batch_logs)

        def job_definition(
            kind: str,
            image: ecr_assets.DockerImageAsset,
            *,
            cpu: int,
            memory_gib: int,
            gpu: int | None = None,
        ) -> batch.EcsJobDefinition:
            """One Batch job definition running the stage runner (``kind``: Cpu or Gpu)."""
            return batch.EcsJobDefinition(
                self,
                f"{kind}Job",
                job_definition_name=f"qlayer-{env_name}-{kind.lower()}",
                parameters=parameters,
                timeout=batch_timeout,
                retry_attempts=1,
                propagate_tags=True,
                container=batch.EcsEc2ContainerDefinition(
                    self,
                    f"{kind}Container",
                    image=ecs.ContainerImage.from_docker_image_asset(image),
                    cpu=cpu,
                    memory=Size.gibibytes(memory_gib),
                    gpu=gpu,
                    command=list(BATCH_COMMAND),
                    environment=batch_env,
                    job_role=self.batch_job_role,
                    logging=logging,
                ),
            )

        self.cpu_job = job_definition("Cpu", self.runner_image, cpu=1, memory_gib=2)
        self.gpu_job = job_definition("Gpu", self.runner_gpu_image, cpu=4, memory_gib=15, gpu=1)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))
