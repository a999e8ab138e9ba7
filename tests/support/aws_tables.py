"""The two DynamoDB tables as the stack declares them, for tests that need them in moto.

``tests/infra/test_storage.py`` holds these definitions to the synthesized template, so a
change to the stack's keys or indexes fails there first.
"""

from __future__ import annotations

from typing import Any

JOBS_TABLE = {
    "AttributeDefinitions": [
        {"AttributeName": "job_id", "AttributeType": "S"},
        {"AttributeName": "kind", "AttributeType": "S"},
        {"AttributeName": "created_at", "AttributeType": "S"},
    ],
    "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
    "GlobalSecondaryIndexes": [
        {
            "IndexName": "by_created",
            "KeySchema": [
                {"AttributeName": "kind", "KeyType": "HASH"},
                {"AttributeName": "created_at", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ],
}
TASKS_TABLE = {
    "AttributeDefinitions": [
        {"AttributeName": "idempotency_key", "AttributeType": "S"},
        {"AttributeName": "status", "AttributeType": "S"},
        {"AttributeName": "submitted_at", "AttributeType": "S"},
    ],
    "KeySchema": [{"AttributeName": "idempotency_key", "KeyType": "HASH"}],
    "GlobalSecondaryIndexes": [
        {
            "IndexName": "by_status",
            "KeySchema": [
                {"AttributeName": "status", "KeyType": "HASH"},
                {"AttributeName": "submitted_at", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ],
}


def create_tables(dynamodb: Any, jobs: str, tasks: str) -> None:
    """Create the jobs and tasks tables under the given names."""
    for name, spec in ((jobs, JOBS_TABLE), (tasks, TASKS_TABLE)):
        dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", **spec)
