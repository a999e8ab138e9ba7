"""API Gateway for the cloud in a box: a REST API stage in front of its Lambda proxy.

moto's API Gateway records REST APIs but does not invoke a Lambda proxy integration
over HTTP, so the box serves each REST API of the template itself: an HTTP server on
127.0.0.1 that does what API Gateway's edge does for a ``{proxy+}`` Lambda proxy
integration:

* the path is ``/<stage>/<resource path>``; another stage is 403 ``Missing
  Authentication Token``, as API Gateway answers;
* a body over API Gateway's 10 MB payload limit is 413 before it is read;
* ``X-Forwarded-For``, ``-Port`` and ``-Proto`` are set, as API Gateway sets them (the
  box's edge speaks plain HTTP, so ``http``);
* the request becomes the REST API's proxy event (version 1.0: ``resource``, ``path``,
  ``httpMethod``, ``headers`` and ``multiValueHeaders``, the query strings,
  ``pathParameters.proxy``, ``requestContext`` with the stage, the request id and the
  caller's address), with the body base64-encoded when its content type is one of the
  API's ``BinaryMediaTypes`` (``*/*``: every body);
* the function is invoked through the Lambda API of moto's server (so it runs in its
  own runtime with its template environment), and its answer becomes the HTTP
  response (``statusCode``, ``headers``/``multiValueHeaders``, the body decoded from
  base64 when ``isBase64Encoded``); a function error or a malformed answer is 502
  ``Internal server error``.

Not emulated: throttling (the stage's rate and burst limits), the 29 s integration
timeout (the function's own timeout ends a long invocation), access and execution logs,
X-Ray, custom domains, authorizers (the stack has none: the function checks the token).
"""

from __future__ import annotations

import base64
import fnmatch
import json
import logging
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from qlayer.cloudbox.server import ACCOUNT, REGION

log = logging.getLogger("qlayer.cloudbox")

#: API Gateway's largest request payload (REST APIs: 10 MB).
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
#: Lambda's answer to ``invoke``: (payload, FunctionError or None).
Invoke = Callable[[bytes], tuple[bytes, str | None]]


@dataclass(frozen=True)
class RestApi:
    """One REST API of the template, as deployed in the box.

    Attributes:
        logical_id: The ``AWS::ApiGateway::RestApi`` resource.
        api_id: Its id (moto's, from CreateRestApi).
        stage: The deployment stage's name (the first segment of every path).
        function_logical_id: The function of its Lambda proxy integration.
        binary_media_types: Content types whose bodies arrive base64-encoded.
    """

    logical_id: str
    api_id: str
    stage: str
    function_logical_id: str
    binary_media_types: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        """``https://<id>.execute-api.<region>.amazonaws.com``: where AWS would serve it."""
        return f"https://{self.api_id}.execute-api.{REGION}.amazonaws.com"

    def is_binary(self, content_type: str | None) -> bool:
        media = (content_type or "").split(";")[0].strip().lower()
        return any(fnmatch.fnmatch(media, t.lower()) for t in self.binary_media_types)


def proxy_event(
    api: RestApi,
    method: str,
    raw_path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | None,
    source_ip: str,
) -> dict[str, Any]:
    """The Lambda proxy event (REST API, payload 1.0) of one request to ``/<stage>/...``."""
    url = urllib.parse.urlsplit(raw_path)
    path = url.path[len(api.stage) + 1 :] or "/"
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        multi_headers.setdefault(name, []).append(value)
    multi_query: dict[str, list[str]] = {}
    for name, value in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
        multi_query.setdefault(name, []).append(value)
    proxy = urllib.parse.unquote(path.lstrip("/"))
    resource = "/{proxy+}" if proxy else "/"
    content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
    encoded = body is not None and api.is_binary(content_type)
    now = time.time()
    request_id = str(uuid.uuid4())
    return {
        "resource": resource,
        "path": urllib.parse.unquote(path),
        "httpMethod": method,
        "headers": {k: v[-1] for k, v in multi_headers.items()} or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": proxy} if proxy else None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "box",
            "resourcePath": resource,
            "httpMethod": method,
            "extendedRequestId": request_id,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "path": f"/{api.stage}{urllib.parse.unquote(path)}",
            "accountId": ACCOUNT,
            "protocol": "HTTP/1.1",
            "stage": api.stage,
            "domainPrefix": api.api_id,
            "requestTimeEpoch": int(now * 1000),
            "requestId": request_id,
            "identity": {
                "sourceIp": source_ip,
                "userAgent": next((v for k, v in headers if k.lower() == "user-agent"), None),
            },
            "domainName": api.origin.removeprefix("https://"),
            "apiId": api.api_id,
        },
        "body": None
        if body is None
        else (base64.b64encode(body).decode() if encoded else body.decode("utf-8", "replace")),
        "isBase64Encoded": encoded,
    }


