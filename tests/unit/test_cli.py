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
    bad_type = qlayer("run", str(program), "--arg", "nodes=eight", home=tmp_path)
    assert bad_type.returncode == 1
    assert "argument 'nodes' must be int" in bad_type.stderr
    assert "Traceback" not in bad_type.stderr
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
    assert "invalid file path '../x'" in outside.stderr and "qlayer files j1" in outside.stderr
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
