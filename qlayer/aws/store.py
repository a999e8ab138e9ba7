"""The artifact store on S3: one bucket, the key layout of :mod:`qlayer.keys`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlayer.errors import ArtifactError
from qlayer.store.base import ArtifactStore

#: Log objects carry this tag so a lifecycle rule can expire their old versions
#: (every append rewrites the object and leaves a noncurrent version behind).
LOG_TAGGING = "qlayer-artifact=log"


class S3Store(ArtifactStore):
    """Artifacts as objects in ``bucket``.

    Args:
        bucket: The artifacts bucket.
        client: A boto3 S3 client (injected; never created at import).
        prefix: Optional key prefix inside the bucket (tests, shared buckets).

    S3 writes are atomic per object (a reader sees the old or the new object), which
    is what :class:`ArtifactStore` asks. ``append_text`` is a read-modify-write and is
    only used for logs, which have one writer at a time (the step that owns them).
    """

    def __init__(self, bucket: str, client: Any, *, prefix: str = "") -> None:
        if not bucket:
            raise ValueError("S3Store needs a bucket name")
        self.bucket = bucket
        self.client = client
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ArtifactError(f"invalid artifact key {key!r}")
        return self.prefix + key

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise ArtifactError(
                f"artifact {key} does not exist (s3://{self.bucket}/{self._key(key)})"
            ) from None
        data: bytes = response["Body"].read()
        return data

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if there is none."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return int(head["ContentLength"])

    def download_file(self, key: str, path: Path, *, max_bytes: int) -> int:
        """Stream object ``key`` into ``path``; refuse one larger than ``max_bytes``.

        Returns:
            The bytes written.

        Raises:
            ArtifactError: No such object, or it is larger than ``max_bytes`` (checked
                before the download and while it runs).
        """
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise ArtifactError(f"artifact {key} does not exist") from None
        too_big = ArtifactError(f"artifact {key} is larger than the limit of {max_bytes} bytes")
        if int(response.get("ContentLength") or 0) > max_bytes:
            response["Body"].close()
            raise too_big
        written = 0
        with open(path, "wb") as out:
            for chunk in response["Body"].iter_chunks(1024 * 1024):
                written += len(chunk)
                if written > max_bytes:
                    raise too_big
                out.write(chunk)
        return written

    def upload_file(self, key: str, path: Path) -> None:
        """Upload the file at ``path`` as ``key`` (multipart past boto3's threshold)."""
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        found: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for item in page.get("Contents", []):
                found.append(item["Key"][len(self.prefix) :])
        return sorted(found)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def append_text(self, key: str, text: str) -> None:
        try:
            old = self.get_bytes(key)
        except ArtifactError:
            old = b""
        extra: dict[str, Any] = {"Tagging": LOG_TAGGING} if key.endswith(".log") else {}
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(key),
            Body=old + text.encode("utf-8"),
            ContentType="text/plain; charset=utf-8",
            **extra,
        )
