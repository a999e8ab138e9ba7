"""Fixtures of the functional tests (the AWS ones live in aws_fixtures.py, moto-backed)."""

from aws_fixtures import aws, aws_env  # noqa: F401
