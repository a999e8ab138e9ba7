"""Count the AWS calls a cloud-box test makes: a pytest plugin, for measuring only.

Every request moto's server answers in the test process is counted by service and action
(DynamoDB and S3 also by table / key shape), with the time the server spent on it; the
table is printed when the session ends. Example (the queue burst, 100 requests)::

    QLAYER_TEST_BURST=100 PYTHONPATH=.:bench .venv/bin/python -m pytest -p moto_calls -q \\
        tests/functional/test_aws_qpu.py -k test_a_burst_of_requests

The counts include the box's own calls (its SQS poller and EventBridge pumps) and the
test's; figures in docs/benchmarks.md ("The test suite").
"""

from __future__ import annotations

import collections
import io
import json
import re
import threading
import time
from typing import Any

from moto.moto_server import werkzeug_app

_calls: collections.Counter[str] = collections.Counter()
_seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
_detail: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()
_answer = werkzeug_app.DomainDispatcherApplication.__call__


def _service(environ: dict[str, Any]) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" not in auth:
        return "?"
    parts = auth.split("Credential=", 1)[1].split("/")
    return parts[3] if len(parts) > 3 else "?"


def _shape(text: str) -> str:
    """A key with its ids and numbers blanked: one row per kind of object."""
    return re.sub(r"\d+", "N", re.sub(r"[0-9a-f]{8,}", "ID", text))[:90]


def _dynamodb_detail(environ: dict[str, Any], action: str) -> str:
    size = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(min(size, 1 << 20))
    environ["wsgi.input"] = io.BytesIO(body)
    try:
        request = json.loads(body)
    except ValueError:
        return f"dynamodb {action}"
    table = str(request.get("TableName", ""))
    key: dict[str, dict[str, str]] = request.get("Key") or {}
    first = next(iter(key.values())).get("S", "") if key else ""
    what = request.get("IndexName") or ("#" + first[1:].split("/")[0] if first[:1] == "#" else "")
    return f"dynamodb {action} {_shape(table)} {what}".rstrip()


def _counted(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
    started = time.perf_counter()
    service = _service(environ)
    target = environ.get("HTTP_X_AMZ_TARGET") or ""
    method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
    action = target.rsplit(".", 1)[-1] if target else f"{method} {_shape(path)[:40]}"
    detail = None
    if service == "dynamodb":
        detail = _dynamodb_detail(environ, action)
    elif service == "s3":
        detail = f"s3 {method} {_shape(path.split('/', 2)[-1])}"
    try:
        return _answer(self, environ, start_response)
    finally:
        spent = time.perf_counter() - started
        with _lock:
            _calls[f"{service} {action}"] += 1
            _seconds[f"{service} {action}"] += spent
            if detail:
                _detail[detail] += 1


werkzeug_app.DomainDispatcherApplication.__call__ = _counted  # type: ignore[method-assign,assignment]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    write = terminalreporter.write_line
    total = sum(_calls.values())
    write(f"\nmoto answered {total} calls")
    write("| calls | server s | call |")
    write("|---:|---:|---|")
    for name, count in _calls.most_common(25):
        write(f"| {count} | {_seconds[name]:.1f} | {name} |")
    write("\n| calls | DynamoDB / S3 by table, index or key shape |")
    write("|---:|---|")
    for name, count in _detail.most_common(25):
        write(f"| {count} | {name} |")
