"""Provider credentials come from the stack's Secrets Manager secret (moto stands in for AWS)."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from qlayer.aws import secrets
from qlayer.providers.ibm import ibm_configured


@pytest.fixture
def secret_arn(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("QISKIT_IBM_TOKEN", raising=False)
    secrets._CACHE.clear()
    with mock_aws():
        client = boto3.client("secretsmanager")
        arn = client.create_secret(
            Name="qlayer/providers",
            SecretString=json.dumps({"ibm_token": "t0k", "ibm_instance": "crn:v1:x"}),
        )["ARN"]
        yield arn
    secrets._CACHE.clear()


def test_ibm_credentials_come_from_the_secret(secret_arn, monkeypatch):
    """moto's Secrets Manager replaces AWS; the secret is read once and mapped."""
    monkeypatch.setenv(secrets.SECRET_ENV, secret_arn)
    credentials = secrets.ibm_credentials_from_env()
    assert credentials is not None
    assert credentials() == {
        "token": "t0k",
        "instance": "crn:v1:x",
        "channel": "ibm_quantum_platform",
    }
    assert ibm_configured() is True


def test_no_secret_configured_means_no_token_provider(monkeypatch):
    monkeypatch.delenv(secrets.SECRET_ENV, raising=False)
    assert secrets.ibm_credentials_from_env() is None


def test_a_secret_that_is_not_a_json_object_is_refused(secret_arn):
    """moto's Secrets Manager replaces AWS."""
    boto3.client("secretsmanager").put_secret_value(SecretId=secret_arn, SecretString="[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        secrets.provider_settings(secret_arn)
