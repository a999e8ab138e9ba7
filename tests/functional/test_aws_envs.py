"""Program environments on AWS, step by step, over moto (mock_aws): what "Load job",
"Check environment" and the stage runner do with a job's environment.

The whole path (a real build with uv, on Batch, in the box) is in
tests/functional/test_cloud_in_a_box.py; here the library's steps run in this process
against moto's S3 and DynamoDB, and the environment's archive is packed here, as the
build packs it (no package index needed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from aws_fixtures import PROGRAMS

from qlayer import keys
from qlayer.aws.env_build import pack
from qlayer.aws.envs import EnvInfo, stack_base
from qlayer.aws.events import LoadEvent, StepEvent
from qlayer.envs import Lock, check_requirements, spec_hash
from qlayer.status import JobStatus

pytestmark = pytest.mark.moto

PIN = "qlayer-test-envpkg==1.0"
PROGRAM = """
from qlayer import Done, Workflow

wf = Workflow("env-steps", requirements=["qlayer-test-envpkg==1.0"])


@wf.stage()
def start(args, ctx):
    import qlayer_test_envpkg

    return Done({"version": qlayer_test_envpkg.VERSION, "file": qlayer_test_envpkg.__file__})
"""


@pytest.fixture
def env(aws: Any) -> str:
    """A lock of one package, resolved already (as by an earlier job): no resolver runs."""
    wanted = check_requirements([PIN])
    base = stack_base(aws.store)
    lock = Lock(wanted, install=wanted, base=base.identity())
    aws.store.put_json(keys.env_lock(lock.hash), lock.to_json())
    aws.store.put_json(
        keys.env_resolution(spec_hash(wanted, base)),
        {"env": lock.hash, "requirements": list(wanted)},
    )
    return lock.hash


def submit(aws: Any, tmp_path: Path) -> str:
    from qlayer.aws.client import prepare_job

    path = tmp_path / "env_steps.py"
    path.write_text(PROGRAM)
    return prepare_job(aws, path, {})  # type: ignore[no-any-return]


def build_here(aws: Any, env: str, tmp_path: Path, *, unpacked_bytes: int | None = None) -> None:
    """Store what a build stores: the archive, then built.json."""
    site = tmp_path / f"site-{env}"
    (site / "qlayer_test_envpkg").mkdir(parents=True)
    (site / "qlayer_test_envpkg" / "__init__.py").write_text("VERSION = '1.0'\n")
    archive = tmp_path / f"{env}.tar.gz"
    files, total = pack(site, archive)
    aws.store.upload_file(keys.env_archive(env), archive)
    info = EnvInfo(env, archive.stat().st_size, unpacked_bytes or total, files, (PIN,), 0.5)
    aws.store.put_json(keys.env_built(env), info.to_json())


def events(aws: Any, job_id: str) -> list[str]:
    return [e["event"] for e in aws.jobs.timeline(job_id)]


def test_the_first_job_of_a_lock_is_building_until_its_environment_is_built(
    aws: Any, env: str, tmp_path: Path
) -> None:
    from qlayer.aws.steps import load_job, read_outcome

    job_id = submit(aws, tmp_path)
    assert aws.jobs.get(job_id).env == env
    decision = load_job(LoadEvent(job_id=job_id), aws)
    assert decision["kind"] == "next" and decision["stage"] == "start"
    assert decision["extra"] == {"build_env": env}  # "Environment ready?" -> build
    record = aws.jobs.get(job_id)
    assert record.status == JobStatus.BUILDING
    (building,) = [e for e in aws.jobs.timeline(job_id) if e["event"] == "building environment"]
    assert building["detail"] == {"env": env, "packages": [PIN]}

    # the build job ended without recording anything: the job fails, saying where to look
    lost = read_outcome(StepEvent(job_id=job_id, decision=decision), aws)
    assert lost["kind"] == "error" and lost["error_type"] == "EnvBuildError"
    assert "without recording" in lost["message"]

    build_here(aws, env, tmp_path)
    carried = read_outcome(StepEvent(job_id=job_id, decision=decision), aws)
    assert carried == {k: v for k, v in decision.items() if k != "extra"}
    assert aws.jobs.get(job_id).status == JobStatus.RUNNING
    assert events(aws, job_id)[-1] == "environment ready"

    second = submit(aws, tmp_path)
    again = load_job(LoadEvent(job_id=second), aws)
    assert "extra" not in again and again["stage"] == "start"  # no build
    ready = [e for e in aws.jobs.timeline(second) if e["event"] == "environment ready"]
    assert ready[0]["detail"]["build"] == "skipped"
    assert "building environment" not in events(aws, second)


def test_a_recent_failed_build_fails_the_next_job_of_its_lock_without_building(
    aws: Any, env: str, tmp_path: Path
) -> None:
    from qlayer.aws.envs import FAILURE_TTL_S
    from qlayer.aws.steps import load_job

    because = "× No solution found when resolving dependencies: qlayer-test-envpkg was not found"
    aws.store.put_json(keys.env_error(env), {"env": env, "message": because, "at": time.time()})
    job_id = submit(aws, tmp_path)
    failed = load_job(LoadEvent(job_id=job_id), aws)
    assert failed["kind"] == "error" and failed["error_type"] == "EnvBuildError"
    assert because in failed["message"]
    assert because in aws.store.get_text(keys.log_key(job_id, 0, "start"))

    old = time.time() - FAILURE_TTL_S - 1  # long ago: perhaps the network's; build again
    aws.store.put_json(keys.env_error(env), {"env": env, "message": because, "at": old})
    later = submit(aws, tmp_path)
    assert load_job(LoadEvent(job_id=later), aws)["extra"] == {"build_env": env}


def test_a_stage_imports_its_environment_unpacked_once_per_process(
    aws: Any, env: str, tmp_path: Path
) -> None:
    from qlayer.aws.steps import load_job, run_stage_for
    from qlayer.program import _NAMESPACES

    aws.envs_root = tmp_path / "envs"
    build_here(aws, env, tmp_path)
    job_id = submit(aws, tmp_path)
    load_job(LoadEvent(job_id=job_id), aws)
    try:
        decision = run_stage_for(aws, job_id, 0, "start")
    finally:
        _NAMESPACES.deactivate()
    assert decision.kind == "done", decision.message
    result = aws.store.get_value(keys.job_result(job_id))
    assert result["version"] == "1.0"
    assert result["file"].startswith(str(tmp_path / "envs" / env))
    assert (tmp_path / "envs" / f"{env}.ready").is_file()
    aws.store.put_bytes(keys.env_archive(env), b"not read again: this process has it")
    assert aws.envs().path(env) == tmp_path / "envs" / env


def test_an_environment_too_big_for_the_stage_runners_tmp_moves_lambda_stages_to_batch(
    aws: Any, env: str, tmp_path: Path
) -> None:
    """The plan says so (qlayer.planner.env_on_lambda); the stage is sent on, unrun."""
    import dataclasses

    from qlayer.aws.steps import load_job, run_stage_step
    from qlayer.planner import Resources

    aws.config = dataclasses.replace(
        aws.config, resources_json=Resources(stage_tmp_mb=1024).to_json()
    )
    build_here(aws, env, tmp_path, unpacked_bytes=600 * 2**20)
    job_id = submit(aws, tmp_path)
    first = load_job(LoadEvent(job_id=job_id), aws)
    assert first["compute"]["kind"] == "lambda"
    moved = run_stage_step(StepEvent(job_id=job_id, decision=first), aws)
    assert moved["kind"] == "next" and moved["seq"] == 0 and moved["stage"] == "start"
    assert moved["compute"]["kind"] == "batch" and moved["compute"]["timeout_s"] >= 60
    assert not aws.store.exists(keys.stage_output(job_id, 0, "start"))  # nothing ran
    (note,) = [e for e in aws.jobs.timeline(job_id) if e["event"] == "moved to Batch"]
    assert "run on Batch" in note["detail"]["reason"]


def test_an_inbox_spec_whose_program_declares_requirements_is_refused(aws: Any) -> None:
    """Resolving writes envs/, which the stage runner (user code) may not: it says so."""
    from qlayer.aws.steps import prepare
    from qlayer.program import bundle, upload

    program_id = upload(aws.store, bundle(PROGRAMS / "aws_gone_package.py"))
    job_id = "inbox-env-1"
    aws.store.put_json(keys.job_input(job_id), {"program_id": program_id, "prepared": False})
    refused = prepare(aws, job_id)
    assert refused.kind == "error" and refused.error_type == "RequirementError"
    assert "qlayer client" in (refused.message or "")
