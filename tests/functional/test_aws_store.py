"""S3Store against moto (mock_aws): what is S3's own (log tags, prefixes, bounds); the
port's contract runs on S3 in tests/contract/test_store_contract.py."""

from __future__ import annotations

import pytest
from aws_fixtures import BUCKET

from qlayer.aws.store import S3Store
from qlayer.errors import ArtifactError


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
