"""The artifact store port (:class:`qlayer.store.base.ArtifactStore`), on every store.

``folder`` is the plain folder; ``home`` the local home's store (rows of the state
database and files) as the daemon and a client use it; ``held`` the same store while a
worker holds a step's writes (:mod:`qlayer.local.artifacts`); ``s3`` the bucket (moto,
in this process). Keys are given as folders would read them (``jobs/a/``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qlayer.errors import ArtifactError

REGION = "us-east-1"


@pytest.fixture(params=["folder", "home", "held", pytest.param("s3", marks=pytest.mark.moto)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "folder":
        from qlayer.store.local import FolderStore

        yield FolderStore(tmp_path / "artifacts")
        return
    if request.param in ("home", "held"):
        from qlayer.local import state
        from qlayer.local.artifacts import HomeStore

        conn = state.connect(tmp_path / "qlayer.db")
        if request.param == "home":
            yield HomeStore(tmp_path / "artifacts", tmp_path / "qlayer.db", conn)
            return
        worker = HomeStore(tmp_path / "artifacts", tmp_path / "qlayer.db")
        with worker.hold():
            yield worker
        return
    import boto3
    from moto import mock_aws

    from qlayer.aws.store import S3Store

    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket="contract")
        yield S3Store("contract", client)


def test_a_written_key_reads_back_and_is_listed(store):
    store.put_bytes("jobs/a/x.bin", b"\x00\x01")
    store.put_json("jobs/a/stages/0000-build/output.json", {"kind": "done"})
    assert store.get_bytes("jobs/a/x.bin") == b"\x00\x01"
    assert store.get_json("jobs/a/stages/0000-build/output.json") == {"kind": "done"}
    assert store.exists("jobs/a/x.bin") and not store.exists("jobs/a/nope")
    assert store.list("jobs/a/") == ["jobs/a/stages/0000-build/output.json", "jobs/a/x.bin"]
    assert store.list("jobs/b/") == []


def test_a_prefix_keeps_its_neighbours_out(store):
    store.put_bytes("jobs/a/result.json", b"1")
    store.put_bytes("jobs/a_1_0/result.json", b"2")
    assert store.list("jobs/a/") == ["jobs/a/result.json"]
    assert store.list("jobs/a_1_0/") == ["jobs/a_1_0/result.json"]


def test_a_write_replaces_what_was_there(store):
    store.put_bytes("jobs/a/result.json", b"old")
    store.put_bytes("jobs/a/result.json", b"new")
    assert store.get_bytes("jobs/a/result.json") == b"new"
    assert store.list("jobs/a/") == ["jobs/a/result.json"]


def test_a_missing_key_is_an_artifact_error_naming_it(store):
    with pytest.raises(ArtifactError, match=r"jobs/a/missing\.json does not exist"):
        store.get_bytes("jobs/a/missing.json")


def test_appends_add_up_in_order(store):
    store.append_text("jobs/a/logs/0000-build.log", "one\n")
    store.append_text("jobs/a/logs/0000-build.log", "two ✓\n")
    assert store.get_text("jobs/a/logs/0000-build.log") == "one\ntwo ✓\n"
    assert store.list("jobs/a/logs/") == ["jobs/a/logs/0000-build.log"]


def test_values_round_trip_through_the_codec(store):
    store.put_value("jobs/a/result.json", {"x": 1.5, "t": (1, 2)}, where="test")
    assert store.get_value("jobs/a/result.json") == {"x": 1.5, "t": (1, 2)}


def test_a_key_that_escapes_is_refused(store):
    with pytest.raises(ArtifactError):
        store.put_bytes("../escape", b"")


def test_a_deleted_key_is_gone(store):
    store.put_bytes("jobs/a/x.bin", b"x")
    store.delete("jobs/a/x.bin")
    assert not store.exists("jobs/a/x.bin")
    assert store.list("jobs/a/") == []
    store.delete("jobs/a/never")  # nothing to delete: no error


def test_what_is_made_durable_still_reads_back(store):
    store.append_text("jobs/a/logs/0000-build.log", "a line\n")
    store.make_durable("jobs/a/logs/0000-build.log")
    store.append_text("jobs/a/logs/0000-build.log", "another\n")
    assert store.get_text("jobs/a/logs/0000-build.log") == "a line\nanother\n"
