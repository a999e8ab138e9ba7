"""The qlayer command's read-only commands and its error messages (no daemon needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROGRAM = """
from qlayer import Workflow, Done, Param
wf = Workflow("cli_demo", params={"nodes": Param(int, 8, "graph size")})

@wf.stage(compute="batch", memory_mb=4096)
def only(args):
    return Done(args["nodes"])
"""


def qlayer(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qlayer.cli", *args, "--home", str(home)]
        if args[0] not in ("describe",)
        else [sys.executable, "-m", "qlayer.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_describe_shows_params_and_stages(tmp_path):
    program = tmp_path / "p.py"
    program.write_text(PROGRAM)
    done = qlayer("describe", str(program), "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["params"]["nodes"]["default"] == 8
    assert info["stages"][0]["kind"] == "batch"


def test_describe_shows_a_programs_requirements_with_its_folders(tmp_path):
    folder = tmp_path / "prog"
    folder.mkdir()
    declared = 'Workflow("cli_demo", requirements=["Pendulum>=3"],'
    (folder / "main.py").write_text(PROGRAM.replace('Workflow("cli_demo",', declared))
    (folder / "requirements.txt").write_text("tabulate==0.9.0\n")
    done = qlayer("describe", str(folder), "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["requirements"] == ["pendulum>=3", "tabulate==0.9.0"]
    shown = qlayer("describe", str(folder), home=tmp_path)
    assert "requirements: pendulum>=3, tabulate==0.9.0" in shown.stdout


def test_backends_lists_simulators_and_fake_devices(tmp_path):
    done = qlayer("backends", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    names = {b["name"]: b for b in json.loads(done.stdout)}
    assert names["aer"]["kind"] == "simulator"
    assert names["fake_brisbane"]["kind"] == "qpu"
    assert names["fake_brisbane"]["num_qubits"] == 127


def test_errors_are_one_clear_line_and_exit_1(tmp_path):
    program = tmp_path / "p.py"
    program.write_text(PROGRAM)
    # (A bad argument is checked by the daemon: tests/e2e/test_local_admission.py.)
    missing = qlayer("run", str(tmp_path / "nope.py"), home=tmp_path)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    syntax = qlayer("run", str(broken), home=tmp_path)
    assert syntax.returncode == 1
    assert "syntax error" in syntax.stderr and "line 1" in syntax.stderr
    unknown = qlayer("status", "no-such-job", home=tmp_path)
    assert unknown.returncode == 1
    assert "no job 'no-such-job'" in unknown.stderr


def test_status_says_when_the_daemon_is_not_running(tmp_path):
    from qlayer.local.client import LocalClient

    program = tmp_path / "p.py"
    program.write_text(PROGRAM)
    client = LocalClient(tmp_path / "home", autostart=False)
    job = client.run(program)
    shown = qlayer("status", job.job_id, home=tmp_path / "home")
    assert shown.returncode == 0, shown.stderr
    assert "daemon is not running" in shown.stdout
    assert "qlayer up" in shown.stdout
    as_json = json.loads(qlayer("status", job.job_id, "--json", home=tmp_path / "home").stdout)
    assert as_json["status"] == "QUEUED"
    assert as_json["daemon"] == "not running"
    listed = qlayer("jobs", home=tmp_path / "home")
    assert "daemon is not running" in listed.stdout


DECLARES_TOO_MUCH = """
from qlayer import Workflow, Done
wf = Workflow("greedy")

@wf.stage(compute="batch-gpu", gpus=64, vcpus=512, memory_mb=4096)
def only(args):
    return Done(1)
