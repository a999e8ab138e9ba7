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
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from qlayer.aws.config import (
    FUNCTION_ENV,
    FUNCTION_NAME_ENV,
    LOG_LEVEL_ENV,
    LOG_SERVICE_ENV,
    OPTIONAL_ENV,
    RESOURCES_ENV,
)
from qlayer.planner import Resources
from qlayer_infra import REPO_ROOT, instances
from qlayer_infra.batch import BATCH_COMMAND, BatchLimits, JobSize, build_batch

#: Handlers in functions/<name>/app.py that run from the zip + light layer.
LIGHT_FUNCTIONS: tuple[str, ...] = (
    "trigger",
    "loader",
    "read_outcome",
    "start_children",
    "fan_in",
    "finaliser",
    "fail_job",
    "gateway",
)
#: Handlers that import qiskit / Aer / provider SDKs, run from the runner image.
IMAGE_FUNCTIONS: tuple[str, ...] = ("stage_runner", "simulator", "dispatcher", "poller")
#: The Batch containers' row of qlayer.aws.config.FUNCTION_ENV.
BATCH = "batch"
#: The environment build's row (a Batch job with a role of its own).
ENV_BUILD = "env_build"

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
    # API Gateway ends a REST integration after 29 s: the gateway must answer within it.
    "gateway": 29,
}
_DEFAULT_TIMEOUT_S = 60
#: Lambda's memory limits (MiB).
LAMBDA_MEMORY_RANGE_MB = (128, 10240)
#: Lambda's ephemeral storage (/tmp) limits (MiB).
LAMBDA_TMP_RANGE_MB = (512, 10240)
LOG_LEVEL = "INFO"

__all__ = [
    "BATCH",
    "BATCH_COMMAND",  # re-exported: the Batch module builds the job definitions
    "DEFAULT_CPU_INSTANCE_TYPES",
    "DEFAULT_GPU_INSTANCE_TYPES",
    "ENV_BUILD",
    "IMAGE_CONTEXT_EXCLUDE",
    "IMAGE_FUNCTIONS",
    "LIGHT_FUNCTIONS",
    "LIGHT_LAYER_DIR",
    "Compute",
    "ensure_light_layer",
    "environment_for",
    "function_dir",
    "function_timeout_s",
    "light_layer_sources",
]


def function_timeout_s(name: str) -> int:
    """The timeout of handler ``name``'s Lambda function, in seconds."""
    return _TIMEOUTS_S.get(name, _DEFAULT_TIMEOUT_S)


