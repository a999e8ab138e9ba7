"""The AWS substrate: S3, DynamoDB, SQS and Step Functions adapters (boto3).

Nothing here creates a boto3 client at import time: clients are injected, or
built on first use from a session (see :mod:`qlayer.aws.config`).
"""

from qlayer.aws.config import AwsConfig
from qlayer.aws.jobs import JobTable, TaskTable
from qlayer.aws.store import S3Store

__all__ = ["AwsConfig", "JobTable", "S3Store", "TaskTable"]
