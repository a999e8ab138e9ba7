"""Notification targets, messages and signatures (qlayer.notify)."""

from __future__ import annotations

import pytest

from qlayer import Workflow, notify
from qlayer.errors import ArgumentError, WorkflowError


def test_targets_are_checked_and_kept_once_in_order():
    given = ["https://hooks.example.org/q", "desktop", "https://hooks.example.org/q"]
    assert notify.check_targets(given) == ["https://hooks.example.org/q", "desktop"]
    assert notify.check_targets("desktop") == ["desktop"]
    assert notify.check_targets(None) == []


@pytest.mark.parametrize(
    "bad", ["ftp://x/y", "hooks.example.org", "https://", "http://a b/", "mail", "file:///etc"]
)
def test_bad_targets_are_refused_with_an_example(bad):
    with pytest.raises(ArgumentError, match="neither 'desktop' nor an http"):
        notify.check_targets([bad])


def test_too_many_targets_are_refused():
    with pytest.raises(ArgumentError, match="at most"):
        notify.check_targets([f"https://h/{i}" for i in range(notify.MAX_TARGETS + 1)])


def test_a_workflow_checks_its_targets_when_defined():
    with pytest.raises(WorkflowError, match="neither 'desktop'"):
        Workflow("n", notify=["smtp://x"])
    assert Workflow("n", notify="desktop").notify == ("desktop",)


def test_signature_verifies_and_detects_tampering():
    body = b'{"job_id":"j","status":"DONE"}'
    signature = notify.sign("secret", body)
    assert signature.startswith("sha256=")
    assert notify.verify("secret", body, signature)
    assert not notify.verify("secret", body + b" ", signature)
    assert not notify.verify("other", body, signature)


def test_targets_are_shown_without_credentials_or_query():
    shown = notify.shown("https://user:pw@hooks.example.org:8443/x?token=abc#f")
    assert shown == "https://hooks.example.org:8443/x"


def test_payload_names_the_delivery():
    message = notify.payload({"job_id": "j1", "status": "ERROR", "message": "boom"})
    assert message["delivery"] == "j1:ERROR"
    assert message["event"] == "job.ended" and message["message"] == "boom"
