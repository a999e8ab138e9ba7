"""The home's store holds a quick step's small writes for the daemon to commit as rows
(:mod:`qlayer.local.artifacts`); what must survive a kill, or is large, goes to files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qlayer.local import state
from qlayer.local.artifacts import (
    HOLD_MAX_BYTES,
    HomeStore,
    decode_records,
    encode_records,
    forget_rows,
    rows_size,
)

LOG = "jobs/j/logs/0000-child.log"
OUTPUT = "jobs/j/stages/0000-child/output.json"
RESULT = "jobs/j/result.json"


@pytest.fixture
def home(tmp_path: Path) -> tuple[HomeStore, HomeStore]:
    """The daemon's store (its connection writes rows) and a worker's (it holds)."""
    conn = state.connect(tmp_path / "qlayer.db")
    daemon = HomeStore(tmp_path / "artifacts", tmp_path / "qlayer.db", conn)
    worker = HomeStore(tmp_path / "artifacts", tmp_path / "qlayer.db")
    return daemon, worker


def files(store: HomeStore) -> list[str]:
    return store.folder.list("")


def test_a_quick_steps_writes_are_rows_committed_with_the_step(home):
    daemon, worker = home
    with worker.hold() as records:
        worker.append_text(LOG, "stage child started\n")
        worker.put_value(RESULT, [1, 2], where="test")
        worker.put_json(OUTPUT, {"kind": "done"})
        worker.append_text(LOG, "stage child finished\n")
        assert worker.get_json(OUTPUT) == {"kind": "done"}  # it reads what it holds
        assert files(worker) == []
    assert set(records) == {LOG, OUTPUT, RESULT}
    assert files(worker) == []  # not a folder, not a file
    with state.transaction(daemon._rows()):  # type: ignore[arg-type]
        daemon.commit_rows(decode_records(encode_records(records)))  # as the reply carries it
    assert daemon.get_value(RESULT) == [1, 2]
    assert worker.get_text(LOG) == "stage child started\nstage child finished\n"
    assert daemon.list("jobs/j/") == sorted([LOG, OUTPUT, RESULT])
    assert files(daemon) == []


def test_the_stages_own_output_is_written_out_at_once(home):
    _daemon, worker = home
    with worker.hold() as records:
        worker.append_text(LOG, "stage child started\n")
        worker.append_text(LOG, "the stage's own line\n")
        worker.make_durable(LOG)
        assert worker.folder.get_text(LOG) == "stage child started\nthe stage's own line\n"
        worker.put_json(OUTPUT, {"kind": "done"})  # and every later write of the step
        assert worker.folder.exists(OUTPUT)
    assert records == {}


def test_a_large_write_goes_to_its_file_with_the_rest(home):
    _daemon, worker = home
    with worker.hold() as records:
        worker.append_text(LOG, "started\n")
        worker.put_bytes(RESULT, b"x" * (HOLD_MAX_BYTES + 1))
    assert records == {}
    assert worker.folder.get_bytes(RESULT) == b"x" * (HOLD_MAX_BYTES + 1)
    assert worker.folder.get_text(LOG) == "started\n"


def test_a_step_that_runs_on_is_written_out(home):
    _daemon, worker = home
    with worker.hold() as records:
        worker.append_text(LOG, "stage child started\n")
        deadline = time.monotonic() + 10
        while not worker.folder.exists(LOG) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.folder.get_text(LOG) == "stage child started\n"  # live, as a file
    assert records == {}


def test_files_a_stage_saves_are_never_held(home):
    _daemon, worker = home
    with worker.hold() as records:
        worker.put_bytes("jobs/j/files/plot.png", b"png")
        assert worker.folder.get_bytes("jobs/j/files/plot.png") == b"png"
    assert records == {}


def test_a_log_an_earlier_attempt_left_as_a_file_is_appended_there(home):
    _daemon, worker = home
    worker.folder.append_text(LOG, "attempt 1\n")
    with worker.hold():
        worker.append_text(LOG, "attempt 2\n")
        assert worker.folder.get_text(LOG) == "attempt 1\nattempt 2\n"


def test_a_step_that_raises_writes_out_what_it_held(home):
    _daemon, worker = home
    with pytest.raises(RuntimeError), worker.hold():
        worker.append_text(LOG, "started\n")
        raise RuntimeError("a bug")
    assert worker.folder.get_text(LOG) == "started\n"


def test_a_write_to_a_key_that_is_a_row_changes_the_row(home):
    daemon, worker = home
    with worker.hold() as records:
        worker.append_text(LOG, "held\n")
        worker.put_json(OUTPUT, {"kind": "done"})
    with state.transaction(daemon._rows()):  # type: ignore[arg-type]
        daemon.commit_rows(records)
    daemon.append_text(LOG, "a note of the daemon's\n")
    assert worker.get_text(LOG) == "held\na note of the daemon's\n"
    daemon.put_json(OUTPUT, {"kind": "error"})  # a file now; the row must not hide it
    assert worker.get_json(OUTPUT) == {"kind": "error"}
    daemon.delete(LOG)
    assert not worker.exists(LOG)


def test_a_jobs_rows_go_with_its_tree(home):
    daemon, worker = home
    with worker.hold() as records:
        worker.put_json(OUTPUT, {"kind": "done"})
        worker.put_json("jobs/j_1_0/result.json", 1)
    conn = daemon._rows()
    assert conn is not None
    with state.transaction(conn):
        daemon.commit_rows(records)
    assert rows_size(conn, "jobs/j/") == len(b'{"kind":"done"}')
    forget_rows(conn, "jobs/j/")
    assert daemon.list("jobs/j/") == []
    assert daemon.list("jobs/j_1_0/") == ["jobs/j_1_0/result.json"]  # a neighbour stays


def test_a_stage_that_forks_writes_out_and_its_children_write_files(home):
    import os

    _daemon, worker = home
    with worker.hold() as records:
        worker.append_text(LOG, "stage child started\n")
        pid = os.fork()
        if pid == 0:  # the forked child: its writes are files, nothing held
            try:
                worker.append_text(LOG, "a line of the forked child\n")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        worker.append_text(LOG, "stage child finished\n")
    assert records == {}
    assert worker.folder.get_text(LOG) == (
        "stage child started\na line of the forked child\nstage child finished\n"
    )


def test_a_database_without_rows_is_read_as_files_only(tmp_path):
    # A worker's store reads rows from the home's database; one not made yet (or made by
    # an older qlayer) must not fail every read: the zygote test's worker met this.
    store = HomeStore(tmp_path / "artifacts", tmp_path / "missing.db")
    store.folder.put_json(OUTPUT, {"kind": "done"})
    assert store.get_json(OUTPUT) == {"kind": "done"}
    assert store.list("jobs/j/") == [OUTPUT]
    assert not (tmp_path / "missing.db").exists()  # not made by reading
