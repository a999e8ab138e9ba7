"""Every implementation of a port, behind one fixture each: the contract suites run on all.

``jobs`` runs on SQLite and on DynamoDB (moto, in this process); ``ledger`` on memory,
SQLite and DynamoDB. The DynamoDB cases carry the ``moto`` mark (``make test-fast`` leaves
them out; ``make test`` runs them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"


class Clock:
    """Epoch seconds that tests move by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3
    from aws_tables import create_tables
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        create_tables(client, "jobs", "tasks")
        yield client


def _sqlite_conn(tmp_path: Path) -> Any:
    from qlayer.local.state import connect

    return connect(tmp_path / "qlayer.db")


@pytest.fixture(params=["sqlite", pytest.param("dynamodb", marks=pytest.mark.moto)])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        from qlayer.local.jobstore import SqliteJobStore

        return SqliteJobStore(_sqlite_conn(tmp_path))
    from qlayer.aws.jobstore import DynamoJobStore

    return DynamoJobStore("jobs", request.getfixturevalue("dynamodb"))


@pytest.fixture(params=["memory", "sqlite", pytest.param("dynamodb", marks=pytest.mark.moto)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Any:
    if request.param == "memory":
        from qlayer.dispatch.ledger import MemoryLedger

        return MemoryLedger(clock)
    if request.param == "sqlite":
        from qlayer.local.ledger import SqliteLedger

        return SqliteLedger(tmp_path / "qlayer.db", clock=clock)
    from qlayer.aws.ledger import DynamoLedger

    return DynamoLedger("tasks", request.getfixturevalue("dynamodb"), clock=clock)
