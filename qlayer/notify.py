"""Telling someone a job ended: a signed webhook, or a desktop notification.

A job carries its notification *targets* (``Workflow(..., notify=[...])``,
``client.run(..., notify=[...])``, ``qlayer run --notify``):

* ``"https://..."`` or ``"http://..."``: a JSON ``POST`` of :func:`payload`, signed with
  HMAC-SHA256 of the body under the substrate's token (header ``X-Qlayer-Signature:
  sha256=<hex>``), with ``X-Qlayer-Delivery`` naming the notification (``<job>:<status>``)
  so that a receiver can drop a repeat;
* ``"desktop"``: a notification on this machine's desktop where one exists
  (``notify-send`` on Linux, ``osascript`` on macOS); nothing where none does.

The substrate fires each target once per job end, after the final status is written,
from an outbox kept beside the job (so a crash between the two loses nothing), retried
with backoff (:data:`BACKOFF_S`), and never on the job's own path: a slow or dead
receiver delays nobody. This module is substrate-free: it checks targets, builds the
message and sends it; the outbox is the substrate's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from qlayer.errors import ArgumentError

DESKTOP = "desktop"
#: Seconds to wait before each retry of a failed delivery; after the last it is given up.
BACKOFF_S = (1.0, 2.0, 5.0, 15.0, 60.0, 300.0, 900.0)
#: The longest a receiver may take to answer.
TIMEOUT_S = 10.0
MAX_TARGETS = 8
MAX_URL_CHARS = 2048


def check_targets(targets: Iterable[str] | str | None) -> list[str]:
    """The targets as given, checked: ``"desktop"`` or an http(s) URL with a host.

    Raises:
        ArgumentError: A target is neither, or there are more than :data:`MAX_TARGETS`.
    """
    if targets is None:
        return []
    listed = [targets] if isinstance(targets, str) else list(targets)
    if len(listed) > MAX_TARGETS:
        raise ArgumentError(f"notify takes at most {MAX_TARGETS} targets, got {len(listed)}")
    checked: list[str] = []
    for target in listed:
        if not isinstance(target, str):
            raise ArgumentError(f"a notify target is a string, not {type(target).__name__}")
        if target == DESKTOP:
            checked.append(target)
            continue
        parts = urlsplit(target)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or len(target) > MAX_URL_CHARS
            or any(ord(char) < 33 for char in target)
        ):
            raise ArgumentError(
                f"notify target {target!r} is neither 'desktop' nor an http(s) URL "
                "(e.g. https://hooks.example.org/qlayer)"
            )
        checked.append(target)
    return list(dict.fromkeys(checked))  # once each, in order


def shown(target: str) -> str:
    """A target as logs and timelines show it: no credentials, query or fragment."""
    if target == DESKTOP:
        return target
    parts = urlsplit(target)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def delivery_id(job_id: str, status: str) -> str:
    """The name of one job end's notification (the same on every retry)."""
    return f"{job_id}:{status}"


def payload(job: Mapping[str, Any]) -> dict[str, Any]:
    """What a webhook receives: the job's end, from its ``status --json`` record."""
    return {
        "event": "job.ended",
        "delivery": delivery_id(job["job_id"], job["status"]),
        "job_id": job["job_id"],
        "status": job["status"],
        "workflow": job.get("workflow"),
        "backend": job.get("backend"),
        "message": job.get("message"),
        "error_type": job.get("error_type"),
        "created_at": job.get("created_at"),
        "finished_at": job.get("finished_at"),
    }


def sign(token: str, body: bytes) -> str:
    """The ``X-Qlayer-Signature`` header's value for ``body``."""
    return "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def verify(token: str, body: bytes, signature: str) -> bool:
    """True if ``signature`` is :func:`sign`'s for ``body`` (for receivers, and tests)."""
    return hmac.compare_digest(sign(token, body), signature)


def send(target: str, message: Mapping[str, Any], token: str) -> None:
    """Deliver ``message`` to one target, once.

    Raises:
        OSError: The webhook could not be reached or did not answer 2xx (the caller
            retries later); the message says which.
    """
    import urllib.error
    import urllib.request  # here, not at import: every Workflow imports this module

    if target == DESKTOP:
        _desktop(message)
        return
    body = json.dumps(dict(message), separators=(",", ":"), sort_keys=True).encode()
    request = urllib.request.Request(
        target,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "qlayer-notify/1",
            "X-Qlayer-Delivery": str(message["delivery"]),
            "X-Qlayer-Signature": sign(token, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            if not 200 <= answer.status < 300:
                raise OSError(f"{target} answered {answer.status}")
    except urllib.error.HTTPError as exc:
        raise OSError(f"{target} answered {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise OSError(f"cannot reach {target}: {exc.reason}") from exc


def _desktop(message: Mapping[str, Any]) -> None:
    import shutil
    import subprocess

    title = f"qlayer: {message['workflow'] or 'job'} {message['status']}"
    text = f"{message['job_id']}" + (f": {message['message']}" if message.get("message") else "")
    if sys.platform == "darwin" and shutil.which("osascript"):
        script = f"display notification {json.dumps(text)} with title {json.dumps(title)}"
        command = ["osascript", "-e", script]
    elif shutil.which("notify-send"):
        command = ["notify-send", "--app-name=qlayer", title, text[:500]]
    else:
        return  # no desktop here: nothing to show, nothing to retry
    subprocess.run(command, timeout=TIMEOUT_S, check=False, capture_output=True)