"""


def test_describe_shows_every_declared_resource_and_what_this_machine_gives(tmp_path):
    program = tmp_path / "greedy.py"
    program.write_text(DECLARES_TOO_MUCH)
    shown = qlayer("describe", str(program), home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "stage only: batch-gpu, 512 vCPU, 64 GPUs, 4096 MiB, timeout 3600 s, max_runs" in text
    assert "locally: stage 'only' (compute='batch-gpu') declares vcpus=512" in text
    assert "declares gpus=64" in text


def test_resources_this_machine_lacks_are_warned_in_status_and_timeline(tmp_path):
    from qlayer.local.client import LocalClient

    program = tmp_path / "greedy.py"
    program.write_text(DECLARES_TOO_MUCH)
    client = LocalClient(tmp_path / "home", autostart=False)
    job = client.run(program)
    warnings = job.info()["warnings"]
    assert any("declares vcpus=512" in w for w in warnings), warnings
    assert any("declares gpus=64" in w for w in warnings), warnings
    assert [e["event"] for e in job.timeline()].count("warning") == 2
    shown = " ".join(qlayer("status", job.job_id, home=tmp_path / "home").stdout.split())
    assert "warning stage 'only' (compute='batch-gpu') declares gpus=64" in shown


def test_memory_this_machine_lacks_is_refused_at_submit_leaving_nothing(tmp_path):
    import pytest

    from qlayer.errors import WorkflowError
    from qlayer.local.client import LocalClient

    program = tmp_path / "huge.py"
    program.write_text(DECLARES_TOO_MUCH.replace("memory_mb=4096", "memory_mb=10**9"))
    client = LocalClient(tmp_path / "home", autostart=False)
    with pytest.raises(WorkflowError, match=r"declares memory_mb=1000000000; this machine offers"):
        client.run(program)
    assert client.jobs() == []
    jobs_folder = client.home.artifacts / "jobs"
    assert not jobs_folder.exists() or not list(jobs_folder.iterdir())


def test_backends_table_shows_qubits_and_fits_80_columns(tmp_path):
    import os

    done = subprocess.run(
        [sys.executable, "-m", "qlayer.cli", "backends", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = {line.split()[0]: line.split() for line in lines if line.strip().startswith("fake_")}
    assert rows["fake_brisbane"][3] == "127"
    assert rows["fake_aachen"][3] == "156"  # not in any hand-kept table: read from its snapshot
    assert all(row[3].isdigit() for row in rows.values()), rows


def _aws_cli(tmp_path, *args, **env_extra):
    import os

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AWS_") and key != "QLAYER_HOME"
    }
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",  # never look for an instance role off this machine
        AWS_ENDPOINT_URL="http://127.0.0.1:9",  # the discard port: nothing listens
        AWS_MAX_ATTEMPTS="1",
        **env_extra,
    )
    return subprocess.run(
        [sys.executable, "-m", "qlayer.cli", "--target", "aws", "--region", "eu-west-1", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )


def test_aws_target_unreachable_is_one_line_saying_what_to_check(tmp_path):
    done = _aws_cli(tmp_path, "jobs", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    text = " ".join(done.stderr.split())
    assert "cannot reach AWS at http://127.0.0.1:9" in text
    assert "--region" in text and "AWS_ENDPOINT_URL" in text


def test_aws_target_without_credentials_says_how_to_give_them(tmp_path):
    done = _aws_cli(tmp_path, "jobs")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "no AWS credentials found" in " ".join(done.stderr.split())


def _home_with_a_job(home: Path) -> None:
    from qlayer.core.ports import NewJob
    from qlayer.local.client import LocalClient

    client = LocalClient(home, autostart=False)
    client.jobstore.create(NewJob("j1", "prog", "wf", {}, "aer"))
    client._conn.close()


def test_download_of_a_bad_or_missing_name_is_one_clear_line(tmp_path):
    _home_with_a_job(tmp_path)
    outside = qlayer("download", "j1", "../x", home=tmp_path)
    assert outside.returncode == 1
    assert "Traceback" not in outside.stderr
    assert "invalid file name '../x'" in outside.stderr and "qlayer files j1" in outside.stderr
    missing = qlayer("download", "j1", "nope.txt", home=tmp_path)
    assert missing.returncode == 1
    assert "job j1 saved no file named 'nope.txt'" in missing.stderr


def test_a_corrupt_state_database_says_so_and_doctor_rebuilds_it(tmp_path):
    (tmp_path / "qlayer.db").write_bytes(b"this is not a database" * 1000)
    listed = qlayer("jobs", home=tmp_path)
    assert listed.returncode == 1
    assert "Traceback" not in listed.stderr
    assert "is corrupt" in listed.stderr and "qlayer doctor --repair" in listed.stderr
    checked = qlayer("doctor", home=tmp_path)
    assert checked.returncode == 1 and "is corrupt" in checked.stdout + checked.stderr
    repaired = qlayer("doctor", "--repair", home=tmp_path)
    assert repaired.returncode == 0, repaired.stderr
    assert list(tmp_path.glob("qlayer.db.corrupt-*")), "no backup of the corrupt database"
    assert qlayer("jobs", home=tmp_path).returncode == 0
    assert qlayer("doctor", home=tmp_path).returncode == 0


def test_doctor_repair_keeps_what_can_still_be_read(tmp_path):
    _home_with_a_job(tmp_path)
    db = tmp_path / "qlayer.db"
    size = db.stat().st_size
    with open(db, "r+b") as handle:  # one page of the events table's index, say, destroyed
        handle.seek(size - 4096)
        handle.write(b"\xff" * 4096)
    repaired = qlayer("doctor", "--repair", home=tmp_path)
    assert repaired.returncode == 0, repaired.stderr
    assert qlayer("doctor", home=tmp_path).returncode == 0
    listed = qlayer("jobs", "--json", home=tmp_path)
    assert listed.returncode == 0, listed.stderr


def test_submitting_while_artifacts_cannot_be_written_is_one_clear_line(tmp_path, monkeypatch):
    # Root ignores chmod: the store's fault hook makes every artifact write fail with EROFS.
    fault = tmp_path / "fault"
    fault.write_text("EROFS")
    monkeypatch.setenv("QLAYER_FAULT_FILE", str(fault))
    program = tmp_path / "p.py"
    program.write_text(PROGRAM)
    done = qlayer("run", str(program), home=tmp_path / "home")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "cannot write" in done.stderr and "Read-only file system" in done.stderr
    assert "artifacts" in done.stderr


def test_progress_off_a_terminal_prints_phases_at_once_and_counters_now_and_then():
    """A log file gets one line per status or stage, and the items counter at most every
    ten seconds (a 3,000-child fan-out printed some 300 lines)."""
    from qlayer.cli_app import plain_progress

    lines: list[str] = []
    now = [0.0]
    update = plain_progress(lines.append, every_s=10.0, clock=lambda: now[0])
    update({"status": "RUNNING", "stage": "spread", "seq": 0})
    for done in range(0, 3001, 10):
        now[0] += 0.1
        update(
            {
                "status": "RUNNING",
                "stage": "child",
                "seq": 1,
                "children": {"done": done, "total": 3000},
            }
        )
    update({"status": "RUNNING", "stage": "collect", "seq": 2})
    update({"status": "DONE", "stage": None, "seq": None})
    update({"status": "DONE", "stage": None, "seq": None})
    child = [line for line in lines if "stage child" in line]
    assert 3 <= len(child) <= 4 and "items 0/3000" in child[0]  # 30 s of counting: ~3 lines
    assert "spread" in lines[0] and "collect" in lines[-2] and "DONE" in lines[-1]
    assert len(lines) == len(child) + 3
