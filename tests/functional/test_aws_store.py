"""S3Store against moto (mock_aws): the ArtifactStore contract on S3."""

from __future__ import annotations

import pytest
from aws_fixtures import BUCKET

from qlayer.aws.store import S3Store
from qlayer.errors import ArtifactError


def test_bytes_json_exists_list(aws):
    """moto: put/get/exists/list over the key layout."""
    store = aws.store
    store.put_bytes("jobs/a/x.bin", b"\x00\x01")
    store.put_json("jobs/a/stages/0000-build/output.json", {"kind": "done"})
    assert store.get_bytes("jobs/a/x.bin") == b"\x00\x01"
    assert store.get_json("jobs/a/stages/0000-build/output.json") == {"kind": "done"}
    assert store.exists("jobs/a/x.bin") and not store.exists("jobs/a/nope")
    assert store.list("jobs/a/") == ["jobs/a/stages/0000-build/output.json", "jobs/a/x.bin"]
    assert store.list("jobs/b/") == []


def test_missing_key_is_an_artifact_error(aws):
    """moto: a missing object raises ArtifactError naming the key."""
    with pytest.raises(ArtifactError, match=r"jobs/a/missing\.json does not exist"):
        aws.store.get_json("jobs/a/missing.json")


def test_append_text_tags_logs(aws):
    """moto: logs are appended (read-modify-write) and tagged for the lifecycle rule."""
    store = aws.store
    store.append_text("jobs/a/logs/0000-build.log", "one\n")
    store.append_text("jobs/a/logs/0000-build.log", "two\n")
    assert store.get_text("jobs/a/logs/0000-build.log") == "one\ntwo\n"
    tags = store.client.get_object_tagging(Bucket=BUCKET, Key="jobs/a/logs/0000-build.log")[
        "TagSet"
    ]
    assert {"Key": "qlayer-artifact", "Value": "log"} in tags


def test_values_and_prefix(aws):
    """moto: codec values round-trip; a prefix keeps keys apart."""
    store = S3Store(BUCKET, aws.store.client, prefix="tenant/")
    store.put_value("jobs/a/result.json", {"x": 1.5, "t": (1, 2)}, where="test")
    assert store.get_value("jobs/a/result.json") == {"x": 1.5, "t": (1, 2)}
    assert aws.store.exists("tenant/jobs/a/result.json")
    assert store.list("jobs/") == ["jobs/a/result.json"]
    with pytest.raises(ArtifactError):
        store.put_bytes("../escape", b"")


def test_delete_removes_one_key(aws):
    """moto: delete removes the key (the Serverless gateway's file delete), others stay."""
    store = aws.store
    store.put_bytes("serverless/files/_/f/a.txt", b"a")
    store.put_bytes("serverless/files/_/f/b.txt", b"b")
    store.delete("serverless/files/_/f/a.txt")
    store.delete("serverless/files/_/f/missing.txt")  # nothing to delete: no error
    assert store.list("serverless/files/_/f/") == ["serverless/files/_/f/b.txt"]


def test_download_file_is_bounded_and_upload_file_round_trips(aws, tmp_path):
    """moto: an object larger than the bound is refused before any byte is written."""
    store = aws.store
    (tmp_path / "up.bin").write_bytes(b"x" * 5000)
    store.upload_file("envs/abcdefabcdefabcd/env.tar.gz", tmp_path / "up.bin")
    assert store.size("envs/abcdefabcdefabcd/env.tar.gz") == 5000
    assert store.size("envs/abcdefabcdefabcd/none") is None
    got = tmp_path / "down.bin"
    assert store.download_file("envs/abcdefabcdefabcd/env.tar.gz", got, max_bytes=5000) == 5000
    assert got.read_bytes() == b"x" * 5000
    with pytest.raises(ArtifactError, match="larger than the limit of 4999 bytes"):
        store.download_file("envs/abcdefabcdefabcd/env.tar.gz", tmp_path / "no", max_bytes=4999)
    assert not (tmp_path / "no").exists()
    with pytest.raises(ArtifactError, match="does not exist"):
        store.download_file("envs/abcdefabcdefabcd/none", tmp_path / "no", max_bytes=10)
