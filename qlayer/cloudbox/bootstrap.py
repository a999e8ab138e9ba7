"""The runtime inside one Lambda "execution environment" of the cloud in a box.

Run as a script, never imported by the function: ``python [-S] bootstrap.py HANDLER IN OUT``
(stdlib only, so a zip function started with ``-S`` sees nothing but the standard
library, its code and its layers, as on Lambda). ``HANDLER`` is the template's
``module.function`` (``app.lambda_handler``, ``functions.poller.app.lambda_handler``);
``IN`` and ``OUT`` are the pipe descriptors the box talks on.

Like Lambda's runtime interface client it imports the handler once (the init phase),
then serves one invocation at a time: it reads a frame ``{"request_id", "deadline_ms",
"trace_id", "payload"}``, sets ``_X_AMZN_TRACE_ID``, calls ``handler(event, context)``
and writes ``{"payload": ...}`` or ``{"error": {"errorMessage", "errorType",
"stackTrace"}}``. Frames are a 4-byte big-endian length and UTF-8 JSON. The function's
own output goes to stdout/stderr (the box sends them to the function's log file, its
CloudWatch log group), between ``START``/``END``/``REPORT`` lines as Lambda writes them.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import sys
import time
import traceback
from typing import Any

HEADER = struct.Struct(">I")


def read_frame(fd: int) -> dict[str, Any] | None:
    """One frame from ``fd``; None at end of file."""
    head = _read_exactly(fd, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    body = _read_exactly(fd, size)
    if body is None:
        return None
    return json.loads(body.decode("utf-8"))  # type: ignore[no-any-return]


def write_frame(fd: int, value: dict[str, Any]) -> None:
    data = json.dumps(value).encode("utf-8")
    os.write(fd, HEADER.pack(len(data)))
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class Context:
    """What Lambda passes as ``context`` (the attributes of ``LambdaContext``)."""

    def __init__(self, request_id: str, deadline_ms: int, function_arn: str) -> None:
        env = os.environ
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.invoked_function_arn = function_arn
        self.aws_request_id = request_id
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def load(handler: str) -> Any:
    module_name, _, attr = handler.rpartition(".")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def serve(handler_name: str, in_fd: int, out_fd: int) -> int:
    init_error: dict[str, Any] | None = None
    try:
        handler = load(handler_name)
    except Exception as exc:  # reported on the first invocation, as Lambda does
        traceback.print_exc()
        init_error = _error(exc)
        init_error["errorType"] = f"Runtime.ImportModuleError ({type(exc).__name__})"
        handler = None
    sys.stdout.flush()
    while True:
        frame = read_frame(in_fd)
        if frame is None:
            return 0
        request_id = frame["request_id"]
        os.environ["_X_AMZN_TRACE_ID"] = frame.get("trace_id") or ""
        started = time.monotonic()
        print(f"START RequestId: {request_id} Version: $LATEST", flush=True)
        if init_error is not None or handler is None:
            reply: dict[str, Any] = {"error": init_error}
        else:
            try:
                event = json.loads(frame["payload"]) if frame["payload"] else {}
                context = Context(request_id, int(frame["deadline_ms"]), frame["function_arn"])
                result = handler(event, context)
                try:
                    reply = {"payload": json.dumps(result)}
                except (TypeError, ValueError) as exc:
                    reply = {
                        "error": {
                            "errorMessage": f"Unable to marshal response: {exc}",
                            "errorType": "Runtime.MarshalError",
                            "stackTrace": [],
                        }
                    }
            except Exception as exc:
                error = _error(exc)
                print(json.dumps({"requestId": request_id, **error}), file=sys.stderr, flush=True)
                reply = {"error": error}
        elapsed_ms = (time.monotonic() - started) * 1000
        sys.stderr.flush()
        print(f"END RequestId: {request_id}", flush=True)
        print(f"REPORT RequestId: {request_id}\tDuration: {elapsed_ms:.2f} ms", flush=True)
        write_frame(out_fd, reply)
        if init_error is not None:
            return 1  # Lambda throws away an environment whose init failed


if __name__ == "__main__":
    # Run as a script: its own folder is not part of the function's code.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.exit(serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
