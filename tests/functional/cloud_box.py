"""Fixtures of the cloud-in-a-box tests: the synthesized stacks and one box per module.

The box is :class:`qlayer.cloudbox.CloudBox` (see qlayer/cloudbox/ and the "cloud in a
box" section of docs/deploy.md); this file only chooses its stacks and options.

Two syntheses of ``QlayerStack``: the main one, with the fake QPU service as a provider
plugin (``provider_plugins="fakeqpu=fake_qpu:FakeQpu"``), and ``env_name="short"`` with
``qpu_heartbeat_s=1, qpu_timeout_s=2`` (stack props, nothing patched) whose state machine
is created over the main one's resources for the QPU timeout test. The fake QPU's code
(tests/e2e/programs) and its state folder (``QLAYER_FAKE_QPU_DIR``) are baked into the
runner image by the box's options: the provider's service is not stack configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qlayer.cloudbox import BoxOptions, CloudBox, Synthesis, synthesize

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PROGRAMS = Path(__file__).parent / "programs"
FAKE_QPU_CODE = REPO / "tests" / "e2e" / "programs"
PROVIDER_PLUGINS = "fakeqpu=fake_qpu:FakeQpu"
#: The poller's rate(1 minute) fires every 2 s here (the box's only time compression).
SCHEDULE_SPEEDUP = 30.0


def synthesize_stacks(outdir: Path) -> dict[str, Synthesis]:
    return {
        "main": synthesize(outdir / "main", provider_plugins=PROVIDER_PLUGINS),
        "short": synthesize(
            outdir / "short",
            env_name="short",
            qpu_heartbeat_s=1,
            qpu_timeout_s=2,
            provider_plugins=PROVIDER_PLUGINS,
        ),
    }


@contextmanager
def running_box(stacks: dict[str, Synthesis], workdir: Path) -> Iterator[CloudBox]:
    """The main stack's box, with the "short" state machine beside it (``box.short_arn``)."""
    fake_qpu_dir = workdir / "fake-qpu"
    options = BoxOptions(
        plugins=[FAKE_QPU_CODE],
        image_env={"QLAYER_FAKE_QPU_DIR": str(fake_qpu_dir)},
        max_processes=3,
        schedule_speedup=SCHEDULE_SPEEDUP,
    )
    box = CloudBox(stacks["main"], workdir / "box", options)
    try:
        box.start()
        box.short_arn = box.add_machine(stacks["short"])  # type: ignore[attr-defined]
        box.fake_qpu_dir = fake_qpu_dir  # type: ignore[attr-defined]
        yield box
    finally:
        box.stop()
