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


def test_ibm_credentials_come_from_the_secret(secret_arn):
    """moto's Secrets Manager replaces AWS; the secret is read on first use and mapped."""
    credentials = secrets.ibm_credentials(secret_arn)
    assert credentials() == {
        "token": "t0k",
        "instance": "crn:v1:x",
        "channel": "ibm_quantum_platform",
    }
    boto3.client("secretsmanager").put_secret_value(
        SecretId=secret_arn, SecretString=json.dumps({"ibm_token": "new", "ibm_url": "https://x"})
    )
    assert credentials()["token"] == "t0k"  # read once per process


def test_the_aws_services_inject_the_secret_into_the_ibm_provider(secret_arn, monkeypatch):
    """The builder of the providers hands them the stack's secret; nothing reads the
    environment behind its back (without the injection no IBM account is configured)."""
    from qlayer.aws.config import AwsConfig
    from qlayer.aws.services import configure_providers
    from qlayer.providers import registry

    monkeypatch.setenv("HOME", "/nonexistent")
    try:
        configure_providers(AwsConfig(bucket="b", jobs_table="t"))
        assert registry.settings().ibm_credentials is None
        assert not ibm_configured(injected=False)
        config = AwsConfig(
            bucket="b", jobs_table="t", providers_secret_arn=secret_arn, braket_bucket="bk"
        )
        configure_providers(config)
        assert registry.settings().braket_s3_folder == ("bk", "qlayer")
        assert registry.ibm_provider()._token_provider() == {
            "token": "t0k",
            "instance": "crn:v1:x",
            "channel": "ibm_quantum_platform",
        }
        assert registry.resolve("ibm_brisbane").provider == "ibm"
    finally:
        registry.configure(registry.ProviderSettings())


def test_a_secret_that_is_not_a_json_object_is_refused(secret_arn):
    """moto's Secrets Manager replaces AWS."""
    boto3.client("secretsmanager").put_secret_value(SecretId=secret_arn, SecretString="[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        secrets.provider_settings(secret_arn)


@pytest.mark.moto
def test_the_gateway_token_is_read_from_its_secret_and_kept_a_few_minutes(monkeypatch):
    """The gateway's token: read on first use, kept ``max_age_s``, then read again (a put
    of a new value reaches warm functions); an empty secret matches nothing."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    secrets._TOKENS.clear()
    now = [1000.0]
    with mock_aws():
        client = boto3.client("secretsmanager")
        arn = client.create_secret(Name="qlayer/gateway-token", SecretString="first-token")["ARN"]
        read = lambda: secrets.gateway_token(arn, client, clock=lambda: now[0])  # noqa: E731
        assert read() == b"first-token"
        client.put_secret_value(SecretId=arn, SecretString="second-token")
        now[0] += secrets.GATEWAY_TOKEN_MAX_AGE_S - 1
        assert read() == b"first-token"
        now[0] += 2
        assert read() == b"second-token"
        client.put_secret_value(SecretId=arn, SecretString="  ")
        now[0] += secrets.GATEWAY_TOKEN_MAX_AGE_S
        with pytest.raises(ValueError, match="holds no gateway token"):
            read()
    secrets._TOKENS.clear()
