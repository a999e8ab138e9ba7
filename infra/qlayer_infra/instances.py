"""EC2 instance types the Batch compute environments may use, and what a job can get on them.

No aws-cdk-lib import. The figures are AWS's published instance specifications:

* general purpose / compute / memory optimised (c, m, r families: 2, 4 and 8 GiB per
  vCPU): https://aws.amazon.com/ec2/instance-types/ (c6i, m6i, r6i, c7i, m7i, r7i tabs);
* accelerated computing: https://aws.amazon.com/ec2/instance-types/g4/ (T4, 16 GiB),
  .../g5/ (A10G, 24 GiB), .../g6/ (L4, 24 GiB), .../p4/ (p4d A100 40 GiB, p4de A100
  80 GiB), .../p5/ (H100 80 GiB); also the "Accelerated computing" table of
  https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html.

What a Batch job can ask for is less than the instance's memory: the ECS agent registers
the memory the OS reports (the kernel keeps some: an m4.large's 8192 MiB shows as 7985),
the Batch AMI reserves 32 MiB for the agent, and AWS recommends keeping a 5 % buffer
(https://docs.aws.amazon.com/batch/latest/userguide/memory-management.html and
ecs-reserved-memory.html). A job asking more than what registers never places.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    """One EC2 instance type: vCPUs, memory (GiB), GPUs and memory per GPU (GiB)."""

    name: str
    vcpus: int
    memory_gib: int
    gpus: int = 0
    gpu_memory_gib: int = 0


#: Of an instance's memory, what a job may ask for: the kernel's share and AWS's
#: recommended buffer (5 %), then the 32 MiB the Batch AMI reserves for the ECS agent.
MEMORY_USABLE_FRACTION = 0.95
ECS_RESERVED_MEMORY_MIB = 32

#: Size -> vCPUs; the same in every family below that has the size.
_VCPUS = {
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "4xlarge": 16,
    "8xlarge": 32,
    "12xlarge": 48,
    "16xlarge": 64,
    "24xlarge": 96,
    "32xlarge": 128,
    "48xlarge": 192,
}
_SIXTH_GEN = (
    "large",
    "xlarge",
    "2xlarge",
    "4xlarge",
    "8xlarge",
    "12xlarge",
    "16xlarge",
    "24xlarge",
    "32xlarge",
)
_SEVENTH_GEN = (*_SIXTH_GEN[:-1], "48xlarge")  # c7i/m7i/r7i: no 32xlarge, a 48xlarge
#: CPU family -> (GiB per vCPU, sizes).
_CPU_FAMILIES = {
    "c6i": (2, _SIXTH_GEN),
    "m6i": (4, _SIXTH_GEN),
    "r6i": (8, _SIXTH_GEN),
    "c7i": (2, _SEVENTH_GEN),
    "m7i": (4, _SEVENTH_GEN),
    "r7i": (8, _SEVENTH_GEN),
}
CPU_TYPES: dict[str, InstanceType] = {
    f"{family}.{size}": InstanceType(f"{family}.{size}", _VCPUS[size], _VCPUS[size] * per_vcpu)
    for family, (per_vcpu, sizes) in _CPU_FAMILIES.items()
    for size in sizes
}

#: (size, vCPUs, GiB, GPUs) of the g4dn family, and of g5 and g6 (the same sizes).
_G4DN_SIZES = (
    ("xlarge", 4, 16, 1),
    ("2xlarge", 8, 32, 1),
    ("4xlarge", 16, 64, 1),
    ("8xlarge", 32, 128, 1),
    ("12xlarge", 48, 192, 4),
    ("16xlarge", 64, 256, 1),
)
_G5_SIZES = (*_G4DN_SIZES, ("24xlarge", 96, 384, 4), ("48xlarge", 192, 768, 8))
#: GPU family -> (GiB per GPU, sizes): g4dn NVIDIA T4 16 GiB, g5 A10G 24 GiB, g6 L4 24 GiB.
_GPU_FAMILIES = {"g4dn": (16, _G4DN_SIZES), "g5": (24, _G5_SIZES), "g6": (24, _G5_SIZES)}
GPU_TYPES: dict[str, InstanceType] = {
    f"{family}.{size}": InstanceType(f"{family}.{size}", vcpus, memory, gpus, per_gpu)
    for family, (per_gpu, sizes) in _GPU_FAMILIES.items()
    for size, vcpus, memory, gpus in sizes
}
GPU_TYPES.update(
    {
        # 8 x A100 40 GiB; 8 x A100 80 GiB; 8 x H100 80 GiB.
        "p4d.24xlarge": InstanceType("p4d.24xlarge", 96, 1152, 8, 40),
        "p4de.24xlarge": InstanceType("p4de.24xlarge", 96, 1152, 8, 80),
        "p5.48xlarge": InstanceType("p5.48xlarge", 192, 2048, 8, 80),
    }
)


class UnknownInstanceType(ValueError):
    """An instance type (or family) this stack has no specification for."""


def expand(
    names: Iterable[str], table: Mapping[str, InstanceType], what: str
) -> list[InstanceType]:
    """The instance types named by ``names``: exact types, or families (every size).

    Raises:
        UnknownInstanceType: A name that is neither a type nor a family of ``table``.
    """
    found: list[InstanceType] = []
    for name in names:
        if name in table:
            found.append(table[name])
            continue
        family = [t for key, t in table.items() if key.split(".")[0] == name]
        if not family:
            families = sorted({key.split(".")[0] for key in table})
            raise UnknownInstanceType(
                f"{what} instance type {name!r} is not one this stack knows the size of: use "
                f"one of the families {', '.join(families)} or one of their sizes "
                f"(e.g. {next(iter(table))}), or add it to infra/qlayer_infra/instances.py"
            )
        found.extend(family)
    if not found:
        raise UnknownInstanceType(f"no {what} instance types given")
    return found


def job_memory_mib(instance: InstanceType) -> int:
    """The most memory (MiB) one Batch job can ask for and still place on ``instance``."""
    return int(instance.memory_gib * 1024 * MEMORY_USABLE_FRACTION) - ECS_RESERVED_MEMORY_MIB


def largest_cpu(types: Sequence[InstanceType]) -> InstanceType:
    """The type with the most memory (then the most vCPUs): the biggest CPU job."""
    return max(types, key=lambda t: (t.memory_gib, t.vcpus))


def gpu_job_size(types: Sequence[InstanceType]) -> tuple[int, int]:
    """(vCPUs, MiB) for a one-GPU job that fits one GPU's share of every type in ``types``.

    g5.xlarge has 4 vCPUs and 16 GiB for its one GPU: a job asking 8 vCPUs never places
    on it; asking (4, 15532) places there, and four such jobs share a g5.12xlarge.
    """
    vcpus = min(t.vcpus // t.gpus for t in types)
    memory = min(job_memory_mib(t) // t.gpus for t in types)
    return vcpus, memory


def gpu_memory_mib(types: Sequence[InstanceType]) -> int:
    """The memory of one GPU that a job of a queue over ``types`` is sure to get (MiB).

    Batch places a job on any type of its compute environment that has room, so a job
    planned for the A100's 40 GiB may land on a g5's A10G (24 GiB) and fail there: the
    planner's limit is the smallest GPU's memory.
    """
    return min(t.gpu_memory_gib for t in types) * 1024
