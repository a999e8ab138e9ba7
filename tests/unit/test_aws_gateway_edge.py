"""The AWS gateway's HTTP edge on its own: bounds, bodies, forms, its URL (no AWS involved).

The routes themselves run through API Gateway's proxy events in the cloud in a box
(tests/functional/test_cloud_in_a_box.py, "gateway").
"""

from __future__ import annotations

import base64

import pytest

from qlayer.aws import gateway
from qlayer.serverless.errors import GatewayError


def _form(*parts: tuple[str, str | None, bytes]) -> tuple[str, bytes]:
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(
            b"--XyZ\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + data + b"\r\n"
        )
    return "multipart/form-data; boundary=XyZ", b"".join(chunks) + b"--XyZ--\r\n"


def test_a_multipart_upload_gives_its_fields_and_files_byte_for_byte() -> None:
    tar = bytes(range(256)) * 40 + b"\r\n--XyZ-not-a-boundary"
    content_type, body = _form(
        ("title", None, b"bell"),
        ("description", None, "grüße".encode()),
        ("artifact", "artifact.tar", tar),
    )
    form = gateway.form_body(content_type, body)
    assert form.fields == {"title": "bell", "description": "grüße"}
    assert form.files == {"artifact": ("artifact.tar", tar)}


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/json", b"{}", "multipart/form-data"),
        ("multipart/form-data", b"", "multipart/form-data"),
        ("multipart/form-data; boundary=XyZ", b"--XyZ\r\n\r\nno name\r\n--XyZ--\r\n", "name"),
        ("multipart/form-data; boundary=XyZ", _form(("t", None, b"\xff\xfe"))[1], "UTF-8"),
        (
            "multipart/form-data; boundary=XyZ",
            _form(*[(f"f{i}", None, b"x") for i in range(gateway.MAX_FORM_PARTS + 1)])[1],
            "parts",
        ),
    ],
)
def test_malformed_forms_are_400s(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(GatewayError, match=message) as caught:
        gateway.form_body(content_type, body)
    assert caught.value.status == 400


def test_bodies_are_bounded_before_they_are_decoded() -> None:
    small = base64.b64encode(b"hello").decode()
    assert gateway.body_bytes({"body": small, "isBase64Encoded": True}) == b"hello"
    assert gateway.body_bytes({"body": "plain", "isBase64Encoded": False}) == b"plain"
    assert gateway.body_bytes({"body": None}) == b""
    too_big = "A" * (gateway.MAX_BODY_BYTES * 4 // 3 + 8)
    with pytest.raises(GatewayError) as caught:
        gateway.body_bytes({"body": too_big, "isBase64Encoded": True})
    assert caught.value.status == 413
    with pytest.raises(GatewayError) as caught:
        gateway.body_bytes({"body": "not base64!", "isBase64Encoded": True})
    assert caught.value.status == 400


@pytest.mark.parametrize("body", [b"[1]", b'"x"', b"{bad", b"\xff"])
def test_json_bodies_must_be_objects(body: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        gateway.json_body(body)
    assert caught.value.status == 400


def test_a_long_query_string_is_refused() -> None:
    params = {"function": "x" * (gateway.MAX_QUERY_CHARS + 1)}
    with pytest.raises(GatewayError) as caught:
        gateway.query({"queryStringParameters": params})
    assert caught.value.status == 414
    assert gateway.query({"queryStringParameters": None}) == {}


def test_the_public_url_is_the_api_stage_as_the_caller_reached_it() -> None:
    event = {
        "headers": {
            "Host": "abc.execute-api.eu-west-1.amazonaws.com",
            "X-Forwarded-Proto": "https",
        },
        "requestContext": {"stage": "dev", "domainName": "abc.execute-api.eu-west-1.amazonaws.com"},
    }
    assert gateway.public_url(event) == "https://abc.execute-api.eu-west-1.amazonaws.com/dev"
    loopback = {
        "headers": {"host": "127.0.0.1:4242", "x-forwarded-proto": "http"},
        "requestContext": {"stage": "dev"},
    }
    assert gateway.public_url(loopback) == "http://127.0.0.1:4242/dev"


def test_a_form_encoded_body_gives_its_fields() -> None:
    """``update_status`` sends ``sub_status`` as application/x-www-form-urlencoded."""
    body = gateway.json_body(b"sub_status=MAPPING&x=a%20b", "application/x-www-form-urlencoded")
    assert body == {"sub_status": "MAPPING", "x": "a b"}
    content_type, data = _form(("sub_status", None, b"EXECUTING_QPU"))
    assert gateway.json_body(data, content_type) == {"sub_status": "EXECUTING_QPU"}
    with pytest.raises(GatewayError):
        gateway.json_body(b"\xff", "application/x-www-form-urlencoded")
