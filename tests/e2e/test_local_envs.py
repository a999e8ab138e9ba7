"""Per-program environments on the local substrate (issue 10).

These build real environments with uv from the package index (small pure-Python
packages, and pendulum), so they are marked slow: each first build takes seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from qlayer import keys
from qlayer.envs import Base, Lock, spec_hash
from qlayer.errors import JobFailed, RequirementError
from qlayer.status import JobStatus

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers

pytestmark = pytest.mark.slow

PENDULUM = """
from qlayer import Done, Workflow

wf = Workflow("needs-pendulum", requirements=["pendulum>=3"])


@wf.stage()
def start(args):
    import pendulum  # a requirement: imported inside the stage

    day = pendulum.datetime(2026, 1, 31).add(months=1)
    return Done({"day": day.to_date_string(), "version": pendulum.__version__})
"""

# Meets its twin: each waits for the other's flag, so both must run at the same time.
TABULATE = """
import time
from pathlib import Path

from qlayer import Done, Workflow

wf = Workflow("tab-{me}"{declared})


@wf.stage()
def start(args):
    import tabulate

    folder = Path(args["meet"])
    (folder / "{me}").write_text(tabulate.__version__)
    for _ in range(1200):
        if (folder / "{other}").exists():
            break
        time.sleep(0.05)
    else:
        raise RuntimeError("the other program never ran beside this one")
    return Done({{"version": tabulate.__version__, "file": tabulate.__file__}})
"""

FANOUT = """
from qlayer import Done, FanOut, Workflow

wf = Workflow("days", requirements=["pendulum>=3"])


@wf.stage()
def spread(args):
    return FanOut([1, 2, 3], stage="child", then="collect")


@wf.stage()
def child(months):
    import pendulum

    return Done(pendulum.datetime(2026, 1, 31).add(months=months).to_date_string())


@wf.stage()
def collect(days):
    return Done(days)
"""

TABULATE_PLAIN = """
from qlayer import Done, Workflow

wf = Workflow("tabulated")


@wf.stage()
def start(args):
    import tabulate

    return Done(tabulate.__version__)
"""

PLAIN = """
from qlayer import Done, Workflow

wf = Workflow("plain")


@wf.stage()
def start(args):
    seen = {}
    for name in ("tabulate", "pendulum"):
        try:
            __import__(name)
            seen[name] = "imported"
        except ModuleNotFoundError:
            seen[name] = "missing"
    return Done(seen)
