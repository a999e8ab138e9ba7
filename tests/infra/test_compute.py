"""Compute: Lambda functions, the light layer, runner images, Batch queues and job definitions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Capture, Match, Template
from qlayer_infra.batch import ENV_BUILD_COMMAND
from qlayer_infra.compute import (
    BATCH_COMMAND,
    IMAGE_FUNCTIONS,
    LIGHT_FUNCTIONS,
    LIGHT_LAYER_DIR,
    ensure_light_layer,
)
from qlayer_infra.extract import functions_by_name

from .conftest import REPO, resources_of

LAMBDA_ZIP_LIMIT_BYTES = 250 * 1024 * 1024  # unzipped: function code + all layers


def test_every_handler_has_a_function(template_json: dict[str, Any]) -> None:
    assert set(functions_by_name(template_json)) == set(LIGHT_FUNCTIONS) | set(IMAGE_FUNCTIONS)
    for name in (*LIGHT_FUNCTIONS, *IMAGE_FUNCTIONS):
        assert (REPO / "functions" / name).is_dir(), name


def test_light_functions_use_the_zip_layer(template: Template, stack) -> None:
    layer = stack.resolve(stack.compute.layer.layer_version_arn)
    for name in LIGHT_FUNCTIONS:
        template.has_resource_properties(
            "AWS::Lambda::Function",
            {
                "Handler": "app.lambda_handler",
                "Runtime": "python3.11",
                "Layers": [layer],
                "TracingConfig": {"Mode": "Active"},
                "Environment": {"Variables": Match.object_like({"QLAYER_FUNCTION": name})},
            },
        )


def test_image_functions_run_their_handler_with_awslambdaric(template: Template) -> None:
    for name in IMAGE_FUNCTIONS:
        template.has_resource_properties(
            "AWS::Lambda::Function",
            {
                "PackageType": "Image",
                "Architectures": ["x86_64"],
                "ImageConfig": {
                    "EntryPoint": ["python", "-m", "awslambdaric"],
                    "Command": [f"functions.{name}.app.lambda_handler"],
                },
                "TracingConfig": {"Mode": "Active"},
                "Environment": {"Variables": Match.object_like({"QLAYER_FUNCTION": name})},
            },
        )


def test_light_layer_fits_lambda_and_has_no_qiskit() -> None:
    built = Path(ensure_light_layer())
    size = sum(f.stat().st_size for f in built.rglob("*") if f.is_file())
    assert size < LAMBDA_ZIP_LIMIT_BYTES, f"light layer is {size / 2**20:.0f} MB unzipped"
    site = built / "python"
    assert (site / "qlayer" / "__init__.py").is_file()
    assert (site / "aws_lambda_powertools").is_dir() and (site / "pydantic").is_dir()
    assert not (site / "qiskit").exists(), "qiskit belongs in the runner image, not the light layer"
    assert built.parent == LIGHT_LAYER_DIR


def test_light_handlers_import_from_the_layer_alone() -> None:
    """What Lambda does: the function folder + the layer, no site-packages; qiskit never loads."""
    if sys.version_info[:2] != (3, 11) or sys.platform != "linux":
        raise AssertionError(
            "the light layer holds CPython 3.11 manylinux wheels: "
            "run tests/infra with Python 3.11 on Linux"
        )
    site = Path(ensure_light_layer()) / "python"
    for name in LIGHT_FUNCTIONS:
        app = REPO / "functions" / name / "app.py"
        assert app.is_file(), f"{app} is missing"
        probe = (
            "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "import app\n"
            "assert callable(app.lambda_handler)\n"
            "heavy = [m for m in ('qiskit', 'qiskit_aer', 'numpy', 'scipy')"
            " if m in sys.modules]\n"
            "assert not heavy, heavy\n"
        )
        result = subprocess.run(
            [sys.executable, "-S", "-c", probe, str(site), str(app.parent)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1"},
        )
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"


def test_runner_images_are_built_from_the_repository_without_clutter(template_path: Path) -> None:
    assets = json.loads((template_path.parent / "Qlayer.assets.json").read_text())
    images = {a["source"]["dockerFile"]: a["source"] for a in assets["dockerImages"].values()}
    assert set(images) == {"layers/runner/Dockerfile", "layers/runner-gpu/Dockerfile"}
    for source in images.values():
        assert source["platform"] == "linux/amd64"
        context = template_path.parent / source["directory"]
        names = {p.name for p in context.iterdir()}
        assert {"qlayer", "functions", "pyproject.toml", "layers"} <= names
        assert not names & {".venv", "node_modules", "cdk.out", ".git", "tests", "infra"}
        assert {p.name for p in (context / "layers").iterdir()} <= {"runner", "runner-gpu"}


def test_gpu_image_swaps_in_aer_gpu() -> None:
    dockerfile = (REPO / "layers" / "runner-gpu" / "Dockerfile").read_text()
    assert "qiskit-aer-gpu" in dockerfile and "pip uninstall -y qiskit-aer" in dockerfile


def test_batch_job_definitions_run_batch_entry(template: Template) -> None:
    template.resource_count_is("AWS::Batch::JobDefinition", 3)  # CPU, GPU, environment build
    template.has_resource_properties(
        "AWS::Batch::JobDefinition",
        {
            "Type": "container",
            "ContainerProperties": Match.object_like({"Command": list(BATCH_COMMAND)}),
            "Parameters": {
                "job_id": Match.any_value(),
                "seq": Match.any_value(),
                "stage": Match.any_value(),
            },
        },
    )
    template.has_resource_properties(
        "AWS::Batch::JobDefinition",
        {
            "JobDefinitionName": "qlayer-dev-gpu",
            "ContainerProperties": Match.object_like(
                {"ResourceRequirements": Match.array_with([{"Type": "GPU", "Value": "1"}])}
            ),
        },
    )


def test_the_environment_build_runs_env_build_in_the_cpu_image_as_its_own_role(
    template_json: dict[str, Any], stack
) -> None:
    """The base every stage runs on (the CPU runner image) is what environments are built
    on; the build's role is its own (tests/infra/test_access.py: envs/* only)."""
    definitions = {
        jd["Properties"]["JobDefinitionName"]: jd["Properties"]
        for jd in resources_of(template_json, "AWS::Batch::JobDefinition").values()
    }
    build = definitions["qlayer-dev-env-build"]
    container = build["ContainerProperties"]
    assert container["Command"] == list(ENV_BUILD_COMMAND)
    assert build["Parameters"] == {"env": "unset"}
    assert build["Timeout"] == {"AttemptDurationSeconds": 1800}
    assert container["Image"] == definitions["qlayer-dev-cpu"]["ContainerProperties"]["Image"]
    assert container["JobRoleArn"] == stack.resolve(stack.compute.env_build_role.role_arn)
    assert container["JobRoleArn"] != stack.resolve(stack.compute.batch_job_role.role_arn)