def http_answer(
    payload: bytes, function_error: str | None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of the function's answer, as API Gateway returns it."""
    failed = (502, [("Content-Type", "application/json")], b'{"message": "Internal server error"}')
    if function_error:
        return failed
    try:
        answer = json.loads(payload or b"null")
        status = int(answer["statusCode"])
    except (ValueError, TypeError, KeyError):
        return failed
    headers: list[tuple[str, str]] = []
    single = answer.get("headers") or {}
    multi = answer.get("multiValueHeaders") or {}
    for name, values in multi.items():
        headers += [(name, str(v)) for v in values]
    headers += [(k, str(v)) for k, v in single.items() if k not in multi]
    body = answer.get("body") or ""
    data = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode()
    return status, headers, data


class ApiFront:
    """One REST API stage on ``http://127.0.0.1:<port>/<stage>/`` (module docstring).

    Args:
        api: The API and its stage.
        invoke: Invokes the integration's function with a payload (through the Lambda API).
    """

    def __init__(self, api: RestApi, invoke: Invoke) -> None:
        self.api = api
        self.invoke = invoke
        self.requests = 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("gateway front: " + format, *args)

            def _serve(self) -> None:
                front._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``: what the API's execute-api origin is in the box."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        """The stage's URL (the stack's ``GatewayUrl`` output, in the box)."""
        return f"{self.origin}/{self.api.stage}/"

    def start(self) -> ApiFront:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cloudbox-api-front", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        self.requests += 1
        path = urllib.parse.urlsplit(request.path).path
        stage = self.api.stage
        if path != f"/{stage}" and not path.startswith(f"/{stage}/"):
            return self._reply(request, 403, [], b'{"message":"Missing Authentication Token"}')
        length_header = request.headers.get("Content-Length")
        try:
            length = int(length_header) if length_header is not None else 0
        except ValueError:
            return self._reply(request, 400, [], b'{"message":"Bad Content-Length"}')
        if length > MAX_PAYLOAD_BYTES or length < 0:
            request.close_connection = True
            return self._reply(request, 413, [], b'{"message":"Request Entity Too Large"}')
        body = request.rfile.read(length) if length_header is not None else None
        # API Gateway sets these on every request (here the edge speaks plain HTTP).
        forwarded = {
            "X-Forwarded-For": request.client_address[0],
            "X-Forwarded-Port": str(self._server.server_address[1]),
            "X-Forwarded-Proto": "http",
        }
        lowered = {k.lower() for k in forwarded}
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in lowered]
        event = proxy_event(
            self.api,
            request.command,
            request.path,
            [*headers, *forwarded.items()],
            body,
            request.client_address[0],
        )
        try:
            payload, error = self.invoke(json.dumps(event).encode())
        except Exception:  # the box is stopping, or the function cannot be reached
            log.exception("gateway front: invoking the function")
            payload, error = b"", "Unhandled"
        status, headers, data = http_answer(payload, error)
        self._reply(request, status, headers, data if request.command != "HEAD" else b"")

    @staticmethod
    def _reply(
        request: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        request.send_response(status)
        names = {k.lower() for k, _ in headers}
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                request.send_header(name, value)
        if "content-type" not in names:
            request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        request.end_headers()
        request.wfile.write(body)
