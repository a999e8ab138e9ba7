"""What the deployment offers (QLAYER_RESOURCES, output Resources) matches its instance types."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match, Template
from qlayer_infra import instances
from qlayer_infra.stack import QlayerStack

from qlayer.aws.config import AwsConfig, ConfigError
from qlayer.planner import Resources

from .conftest import make_app, resources_of

G5_XLARGE_MIB = 16 * 1024


def test_default_resources(stack) -> None:
    """Defaults: stage runner 4 GiB, simulator 10 GiB; r6i.8xlarge is the largest CPU type
    (32 vCPUs, 256 GiB); g5.xlarge the smallest GPU share (4 vCPUs, 16 GiB); the g5's
    A10G is the GPU every job of the queue is sure to get (24 GiB, not the p4d's 40)."""
    usable = int(256 * 1024 * 0.95) - 32
    assert stack.compute.resources == Resources(
        stage_memory_mb=4096,
        lambda_memory_mb=10240,
        lambda_seconds=900,
        batch_memory_mb=usable,
        batch_vcpus=32,
        gpu_memory_mb=24 * 1024,
        gpu_vcpus=4,
        gpu_job_memory_mb=int(G5_XLARGE_MIB * 0.95) - 32,
    )


def test_a_gpu_job_fits_the_smallest_gpu_instance(stack) -> None:
    """Asking 8 vCPUs (as the handlers did) never places on a g5.xlarge (4 vCPUs, 16 GiB)."""
    r = stack.compute.resources
    g5 = instances.GPU_TYPES["g5.xlarge"]
    assert r.gpu_vcpus <= g5.vcpus
    assert r.gpu_job_memory_mb < G5_XLARGE_MIB - instances.ECS_RESERVED_MEMORY_MIB
    # ... and four such jobs share a g5.12xlarge (48 vCPUs, 192 GiB, 4 GPUs).
    big = instances.GPU_TYPES["g5.12xlarge"]
    assert 4 * r.gpu_vcpus <= big.vcpus
    assert 4 * r.gpu_job_memory_mb <= instances.job_memory_mib(big)


def test_the_gpu_job_definition_asks_what_fits(template: Template, stack) -> None:
    r = stack.compute.resources
    template.has_resource_properties(
        "AWS::Batch::JobDefinition",
        {
            "JobDefinitionName": "qlayer-dev-gpu",
            "ContainerProperties": Match.object_like(
                {
                    "ResourceRequirements": Match.array_with(
                        [
                            {"Type": "MEMORY", "Value": str(r.gpu_job_memory_mb)},
                            {"Type": "VCPU", "Value": str(r.gpu_vcpus)},
                            {"Type": "GPU", "Value": "1"},
                        ]
                    )
                }
            ),
        },
    )


def test_resources_are_a_stack_output(template: Template, stack) -> None:
    output = template.find_outputs("Resources")["Resources"]
    assert Resources.from_json(output["Value"]) == stack.compute.resources
    config = AwsConfig.from_outputs(
        {"BucketName": "b", "JobsTableName": "t", "Resources": output["Value"]}
    )
    assert config.resources() == stack.compute.resources


def test_resources_follow_the_properties(tmp_path) -> None:
    stack = QlayerStack(
        make_app(tmp_path),
        "Sized",
        stage_memory_mb=2048,
        simulator_memory_mb=8192,
        cpu_instance_types=["c6i.4xlarge", "m6i"],  # a family: up to m6i.32xlarge
        gpu_instance_types=["g6.2xlarge", "p5.48xlarge"],
        max_gpu_vcpus=192,
    )
    r = stack.compute.resources
    assert (r.stage_memory_mb, r.lambda_memory_mb) == (2048, 8192)
    assert (r.batch_vcpus, r.batch_memory_mb) == (128, int(512 * 1024 * 0.95) - 32)
    assert r.gpu_memory_mb == 24 * 1024  # the L4 of g6.2xlarge, not the H100's 80
    # One GPU's share: g6.2xlarge 8 vCPUs / 32 GiB; p5.48xlarge 24 vCPUs / 256 GiB.
    assert (r.gpu_vcpus, r.gpu_job_memory_mb) == (8, int(32 * 1024 * 0.95) - 32)
    env = [
        fn["Properties"]["Environment"]["Variables"]
        for fn in resources_of(
            Template.from_stack(stack).to_json(), "AWS::Lambda::Function"
        ).values()
        if "QLAYER_RESOURCES" in fn["Properties"].get("Environment", {}).get("Variables", {})
    ]
    # stage_runner, simulator, gateway (and Batch, in its job definitions)
    assert len(env) == 3
    template = Template.from_stack(stack)
    template.has_resource_properties(
        "AWS::Batch::ComputeEnvironment",
        {"ComputeResources": Match.object_like({"InstanceTypes": ["c6i.4xlarge", "m6i"]})},
    )
    assert all(Resources.from_json(e["QLAYER_RESOURCES"]) == r for e in env)


def test_a_vcpu_ceiling_caps_what_a_job_may_ask(tmp_path) -> None:
    stack = QlayerStack(make_app(tmp_path), "Capped", max_cpu_vcpus=16, max_gpu_vcpus=2)
    assert stack.compute.resources.batch_vcpus == 16
    assert stack.compute.resources.gpu_vcpus == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpu_instance_types": ["x2iedn.32xlarge"]}, "x2iedn.32xlarge"),
        ({"gpu_instance_types": ["g5.xlarge", "p3.2xlarge"]}, "p3.2xlarge"),
        ({"gpu_instance_types": ["c6i.large"]}, "c6i.large"),  # not a GPU type
        ({"cpu_instance_types": []}, "no CPU instance types"),
        ({"stage_memory_mb": 20480}, "stage_memory_mb"),
    ],
)
def test_unknown_instance_types_stop_synthesis(tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        QlayerStack(make_app(tmp_path), "Bad", **kwargs)


def test_every_family_in_the_tables_is_an_ec2_instance_class() -> None:
    from aws_cdk import aws_ec2 as ec2

    for name in [*instances.CPU_TYPES, *instances.GPU_TYPES]:
        assert ec2.InstanceClass[name.split(".")[0].upper()], name


def test_gpu_table_memory_per_gpu() -> None:
    memory = {name: t.gpu_memory_gib for name, t in instances.GPU_TYPES.items()}
    assert memory["g5.xlarge"] == memory["g6.xlarge"] == 24  # A10G, L4
    assert (memory["p4d.24xlarge"], memory["p4de.24xlarge"], memory["p5.48xlarge"]) == (40, 80, 80)
    assert all(t.gpus >= 1 for t in instances.GPU_TYPES.values())


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"stage_memory_mb": 1}),
        json.dumps({**json.loads(Resources(*range(1, 9)).to_json()), "extra": 1}),
        json.dumps({**json.loads(Resources(*range(1, 9)).to_json()), "batch_vcpus": 0}),
    ],
)
def test_bad_resources_json_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="QLAYER_RESOURCES"):
        Resources.from_json(text)


def test_resources_round_trip() -> None:
    r = Resources(*range(1, 9))
    assert Resources.from_json(r.to_json()) == r