def test_the_stage_runner_has_room_in_tmp_for_environments(template: Template) -> None:
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Description": Match.string_like_regexp("stage_runner"),
            "EphemeralStorage": {"Size": 2048},
        },
    )


def test_gpu_compute_environment_uses_gpu_instances_and_ami(template: Template) -> None:
    template.has_resource_properties(
        "AWS::Batch::ComputeEnvironment",
        {
            "Type": "managed",
            "ComputeResources": Match.object_like(
                {
                    "MinvCpus": 0,
                    "InstanceTypes": Match.array_with(["g5.xlarge", "p4d.24xlarge"]),
                    "Ec2Configuration": [{"ImageType": "ECS_AL2023_NVIDIA"}],
                }
            ),
        },
    )


def test_batch_runs_in_private_subnets_of_a_logged_vpc(
    template: Template, template_json: dict[str, Any]
) -> None:
    template.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "ALL"})
    private = {
        k
        for k, v in resources_of(template_json, "AWS::EC2::Subnet").items()
        if not v["Properties"].get("MapPublicIpOnLaunch", False)
    }
    assert len(private) == 2
    for env in resources_of(template_json, "AWS::Batch::ComputeEnvironment").values():
        subnets = {s["Ref"] for s in env["Properties"]["ComputeResources"]["Subnets"]}
        assert subnets == private


def test_job_queues(template: Template) -> None:
    for name in ("qlayer-dev-cpu", "qlayer-dev-gpu"):
        template.has_resource_properties("AWS::Batch::JobQueue", {"JobQueueName": name})


def test_queues_cancel_jobs_stuck_runnable(template: Template) -> None:
    """A job no instance can place waited RUNNABLE forever, and its execution with it."""
    for name in ("qlayer-dev-cpu", "qlayer-dev-gpu"):
        template.has_resource_properties(
            "AWS::Batch::JobQueue",
            {
                "JobQueueName": name,
                "JobStateTimeLimitActions": [
                    {
                        "Action": "CANCEL",
                        "State": "RUNNABLE",
                        "Reason": "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
                        "MaxTimeSeconds": 600,
                    },
                    {
                        "Action": "CANCEL",
                        "State": "RUNNABLE",
                        "Reason": "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
                        "MaxTimeSeconds": 600,
                    },
                    {
                        "Action": "CANCEL",
                        "State": "RUNNABLE",
                        "Reason": "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY",
                        "MaxTimeSeconds": 7200,
                    },
                ],
            },
        )


def test_runnable_time_limits_are_properties(tmp_path) -> None:
    import pytest
    from qlayer_infra.stack import QlayerStack

    from .conftest import make_app

    stack = QlayerStack(
        make_app(tmp_path),
        "Limits",
        batch_unplaceable_timeout_s=900,
        batch_no_capacity_timeout_s=14400,
    )
    limits = Capture()
    Template.from_stack(stack).has_resource_properties(
        "AWS::Batch::JobQueue", {"JobStateTimeLimitActions": limits}
    )
    assert [a["MaxTimeSeconds"] for a in limits.as_array()] == [900, 900, 14400]
    with pytest.raises(ValueError, match="600-86400"):
        QlayerStack(make_app(tmp_path / "b"), "Bad", batch_no_capacity_timeout_s=60)
