"""AWS client failures become one line with what to check."""

from __future__ import annotations

import pytest
from botocore import exceptions as bx

from qlayer.aws.reach import explain


def client_error(code: str, message: str, operation: str = "DescribeStacks") -> bx.ClientError:
    return bx.ClientError({"Error": {"Code": code, "Message": message}}, operation)


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (bx.NoRegionError(), "pass --region or set AWS_REGION"),
        (client_error("AccessDenied", "no"), "may use the qlayer stack"),
        (client_error("ExpiredToken", "old"), "log in again"),
        (
            client_error("ValidationError", "Stack with id Qlayer does not exist"),
            "check --stack and --region",
        ),
        (bx.EndpointConnectionError(endpoint_url="https://x"), "cannot reach AWS at https://x"),
    ],
)
def test_known_failures_are_explained(exc, says):
    line = explain(exc)
    assert line is not None and says in line
    assert "\n" not in line


def test_other_exceptions_are_left_alone():
    assert explain(ValueError("x")) is None