"""


def program(root: Path, main: str, **files: str) -> Path:
    root.mkdir(parents=True)
    (root / "main.py").write_text(main)
    for name, text in files.items():
        (root / name.replace("_txt", ".txt")).write_text(text)
    return root


def events(job) -> list[str]:
    return [e["event"] for e in job.timeline()]


@pytest.fixture
def client(tmp_path):
    yield from helpers.local_client(tmp_path / "home", workers=2)


def test_a_program_needing_pendulum_runs_and_the_second_job_skips_the_build(client, tmp_path):
    prog = program(tmp_path / "p", PENDULUM)
    seen: list[str] = []
    first = client.run(prog)
    result = first.result(timeout=300, progress=lambda info: seen.append(info["status"]))
    assert result["day"] == "2026-02-28" and result["version"].startswith("3.")
    assert "building environment" in events(first) and "environment ready" in events(first)
    env = client.jobstore.get(first.job_id).env
    assert env and (client.home.envs / env / "site").is_dir()
    assert first.info()["env"] == env  # `qlayer status --json`
    built = json.loads((client.home.envs / env / "env.json").read_text())
    assert any(pin.startswith("pendulum==") for pin in built["install"])
    assert not any(pin.startswith(("qiskit", "numpy")) for pin in built["install"])

    second = client.run(prog)
    assert second.result(timeout=120)["day"] == "2026-02-28"
    assert client.jobstore.get(second.job_id).env == env
    assert "building environment" not in events(second)
    started = [e for e in second.timeline() if e["event"] == "started"]
    assert started[0]["detail"]["env"] == env
    assert json.loads((client.home.envs / env / "env.json").read_text()) == built  # not rebuilt
    assert JobStatus.BUILDING.value in seen  # what `--wait` and `status` showed


def test_jobs_waiting_for_one_lock_share_one_build_and_children_share_the_env(tmp_path):
    # Submitted while no daemon runs, so that all of them wait for the same build.
    clients = helpers.local_client(tmp_path / "home", workers=2, autostart=False)
    client = next(clients)
    try:
        prog = program(tmp_path / "p", PENDULUM)
        days = program(tmp_path / "days", FANOUT)
        jobs = [client.run(prog), client.run(prog), client.run(days)]
        assert len({client.jobstore.get(j.job_id).env for j in jobs}) == 1
        client.up()
        assert jobs[0].result(timeout=300)["day"] == jobs[1].result(timeout=120)["day"]
        assert jobs[2].result(timeout=120) == ["2026-02-28", "2026-03-31", "2026-04-30"]
        ready = [
            e["detail"] for j in jobs for e in j.timeline() if e["event"] == "environment ready"
        ]
        assert len(ready) == 3 and len({d["build_s"] for d in ready}) == 1  # one build
        env = ready[0]["env"]
        assert [c.env for c in client.jobstore.children(jobs[2].job_id)] == [env] * 3
        assert [p.name for p in client.home.envs.iterdir()] == [env]
    finally:
        clients.close()


def test_a_daemon_killed_mid_build_leaves_nothing_half_built_and_builds_again(
    client, tmp_path, monkeypatch
):
    from qlayer.envs import lock_for
    from qlayer.envs.uv import uv_bin

    prog = program(tmp_path / "p", TABULATE_PLAIN, requirements_txt="tabulate==0.9.0\n")
    lock = lock_for(client.store, ["tabulate==0.9.0"])  # resolved now: the daemon won't
    assert lock is not None
    # The installer, held up before it starts (the outer edge: uv is another program).
    slow = tmp_path / "slow-uv"
    slow.write_text(
        f"#!/bin/sh\necho $$ > {tmp_path / 'uv.pid'}\n"
        "i=0; while [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n"
        f'exec {uv_bin()} "$@"\n'
    )
    slow.chmod(0o700)
    monkeypatch.setenv("QLAYER_UV", str(slow))
    job = client.run(prog)
    helpers.wait_for(lambda: (tmp_path / "uv.pid").exists(), 60, "the build to start")
    assert client.jobstore.get(job.job_id).status == JobStatus.BUILDING
    installer = int((tmp_path / "uv.pid").read_text())
    helpers.kill_daemon(client)  # and its children: the installer dies with it
    assert not helpers.alive(installer)
    assert not (client.home.envs / lock.hash).exists()  # nothing half-built in use
    assert next(p.name for p in client.home.envs.iterdir()).startswith(".building-")
    monkeypatch.delenv("QLAYER_UV")
    client.up()
    assert job.result(timeout=300) == "0.9.0"
    assert [p.name for p in client.home.envs.iterdir()] == [lock.hash]
    assert "recovered after restart" not in events(job)  # no stage had started


def test_prune_reclaims_environments_no_live_job_uses(client, tmp_path):
    done = client.run(program(tmp_path / "p", PENDULUM))
    done.result(timeout=300)
    env = client.jobstore.get(done.job_id).env
    assert env and (client.home.envs / env).is_dir()
    report = client.prune(older_than_s=0, dry_run=True)
    assert report.envs == [env] and (client.home.envs / env).is_dir()
    report = client.prune(older_than_s=0)
    assert report.envs == [env] and report.env_bytes > 0
    assert not (client.home.envs / env).exists()
    again = client.run(program(tmp_path / "p2", PENDULUM))  # the same lock: built again
    assert again.result(timeout=300)["day"] == "2026-02-28"
    assert "building environment" in events(again)


def test_two_pins_of_one_package_side_by_side_and_a_plain_program_sees_neither(client, tmp_path):
    meet = tmp_path / "meet"
    meet.mkdir()
    old = program(
        tmp_path / "old",
        TABULATE.format(me="old", other="new", declared=""),
        requirements_txt="tabulate==0.8.10\n",
    )
    new = program(
        tmp_path / "new",
        TABULATE.format(me="new", other="old", declared=', requirements=["tabulate==0.9.0"]'),
    )
    a = client.run(old, {"meet": str(meet)})
    b = client.run(new, {"meet": str(meet)})
    assert a.result(timeout=300)["version"] == "0.8.10"
    assert b.result(timeout=300)["version"] == "0.9.0"
    env_a = client.jobstore.get(a.job_id).env
    env_b = client.jobstore.get(b.job_id).env
    assert env_a and env_b and env_a != env_b
    assert str(client.home.envs / env_a) in a.result()["file"]
    # Both workers now run an environment each; the plain program gets a fresh one.
    plain = client.run(program(tmp_path / "plain", PLAIN))
    assert plain.result(timeout=120) == {"tabulate": "missing", "pendulum": "missing"}
    assert client.jobstore.get(plain.job_id).env is None


def test_bad_requirements_are_refused_at_submit_with_the_reason(client, tmp_path):
    running = client.run(program(tmp_path / "plain", PLAIN))
    missing = program(
        tmp_path / "missing", PENDULUM.replace('"pendulum>=3"', '"qlayer-no-such-package-xyz"')
    )
    with pytest.raises(RequirementError, match="not found in the package registry"):
        client.run(missing)
    clash = program(tmp_path / "clash", PLAIN, requirements_txt="qiskit<2\n")
    with pytest.raises(RequirementError, match=r"qiskit<2 \(the base has qiskit 2\."):
        client.run(clash)
    assert running.result(timeout=120)["tabulate"] == "missing"


def test_a_build_that_fails_ends_the_job_before_any_stage_and_others_go_on(client, tmp_path):
    # A lock resolved earlier whose pin the index no longer has (a yanked or deleted
    # release): the submission reads it, and the build fails with uv's reason.
    base = Base.current()
    lock = Lock(("tabulate>=0.1",), ("tabulate==0.0.1",), (), base.identity())
    client.store.put_json(keys.env_lock(lock.hash), lock.to_json())
    client.store.put_json(
        keys.env_resolution(spec_hash(lock.requirements, base)),
        {"env": lock.hash, "requirements": list(lock.requirements)},
    )
    other = client.run(program(tmp_path / "plain", PLAIN))
    doomed = client.run(program(tmp_path / "doomed", PLAIN, requirements_txt="tabulate>=0.1\n"))
    with pytest.raises(JobFailed) as failed:
        doomed.result(timeout=300)
    record = client.jobstore.get(doomed.job_id)
    assert record.error_type == "EnvBuildError"
    assert "tabulate==0.0.1" in failed.value.reason
    assert "started" not in events(doomed)
    assert "building environment" in events(doomed)
    assert not (client.home.envs / lock.hash).exists()
    assert other.result(timeout=120)["pendulum"] == "missing"
    assert "building environment" in doomed.logs()