def environment_for(name: str, values: Mapping[str, str]) -> dict[str, str]:
    """Handler ``name``'s environment: its row of FUNCTION_ENV, filled from ``values``.

    Raises:
        ValueError: ``values`` lacks a variable the row needs (only QLAYER_PROVIDERS and
            QLAYER_RATE_LIMITS may be absent: they are set when configured).
    """
    wanted = FUNCTION_ENV[name]
    own = {
        FUNCTION_NAME_ENV: name,
        LOG_SERVICE_ENV: f"qlayer-{name}",
        LOG_LEVEL_ENV: LOG_LEVEL,
    }
    env = {var: own.get(var, values.get(var)) for var in sorted(wanted)}
    env = {var: value for var, value in env.items() if value is not None}
    missing = wanted - set(env) - OPTIONAL_ENV
    if missing:
        raise ValueError(f"{name}: no value for {', '.join(sorted(missing))}")
    return env


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

    Every function's (and the Batch containers') environment is its row of
    ``qlayer.aws.config.FUNCTION_ENV``, filled from ``environment`` and
    ``QLAYER_RESOURCES``; nothing else adds variables.

    Attributes:
        functions: Every handler by name (see LIGHT_FUNCTIONS, IMAGE_FUNCTIONS).
        resources: What one stage or simulation can get here (``QLAYER_RESOURCES``).
        vpc: Two AZs; Batch runs in its private subnets.
        cpu_queue, gpu_queue: Batch job queues (EC2 c6i/m6i/r6i; EC2 g5/p4d GPU instances);
            a job that sits RUNNABLE past ``batch_limits`` is cancelled.
        cpu_job, gpu_job: Batch job definitions running ``qlayer.aws.batch_entry``.
        batch_job_role: The role Batch containers run as.
        env_build_job: The job definition of environment builds (``qlayer.aws.env_build``,
            CPU queue, runner image).
        env_build_role: The role environment builds run as (``envs/*`` only).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        env_name: str,
        key: kms.IKey,
        environment: Mapping[str, str],
        stage_memory_mb: int = 4096,
        simulator_memory_mb: int = 10240,
        stage_tmp_mb: int = 2048,
        cpu_instance_types: Sequence[str] = DEFAULT_CPU_INSTANCE_TYPES,
        gpu_instance_types: Sequence[str] = DEFAULT_GPU_INSTANCE_TYPES,
        max_cpu_vcpus: int = 256,
        max_gpu_vcpus: int = 96,
        batch_timeout: Duration = Duration.hours(12),
        batch_limits: BatchLimits | None = None,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        """Build the functions and Batch.

        ``environment`` holds the stack-wide values (bucket and table names, ARNs, the
        queue URL, and QLAYER_PROVIDERS / QLAYER_RATE_LIMITS when configured).
        ``stage_tmp_mb`` is the stage runner's /tmp (ephemeral storage), where jobs'
        environments are unpacked.

        Raises:
            ValueError: A Lambda memory outside 128-10240 MiB, an instance type (or
                family) whose size this stack does not know, or a vCPU ceiling below 1.
        """
        super().__init__(scope, id)
        low, high = LAMBDA_MEMORY_RANGE_MB
        for what, mb in (
            ("stage_memory_mb", stage_memory_mb),
            ("simulator_memory_mb", simulator_memory_mb),
        ):
            if not low <= mb <= high:
                raise ValueError(f"{what}={mb}: Lambda functions have {low}-{high} MiB")
        tmp_low, tmp_high = LAMBDA_TMP_RANGE_MB
        if not tmp_low <= stage_tmp_mb <= tmp_high:
            raise ValueError(
                f"stage_tmp_mb={stage_tmp_mb}: Lambda's /tmp (ephemeral storage) is "
                f"{tmp_low}-{tmp_high} MiB"
            )
        self._key = key
        self._log_retention = log_retention
        self._removal_policy = removal_policy

        cpu_types = instances.expand(cpu_instance_types, instances.CPU_TYPES, "CPU")
        gpu_types = instances.expand(gpu_instance_types, instances.GPU_TYPES, "GPU")
        if max_cpu_vcpus < 1 or max_gpu_vcpus < 1:
            raise ValueError(f"max_cpu_vcpus={max_cpu_vcpus}, max_gpu_vcpus={max_gpu_vcpus}")
        largest = instances.largest_cpu(cpu_types)
        gpu_vcpus, gpu_memory = instances.gpu_job_size(gpu_types)
        # A job asking more vCPUs than its compute environment's maxvCpus never starts
        # (an instance may exceed the ceiling, by one instance at most; a job may not).
        gpu_vcpus = min(gpu_vcpus, max_gpu_vcpus)
        self.resources = Resources(
            stage_memory_mb=stage_memory_mb,
            lambda_memory_mb=simulator_memory_mb,
            lambda_seconds=function_timeout_s("simulator"),
            batch_memory_mb=instances.job_memory_mib(largest),
            batch_vcpus=min(largest.vcpus, max_cpu_vcpus),
            gpu_memory_mb=instances.gpu_memory_mib(gpu_types),
            gpu_vcpus=gpu_vcpus,
            gpu_job_memory_mb=gpu_memory,
            stage_tmp_mb=stage_tmp_mb,
        )
        values = {**environment, RESOURCES_ENV: self.resources.to_json()}

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
                timeout=Duration.seconds(function_timeout_s(name)),
                tracing=lambda_.Tracing.ACTIVE,
                environment=environment_for(name, values),
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
                # the stage runner unpacks jobs' environments into /tmp
                ephemeral_storage_size=Size.mebibytes(stage_tmp_mb)
                if name == "stage_runner"
                else None,
                timeout=Duration.seconds(function_timeout_s(name)),
                tracing=lambda_.Tracing.ACTIVE,
                environment=environment_for(name, values),
                log_group=self._log_group(name),
                description=f"qlayer {env_name}: {name} (runner image)",
            )

        parts = build_batch(
            self,
            env_name=env_name,
            environment=environment_for(BATCH, values),
            env_build_environment=environment_for(ENV_BUILD, values),
            cpu_image=self.runner_image,
            gpu_image=self.runner_gpu_image,
            cpu_instance_types=cpu_instance_types,
            gpu_instance_types=gpu_instance_types,
            max_cpu_vcpus=max_cpu_vcpus,
            max_gpu_vcpus=max_gpu_vcpus,
            gpu_job=JobSize(gpu_vcpus, gpu_memory, gpus=1),
            batch_timeout=batch_timeout,
            limits=batch_limits or BatchLimits(),
            log_group=self._log_group_named("BatchLogs"),
            flow_logs=self._log_group_named("VpcFlowLogs"),
        )
        self.vpc, self.batch_job_role = parts.vpc, parts.job_role
        self.cpu_queue, self.gpu_queue = parts.cpu_queue, parts.gpu_queue
        self.cpu_job, self.gpu_job = parts.cpu_job, parts.gpu_job
        self.env_build_role, self.env_build_job = parts.env_role, parts.env_job

    def _log_group(self, name: str) -> logs.LogGroup:
        return self._log_group_named(f"{_camel(name)}Logs")

    def _log_group_named(self, construct_id: str) -> logs.LogGroup:
        return logs.LogGroup(
            self,
            construct_id,
            retention=self._log_retention,
            encryption_key=self._key,
            removal_policy=self._removal_policy,
        )


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))
