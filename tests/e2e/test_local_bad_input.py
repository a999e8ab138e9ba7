"""Bad input and misbehaving stages: each ends with a clear error, and other jobs are unharmed.

Every test runs a good job alongside the bad one and checks that it finishes DONE.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers
from helpers import CHAIN, FAULTY, TRIVIAL

from qlayer import keys
from qlayer.errors import ArgumentError, ArtifactError, BackendError, JobFailed, ProgramError
from qlayer.status import JobStatus


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # One daemon for the module: these tests also prove that one bad job does not
    # disturb the daemon serving the others.
    yield from helpers.local_client(tmp_path_factory.mktemp("bad-input") / "home")


@pytest.fixture
def good(client):
    """A good job running alongside the bad one; it must end DONE."""
    job = client.run(TRIVIAL, {"x": 21})
    yield job
    assert job.result(timeout=120) == {"x": 21, "double": 42}


def failed(job, timeout: float = 120) -> JobFailed:
    with pytest.raises(JobFailed) as caught:
        job.result(timeout=timeout)
    assert job.status() == JobStatus.ERROR
    error = caught.value
    info = job.info()
    assert info["message"], "an ERROR without a message"
    assert info["error_type"]
    assert info["message"] in str(error)
    return error


# -- a stage that raises --------------------------------------------------------------
def test_stage_raises(client, good):
    job = client.run(FAULTY, {"mode": "raise", "n": 7})
    error = failed(job)
    assert "boom 7 went the stage" in str(error)
    assert job.info()["error_type"] == "ValueError"
    assert job.info()["message"] == "boom 7 went the stage"
    logs = job.logs()
    assert "Traceback (most recent call last)" in logs
    assert "ValueError: boom 7 went the stage" in logs
    assert "faulty.py" in logs


def test_stage_raises_empty_message(client, good):
    job = client.run(FAULTY, {"mode": "raise_empty"})
    error = failed(job)
    message = job.info()["message"]
    assert message == (
        "ValueError raised with no message in stage 'start' at faulty.py, line 36, in start; "
        "job.logs() has the traceback"
    )
    assert "ValueError" in str(error)
    assert "Traceback (most recent call last)" in job.logs()


# -- rejected at submit ---------------------------------------------------------------
def test_missing_program(client, good, tmp_path):
    with pytest.raises(ProgramError, match="does not exist"):
        client.run(tmp_path / "nowhere.py")


def test_syntax_error(client, good, tmp_path):
    program = tmp_path / "broken.py"
    program.write_text(
        "from qlayer import Workflow\n\nwf = Workflow('broken')\n\ndef oops(:\n    pass\n"
    )
    with pytest.raises(ProgramError) as caught:
        client.run(program)
    assert "broken.py" in str(caught.value)
    assert "line 5" in str(caught.value)


def test_wrong_argument_types(client, good):
    with pytest.raises(ArgumentError, match="'x'"):
        client.run(TRIVIAL, {"x": "not a number"})
    with pytest.raises(ArgumentError, match=r"unknown argument\(s\) y"):
        client.run(TRIVIAL, {"y": 1})


def test_unknown_backend_at_submit(client, good):
    with pytest.raises(BackendError) as caught:
        client.run(TRIVIAL, {"x": 1}, backend="nope")
    assert "aer" in str(caught.value) and "fake_" in str(caught.value)


# -- errors inside the job ------------------------------------------------------------
@pytest.mark.parametrize(
    "mode, role", [("next_nope", "Next(stage"), ("execute_nope", "Execute(then")]
)
def test_unknown_stage_name(client, good, mode, role):
    job = client.run(FAULTY, {"mode": mode})
    error = failed(job)
    assert role in str(error)
    assert "'nope'" in str(error)
    assert "start, looping, sleepy, hungry, after, child, gather" in str(error)


def test_unserialisable_output(client, good):
    job = client.run(FAULTY, {"mode": "unserialisable"})
    error = failed(job)
    assert "Opaque" in str(error)
    assert "'start'" in str(error)


def test_circuit_too_large_for_any_tier(client, good):
    job = client.run(FAULTY, {"mode": "too_large"})
    error = failed(job, timeout=60)
    assert job.info()["error_type"] == "PlannerError"
    assert "60 active qubits" in str(error)
    assert not helpers.device_rows(client, job.job_id)  # refused before any submission


def test_unknown_backend_in_execute(client, good):
    job = client.run(FAULTY, {"mode": "backend_nope"})
    error = failed(job)
    assert job.info()["error_type"] == "BackendError"
    assert "'nope'" in str(error)


# -- corrupted artifacts --------------------------------------------------------------
def test_corrupted_stage_input(tmp_path):
    # The daemon is down while the job's input gets corrupted, then it starts.
    for client in helpers.local_client(tmp_path / "home", autostart=False):
        bad = client.run(FAULTY, {"mode": "ok", "n": 3})
        good = client.run(TRIVIAL, {"x": 2})
        path = client.store.path(keys.stage_input(bad.job_id, 0, "start"))
        path.write_bytes(b"\x00garbage{{{")
        client.up()
        error = failed(bad)
        assert "corrupted" in str(error)
        assert good.result(timeout=120) == {"x": 2, "double": 4}


@pytest.mark.slow
def test_corrupted_input_of_a_running_stage(tmp_path):
    # measure waits at its marker; its input is overwritten with garbage and its worker
    # is killed: the retry must stop with a clear error, not run on garbage or hang.
    markers = tmp_path / "markers"
    markers.mkdir()
    for client in helpers.local_client(tmp_path / "home"):
        job = client.run(CHAIN, {"markers": str(markers), "wait_at": "measure"})
        good = client.run(TRIVIAL, {"x": 4})
        helpers.wait_file(markers / f"{job.job_id}.measure.started", "measure to start")
        client.store.path(keys.stage_input(job.job_id, 2, "measure")).write_text(
            "garbage, not JSON"
        )
        helpers.kill_hard(helpers.started_worker(job, "measure"))
        (markers / "go").touch()
        error = failed(job)
        assert "corrupted" in str(error)
        assert job.info()["error_type"] == "ArtifactError"
        assert good.result(timeout=120) == {"x": 4, "double": 8}


@pytest.mark.slow
def test_corrupted_execute_request(tmp_path):
    # The daemon dies while the device job runs; its request is corrupted before restart.
    for client in helpers.local_client(tmp_path / "home"):
        job = client.run(CHAIN, {"qubits": 22, "layers": 12, "shots": 32})
        helpers.wait_device_running(client, job.job_id)
        helpers.kill_daemon(client)
        # through the store: the request may be a file or a row (qlayer.local.artifacts)
        client.store.put_bytes(keys.execute_request(job.job_id, 1), b"\xff\xfe garbage")
        good = client.run(TRIVIAL, {"x": 1})  # restarts the daemon
        error = failed(job)
        assert "corrupted" in str(error)
        [row] = helpers.device_rows(client, job.job_id)
        assert row["status"] == "ERROR"
        assert good.result(timeout=120) == {"x": 1, "double": 2}


def test_corrupted_result(client, good):
    job = client.run(TRIVIAL, {"x": 5})
    assert job.result(timeout=120) == {"x": 5, "double": 10}
    client.store.put_bytes(keys.job_result(job.job_id), b"{not json")  # a file or a row
    with pytest.raises(ArtifactError, match="corrupted"):
        job.result(timeout=10)


# -- limits ---------------------------------------------------------------------------
@pytest.mark.slow
def test_stage_timeout(client, good):
    job = client.run(FAULTY, {"mode": "sleep"})
    error = failed(job)
    assert "timeout" in str(error).lower()
    assert job.info()["error_type"] == "Timeout"
    assert "timeout" in job.logs().lower()


def test_stage_memory_limit(client, good):
    job = client.run(FAULTY, {"mode": "memory"})
    error = failed(job)
    assert "memory" in str(error).lower()
    assert "memory_mb=300" in str(error)
    # The daemon is healthy afterwards.
    assert client.run(FAULTY, {"mode": "ok", "n": 9}).result(timeout=120) == {"n": 9}


def test_max_runs(client, good):
    job = client.run(FAULTY, {"mode": "loop"})
    error = failed(job)
    assert job.info()["error_type"] == "MaxRunsExceeded"
    assert "max_runs" in str(error)
    assert "'looping'" in str(error)


@pytest.mark.slow
def test_stage_that_kills_its_worker(client, good):
    job = client.run(FAULTY, {"mode": "crash"})
    error = failed(job)
    assert job.info()["error_type"] == "WorkerDied"
    assert "died 3 times: attempts 1 (signal 9), 2 (signal 9), 3 (signal 9)." in str(error)
    assert "memory_mb" in str(error)
    assert sum(e["event"] == "worker died, retrying" for e in job.timeline()) == 2
