"""Lambda runtimes as processes: each function runs in its own OS processes, as on Lambda.

A :class:`FunctionSpec` is what the template says of one function (handler, code,
environment, timeout, memory) once the box has resolved it. A :class:`Runtime` is one
"execution environment": a process started with exactly :attr:`FunctionSpec.environment`
(nothing inherited from the box's own process) running :mod:`qlayer.cloudbox.bootstrap`,
which imports the handler once and serves one invocation at a time over a pipe.

A :class:`FunctionPool` holds a function's runtimes: an invocation takes an idle one,
or starts another up to ``max_processes``, or waits its turn (Lambda would scale on;
the box caps it to fit a laptop). A runtime that exceeds the function's timeout is
killed and the invocation fails as Lambda reports it (``Task timed out after ...``);
one that dies is replaced on the next invocation.

:class:`LambdaService` is the set of pools the patched moto Lambda invoke forwards to
(``RequestResponse``), plus the queue of asynchronous (``Event``) invocations: they
return at once and run afterwards, retried twice on a function error, then logged and
dropped, like Lambda's own asynchronous invocation.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlayer.cloudbox.bootstrap import HEADER
from qlayer.cloudbox.images import Image

log = logging.getLogger("qlayer.cloudbox")

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")

#: The variables the Lambda service itself sets in every execution environment
#: (https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html, "Defined
#: runtime environment variables"), as the box sets them; nothing else is added to a
#: function's template environment except AWS_ENDPOINT_URL (boto3 -> moto) and TMPDIR
#: (the environment's own /tmp). ``_X_AMZN_TRACE_ID`` is set per invocation.
LAMBDA_SERVICE_VARIABLES: tuple[str, ...] = (
    "_HANDLER",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_EXECUTION_ENV",
    "AWS_XRAY_CONTEXT_MISSING",
    "AWS_XRAY_DAEMON_ADDRESS",
    "_AWS_XRAY_DAEMON_ADDRESS",
    "_AWS_XRAY_DAEMON_PORT",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "LANG",
    "PATH",
    "PYTHONPATH",
    "TZ",
)
#: What the box adds beside the Lambda service's variables.
BOX_VARIABLES: tuple[str, ...] = ("AWS_ENDPOINT_URL", "TMPDIR")


@dataclass(frozen=True)
class FunctionSpec:
    """One Lambda function as the box runs it.

    Attributes:
        name: The function's name (in moto, and AWS_LAMBDA_FUNCTION_NAME).
        arn: Its ARN.
        handler: ``module.attribute``: the template's Handler (zip) or ImageConfig Command.
        code: Folders on the runtime's ``sys.path``, first first: the task root, then the
            layers (zip) or the image's code, then plugin code folders baked into the image.
        isolated: Start Python with ``-S`` (no site-packages): a zip function sees only the
            standard library, its code and its layers, as on Lambda.
        environment: The whole environment of its processes.
        timeout_s: The function's Timeout.
        memory_mb: The function's MemorySize (reported, not enforced).
        workdir: Where its runtimes keep their /tmp and logs.
        image: An image function's image: its ENV goes under the function's own
            variables (see :meth:`~qlayer.cloudbox.images.Image.environment`).
    """

    name: str
    arn: str
    handler: str
    code: tuple[str, ...]
    isolated: bool
    environment: Mapping[str, str]
    timeout_s: float
    memory_mb: int
    workdir: Path
    image: Image | None = None


@dataclass
class Invocation:
    """The answer of one invocation: the payload, and Lambda's FunctionError if any."""

    payload: bytes
    function_error: str | None = None
    request_id: str = ""

    @property
    def error(self) -> dict[str, Any] | None:
        if self.function_error is None:
            return None
        return json.loads(self.payload or b"{}")  # type: ignore[no-any-return]


