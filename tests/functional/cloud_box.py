"""Fixtures of the cloud-in-a-box tests: the synthesized stacks and one box per module.

The box is :class:`qlayer.cloudbox.CloudBox` (see qlayer/cloudbox/ and the "cloud in a
box" section of docs/deploy.md); this file only chooses its stacks and options.

Two syntheses of ``QlayerStack``: the main one, with the fake QPU service as a provider
plugin (``provider_plugins="fakeqpu=fake_qpu:FakeQpu"``), and ``env_name="short"`` with
``qpu_heartbeat_s=1, qpu_timeout_s=2`` (stack props, nothing patched) whose state machine
is created over the main one's resources for the QPU timeout test. The fake QPU's code
(tests/e2e/programs) and its state folder (``QLAYER_FAKE_QPU_DIR``) are baked into the
runner image by the box's options: the provider's service is not stack configuration.
So is the ``qiskit_serverless`` overlay the runner image installs for Qiskit Serverless
functions (``QLAYER_SERVERLESS_OVERLAY``, tests/support/serverless_envs.py).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

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
    from serverless_envs import overlay_folder

    fake_qpu_dir = workdir / "fake-qpu"
    options = BoxOptions(
        plugins=[FAKE_QPU_CODE],
        image_env={
            "QLAYER_FAKE_QPU_DIR": str(fake_qpu_dir),
            # What layers/runner/Dockerfile installs: qiskit_serverless for functions' jobs.
            "QLAYER_SERVERLESS_OVERLAY": str(overlay_folder()),
        },
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


# -- helpers of the scenarios -------------------------------------------------------------
def until(what: str, check: Callable[[], Any], timeout: float = 60, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(every)


def finish(
    box: CloudBox, job: Any, timeout: float = 180, machine_arn: str | None = None
) -> dict[str, Any]:
    """Wait for the job's execution, then for its row to be final; ``job.info()``."""
    desc = box.wait_execution(job.job_id, timeout, machine_arn=machine_arn)
    try:
        job.wait(timeout=30)
        return job.info()  # type: ignore[no-any-return]
    except TimeoutError as exc:
        failures = [e for e in box.history(job.job_id, machine_arn) if "Fail" in e["type"]]
        raise AssertionError(f"{exc}; execution {desc['status']}: {failures}") from exc


def assert_same(aws: Any, local: Any, *, rel: float = 1e-9, path: str = "$") -> None:
    """Equal JSON; floats to ``rel`` (summation order may differ between processes)."""
    if isinstance(local, float) or isinstance(aws, float):
        assert isinstance(aws, (int, float)) and isinstance(local, (int, float)), path
        if math.isnan(local):
            assert math.isnan(aws), path
        else:
            assert aws == pytest.approx(local, rel=rel, abs=1e-12), path
    elif isinstance(local, dict):
        assert isinstance(aws, dict) and set(aws) == set(local), (path, set(aws) ^ set(local))
        for key in local:
            assert_same(aws[key], local[key], rel=rel, path=f"{path}.{key}")
    elif isinstance(local, (list, tuple)):
        assert isinstance(aws, (list, tuple)) and len(aws) == len(local), path
        for i, (a, b) in enumerate(zip(aws, local, strict=True)):
            assert_same(a, b, rel=rel, path=f"{path}[{i}]")
    else:
        assert aws == local, path


def run_both(
    box: CloudBox, cloud: Any, local: Any, program: Any, args: dict[str, Any]
) -> tuple[Any, Any, Any, Any]:
    """Submit to both substrates (the local daemon works meanwhile).

    Returns (aws job, its info, local job, its info).
    """
    local_job = local.run(program, args)
    aws_job = cloud.run(program, args)
    aws_row = finish(box, aws_job)
    local_job.wait(timeout=240)
    return aws_job, aws_row, local_job, local_job.info()


def status(job: Any) -> str:
    return str(job.status().value)


def dispatched(box: CloudBox) -> list[dict[str, Any]]:
    """The dispatch messages the SQS poller delivered to the dispatcher (JSON ones)."""
    out = []
    for record in (r for p in box.pollers for r in p.delivered):
        try:
            body = json.loads(record["body"])
        except json.JSONDecodeError:
            continue
        if isinstance(body, dict):
            out.append(body)
    return out


def s3_json_now(box: CloudBox, key: str) -> dict[str, Any] | None:
    """A JSON object of the bucket, or None while it does not exist."""
    from botocore.exceptions import ClientError

    try:
        body = box.client("s3").get_object(Bucket=box.outputs["BucketName"], Key=key)["Body"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    return json.loads(body.read())  # type: ignore[no-any-return]


def s3_json(box: CloudBox, key: str, timeout: float = 120) -> dict[str, Any]:
    """An object the stack writes asynchronously: polled for until it exists."""
    return until(key, lambda: s3_json_now(box, key), timeout)  # type: ignore[no-any-return]


def assert_no_execute_result(client: Any, job_id: str) -> None:
    store = client.services.store
    ran = [k for k in store.list(f"jobs/{job_id}/stages/") if k.endswith("-execute/result.json")]
    assert ran == [], f"the dispatcher ran provider work for an ended job: {ran}"


def wait_queue_empty(box: CloudBox, timeout: float = 60) -> None:
    sqs = box.client("sqs")
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]

    def empty() -> bool:
        attrs = sqs.get_queue_attributes(
            QueueUrl=box.outputs["DispatchQueueUrl"], AttributeNames=names
        )["Attributes"]
        return not any(int(v) for v in attrs.values())

    until("the dispatch queue to drain", empty, timeout)