def lambda_environment(
    *,
    name: str,
    handler: str,
    template_env: Mapping[str, str],
    code: Sequence[str],
    task_root: str,
    memory_mb: int,
    log_group: str,
    runtime: str | None,
    tracing: bool,
    xray_address: str,
    endpoint: str,
    credentials: Mapping[str, str],
    region: str,
) -> dict[str, str]:
    """The environment of a function's execution environments: the template's variables,
    what the Lambda service sets (:data:`LAMBDA_SERVICE_VARIABLES`) and the endpoint.
    Each :class:`Runtime` adds TMPDIR, and an image function's image ENV underneath."""
    stream = time.strftime("%Y/%m/%d") + "/[$LATEST]" + secrets.token_hex(16)
    service = {
        "_HANDLER": handler,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        **credentials,
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": log_group,
        "AWS_LAMBDA_LOG_STREAM_NAME": stream,
        "LAMBDA_TASK_ROOT": task_root,
        "LAMBDA_RUNTIME_DIR": str(BOOTSTRAP.parent),
        "LANG": "en_US.UTF-8",
        "PATH": os.pathsep.join(
            [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
        ),
        "PYTHONPATH": os.pathsep.join(code),
        "TZ": ":UTC",
    }
    if runtime:
        service["AWS_EXECUTION_ENV"] = f"AWS_Lambda_{runtime}"
    if tracing:
        host, _, port = xray_address.rpartition(":")
        service.update(
            {
                "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
                "AWS_XRAY_DAEMON_ADDRESS": xray_address,
                "_AWS_XRAY_DAEMON_ADDRESS": host,
                "_AWS_XRAY_DAEMON_PORT": port,
            }
        )
    return {**dict(template_env), **service, "AWS_ENDPOINT_URL": endpoint}


class Runtime:
    """One execution environment: a process serving one invocation at a time."""

    def __init__(self, spec: FunctionSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.tmp = spec.workdir / f"env-{index}" / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = spec.workdir / f"env-{index}.log"
        image_env = spec.image.environment(self.tmp) if spec.image else {}
        env = {**image_env, **spec.environment, "TMPDIR": str(self.tmp)}
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        argv = [sys.executable, *(["-S"] if spec.isolated else []), str(BOOTSTRAP)]
        argv += [spec.handler, str(to_child_r), str(from_child_w)]
        try:
            with open(self.log_path, "ab") as out:
                self.process = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=spec.code[0],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    pass_fds=(to_child_r, from_child_w),
                    start_new_session=True,
                )
        except BaseException:
            os.close(to_child_w)
            os.close(from_child_r)
            raise
        finally:  # the child's ends: the child has its copies
            os.close(to_child_r)
            os.close(from_child_w)
        self._to_child = to_child_w
        self._from_child = from_child_r
        self.invocations = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def invoke(self, payload: bytes, request_id: str, trace_id: str) -> Invocation:
        """Run one invocation; kill the process if it runs past the function's timeout."""
        timeout = self.spec.timeout_s
        deadline = time.time() + timeout
        frame = {
            "request_id": request_id,
            "deadline_ms": int(deadline * 1000),
            "trace_id": trace_id,
            "function_arn": self.spec.arn,
            "payload": payload.decode("utf-8"),
        }
        self.invocations += 1
        try:
            data = json.dumps(frame).encode("utf-8")
            os.write(self._to_child, HEADER.pack(len(data)) + data)
            reply = self._read_reply(deadline)
        except TimeoutError:
            self.kill()
            return _failure(
                request_id,
                f"{_stamp()} {request_id} Task timed out after {timeout:.2f} seconds",
                "Sandbox.Timedout",
            )
        except (OSError, EOFError):
            try:
                code = self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
                code = self.process.returncode
            return _failure(
                request_id,
                f"RequestId: {request_id} Error: Runtime exited with error: {_exit_text(code)}",
                "Runtime.ExitError",
            )
        if "error" in reply:
            return Invocation(json.dumps(reply["error"]).encode(), "Unhandled", request_id)
        return Invocation(reply["payload"].encode("utf-8"), None, request_id)

    def _read_reply(self, deadline: float) -> dict[str, Any]:
        buffer = b""
        need = HEADER.size
        size: int | None = None
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self._from_child], [], [], min(left, 1.0))
            if not ready:
                if not self.alive():
                    raise EOFError
                continue
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise EOFError
            buffer += chunk
            if size is None and len(buffer) >= need:
                (size,) = HEADER.unpack(buffer[:need])
            if size is not None and len(buffer) >= need + size:
                return json.loads(buffer[need : need + size].decode("utf-8"))  # type: ignore[no-any-return]

    def kill(self) -> None:
        """Kill the process (its whole session) and close the pipes; idempotent."""
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        # never close a number twice: the process may have reused it for another file
        self._to_child = self._from_child = -1

    def environ(self) -> dict[str, str]:
        """The process's environment as the kernel holds it (``/proc/<pid>/environ``)."""
        raw = Path(f"/proc/{self.pid}/environ").read_bytes()
        pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if item)
        return {k.decode(): v.decode() for k, v in pairs}


class FunctionPool:
    """A function's runtimes: at most ``max_processes``, one invocation at a time each."""

    def __init__(self, spec: FunctionSpec, max_processes: int = 2) -> None:
        if max_processes < 1:
            raise ValueError("max_processes must be at least 1")
        self.spec = spec
        self.max_processes = max_processes
        self._cond = threading.Condition()
        self._idle: list[Runtime] = []
        self._all: list[Runtime] = []
        self._starting = 0
        self._started = 0
        self._closed = False
        self.invocations = 0
        self.peak = 0

    def warm(self) -> None:
        """Start one runtime now (its init runs while the box is still being built)."""
        with self._cond:
            if self._all or self._starting:
                return
            self._starting += 1
        self._add(self._start())

    def _start(self) -> Runtime:
        index = self._started
        self._started += 1
        return Runtime(self.spec, index)

    def _add(self, runtime: Runtime) -> None:
        with self._cond:
            self._starting -= 1
            self._all.append(runtime)
            self._idle.append(runtime)
            self._cond.notify()

    def _acquire(self) -> Runtime:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError(f"function {self.spec.name} is shut down")
                while self._idle:
                    runtime = self._idle.pop()
                    if runtime.alive():
                        self._note_busy()
                        return runtime
                    self._drop(runtime)
                if len(self._all) + self._starting < self.max_processes:
                    self._starting += 1
                    break
                self._cond.wait()
        try:
            runtime = self._start()
        except BaseException:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._starting -= 1
            self._all.append(runtime)
            self._note_busy()
        return runtime

    def _note_busy(self) -> None:
        busy = len(self._all) - len(self._idle)
        self.peak = max(self.peak, busy)

    def _drop(self, runtime: Runtime) -> None:
        if runtime in self._all:
            self._all.remove(runtime)
        runtime.kill()

    def _release(self, runtime: Runtime) -> None:
        with self._cond:
            if runtime.alive() and not self._closed:
                self._idle.append(runtime)
            else:
                self._drop(runtime)
            self._cond.notify()

    def invoke(self, payload: bytes) -> Invocation:
        request_id = str(uuid.uuid4())
        trace_id = (
            f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};"
            f"Parent={secrets.token_hex(8)};Sampled=1"
        )
        runtime = self._acquire()
        try:
            self.invocations += 1
            return runtime.invoke(payload, request_id, trace_id)
        finally:
            self._release(runtime)

    def runtimes(self) -> list[Runtime]:
        with self._cond:
            return list(self._all)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            runtimes, self._all, self._idle = list(self._all), [], []
            self._cond.notify_all()
        for runtime in runtimes:
            runtime.kill()


@dataclass
class _Queued:
    function: str
    payload: bytes
    attempt: int = 0


@dataclass
class LambdaService:
    """The box's Lambda: pools by function name, and the asynchronous invocation queue.

    Attributes:
        pools: Function name -> its pool.
        retry_delays_s: Waits before the retries of a failed asynchronous invocation
            (Lambda retries twice, after about one and then two minutes).
        async_workers: Threads that run asynchronous invocations.
    """

    pools: dict[str, FunctionPool] = field(default_factory=dict)
    retry_delays_s: tuple[float, ...] = (60.0, 120.0)
    async_workers: int = 4
    dropped: list[dict[str, Any]] = field(default_factory=list)
    _queue: queue.Queue[_Queued | None] = field(default_factory=queue.Queue)
    _threads: list[threading.Thread] = field(default_factory=list)
    _pending: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, pool: FunctionPool) -> None:
        self.pools[pool.spec.name] = pool

    def owns(self, function_name: str) -> bool:
        return function_name in self.pools

    def invoke(self, function_name: str, payload: bytes) -> Invocation:
        """A synchronous (RequestResponse) invocation."""
        return self.pools[function_name].invoke(payload)

    def invoke_async(self, function_name: str, payload: bytes) -> None:
        """An Event invocation: queued; runs as soon as a worker is free."""
        with self._lock:
            self._pending += 1
        self._queue.put(_Queued(function_name, payload))

    def idle(self) -> bool:
        """No asynchronous invocation queued, waiting for a retry, or running."""
        with self._lock:
            return self._pending == 0

    def start(self) -> None:
        for n in range(self.async_workers):
            thread = threading.Thread(target=self._work, name=f"cloudbox-lambda-async-{n}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                answer = self.invoke(item.function, item.payload)
                failure = answer.error
            except Exception as exc:  # the function is gone (box shutting down)
                failure = {"errorMessage": str(exc), "errorType": type(exc).__name__}
            if failure is not None and item.attempt < len(self.retry_delays_s):
                delay = self.retry_delays_s[item.attempt]
                log.warning(
                    "async invocation of %s failed (%s); retry %d in %.0f s",
                    item.function,
                    failure.get("errorType"),
                    item.attempt + 1,
                    delay,
                )
                item.attempt += 1
                timer = threading.Timer(delay, self._queue.put, args=(item,))
                timer.daemon = True
                timer.start()
                continue
            if failure is not None:
                log.error(
                    "async invocation of %s dropped after retries: %s", item.function, failure
                )
                self.dropped.append({"function": item.function, "error": failure})
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        for pool in self.pools.values():
            pool.close()


def _failure(request_id: str, message: str, error_type: str) -> Invocation:
    body = {"errorMessage": message, "errorType": error_type}
    return Invocation(json.dumps(body).encode(), "Unhandled", request_id)


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal: {signal.Signals(-code).name.lower().removeprefix('sig')}"
    return f"exit status {code}"
