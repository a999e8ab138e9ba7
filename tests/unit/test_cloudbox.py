"""The cloud box's parts on their own (no moto): runtimes, async retries, Batch, patterns.

The whole box runs in tests/functional/test_cloud_in_a_box.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qlayer.cloudbox.batch import EXITED, TIMED_OUT, BatchRunner
from qlayer.cloudbox.images import Image, dockerfile_env, map_tmp
from qlayer.cloudbox.pumps import EventBridge, SqsPoller, matches
from qlayer.cloudbox.runtimes import FunctionPool, FunctionSpec, LambdaService

REPO = Path(__file__).resolve().parents[2]

HANDLERS = """
import os, time

def ok(event, context):
    return {"echo": event, "pid": os.getpid(), "left": context.get_remaining_time_in_millis(),
            "trace": os.environ.get("_X_AMZN_TRACE_ID", ""), "name": context.function_name}

def boom(event, context):
    raise KeyError("no such thing")

def slow(event, context):
    time.sleep(30)

def env(event, context):
    return dict(os.environ)
"""


def spec(tmp_path: Path, handler: str, timeout: float = 10) -> FunctionSpec:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "app.py").write_text(HANDLERS)
    return FunctionSpec(
        name=f"fn-{handler}",
        arn=f"arn:aws:lambda:us-east-1:123456789012:function:fn-{handler}",
        handler=f"app.{handler}",
        code=(str(code),),
        isolated=True,
        environment={"ONLY": "this", "PYTHONPATH": str(code), "AWS_LAMBDA_FUNCTION_NAME": "fn"},
        timeout_s=timeout,
        memory_mb=128,
        workdir=tmp_path / "work",
        image=Image(
            uri="repo:digest",
            code=code,
            env={"HOME": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib", "KEEP": "/var"},
            extra_env={"SERVICE_DIR": "/tmp/somewhere/shared"},
        ),
    )


def test_a_runtime_serves_one_invocation_after_another_in_one_process(tmp_path: Path) -> None:
    pool = FunctionPool(spec(tmp_path, "ok"), max_processes=1)
    try:
        first = pool.invoke(b'{"n": 1}')
        second = pool.invoke(b'{"n": 2}')
    finally:
        pool.close()
    a, b = json.loads(first.payload), json.loads(second.payload)
    assert first.function_error is None and a["echo"] == {"n": 1} and b["echo"] == {"n": 2}
    assert a["pid"] == b["pid"]  # warm: the same execution environment
    assert 0 < a["left"] <= 10_000 and a["trace"].startswith("Root=1-") and a["name"] == "fn"


def test_a_runtime_has_exactly_its_environment(tmp_path: Path) -> None:
    pool = FunctionPool(spec(tmp_path, "env"), max_processes=1)
    try:
        env = json.loads(pool.invoke(b"{}").payload)
        (runtime,) = pool.runtimes()
        tmp = str(runtime.tmp)
    finally:
        pool.close()
    env.pop("_X_AMZN_TRACE_ID")
    env.pop("LC_CTYPE", None)  # Python's own C-locale coercion may add it
    assert env == {
        "ONLY": "this",
        "PYTHONPATH": str(tmp_path / "code"),
        "AWS_LAMBDA_FUNCTION_NAME": "fn",
        "TMPDIR": tmp,
        "HOME": tmp,
        "MPLCONFIGDIR": tmp + "/matplotlib",
        "KEEP": "/var",
        "SERVICE_DIR": "/tmp/somewhere/shared",  # the box's option: shared by every process
    }


def test_an_unhandled_exception_comes_back_as_lambda_reports_it(tmp_path: Path) -> None:
    pool = FunctionPool(spec(tmp_path, "boom"), max_processes=1)
    try:
        answer = pool.invoke(b"{}")
    finally:
        pool.close()
    assert answer.function_error == "Unhandled"
    assert answer.error is not None
    assert answer.error["errorType"] == "KeyError"
    assert "no such thing" in answer.error["errorMessage"]
    assert answer.error["stackTrace"]


def test_a_runtime_past_its_timeout_is_killed_and_replaced(tmp_path: Path) -> None:
    pool = FunctionPool(spec(tmp_path, "slow", timeout=1), max_processes=1)
    try:
        answer = pool.invoke(b"{}")
        assert answer.function_error == "Unhandled"
        assert answer.error is not None and answer.error["errorType"] == "Sandbox.Timedout"
        assert "Task timed out after 1.00 seconds" in answer.error["errorMessage"]
        assert pool.runtimes() == []  # the environment is gone; the next call starts one
    finally:
        pool.close()


def test_a_failing_async_invocation_is_retried_twice_then_dropped(tmp_path: Path) -> None:
    service = LambdaService(retry_delays_s=(0.0, 0.0), async_workers=1)
    pool = FunctionPool(spec(tmp_path, "boom"), max_processes=1)
    service.add(pool)
    service.start()
    try:
        service.invoke_async(pool.spec.name, b"{}")
        deadline = time.monotonic() + 60
        while not service.idle():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        service.close()
    assert pool.invocations == 3
    assert [d["error"]["errorType"] for d in service.dropped] == ["KeyError"]


class FakeJob:
    """What :class:`BatchRunner` sees of a job (moto's side is MotoBatchJob)."""

    def __init__(self, command: list[str], timeout_s: float | None = None) -> None:
        self.job_id, self.name, self.queue, self.image = "j-1", "job", "q", "repo:none"
        self.command, self.timeout_s, self.attempts = command, timeout_s, 1
        self.environment = {"FROM_DEFINITION": "yes", "AWS_BATCH_JOB_ID": "j-1"}
        self.states: list[Any] = []

    def stop_requested(self) -> str | None:
        return None

    def running(self, attempt: int) -> None:
        self.states.append("RUNNING")

    def finished(self, exit_code: int | None, reason: str | None) -> None:
        self.states.append(("STOPPED", exit_code, reason))


def _run_batch(tmp_path: Path, job: FakeJob) -> BatchRunner:
    runner = BatchRunner(images={}, service_env={"AWS_REGION": "us-east-1"}, workdir=tmp_path)
    runner._run(job)  # type: ignore[arg-type]
    return runner


def test_a_batch_job_runs_its_command_with_its_environment(tmp_path: Path) -> None:
    script = "import os, json; print(json.dumps(dict(os.environ)))"
    job = FakeJob([sys.executable, "-c", script])
    runner = _run_batch(tmp_path, job)
    assert job.states == ["RUNNING", ("STOPPED", 0, None)]
    env = json.loads(runner.output("j-1"))
    assert env["FROM_DEFINITION"] == "yes" and env["AWS_BATCH_JQ_NAME"] == "q"
    assert "PYTEST_CURRENT_TEST" not in env


def test_a_batch_job_that_exits_non_zero_or_overruns_fails(tmp_path: Path) -> None:
    failing = FakeJob([sys.executable, "-c", "raise SystemExit(3)"])
    _run_batch(tmp_path / "a", failing)
    assert failing.states[-1] == ("STOPPED", 3, EXITED)
    slow = FakeJob([sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=1)
    _run_batch(tmp_path / "b", slow)
    assert slow.states[-1] == ("STOPPED", None, TIMED_OUT)


def test_event_patterns() -> None:
    pattern = {
        "source": ["aws.states"],
        "detail-type": ["Step Functions Execution Status Change"],
        "detail": {"status": ["FAILED", "TIMED_OUT", "ABORTED"], "stateMachineArn": ["arn:m"]},
    }
    desc = {
        "executionArn": "arn:e",
        "stateMachineArn": "arn:m",
        "name": "job-1",
        "status": "FAILED",
        "input": "{}",
    }
    event = EventBridge.execution_event(desc)
    assert matches(pattern, event)
    assert not matches(pattern, EventBridge.execution_event({**desc, "status": "SUCCEEDED"}))
    assert not matches(pattern, EventBridge.execution_event({**desc, "stateMachineArn": "x"}))
    assert matches({"detail": {"name": [{"prefix": "job-"}]}}, event)
    assert matches({"detail": {"error": [{"exists": False}]}}, {"detail": {}})
    assert matches({"detail": {"status": [{"anything-but": ["RUNNING"]}]}}, event)


def test_a_schedule_rate_is_sped_up_only_by_the_explicit_factor() -> None:
    bridge = EventBridge(client=lambda service: None, schedule_speedup=30)
    assert bridge.period_s("rate(1 minute)") == pytest.approx(2.0)
    assert bridge.period_s("rate(2 hours)") == pytest.approx(240.0)
    assert bridge.period_s("cron(0 * * * ? *)") is None


@pytest.mark.parametrize(
    ("answer", "kept"),
    [
        (b'{"batchItemFailures": []}', set()),
        (b'{"batchItemFailures": [{"itemIdentifier": "b"}]}', {"b"}),
        (b'{"batchItemFailures": [{"itemIdentifier": "zz"}]}', None),  # malformed: all kept
        (b"null", set()),
    ],
)
def test_partial_batch_failures(answer: bytes, kept: set[str] | None) -> None:
    mapping = {"FunctionResponseTypes": ["ReportBatchItemFailures"]}
    assert SqsPoller._failed_ids(answer, mapping, {"a", "b"}) == kept


def test_the_runner_images_env_lines() -> None:
    env = dockerfile_env(REPO / "layers" / "runner" / "Dockerfile")
    assert env["HOME"] == "/tmp" and env["QLAYER_SUBSTRATE"] == "aws"
    assert env["MPLBACKEND"] == "Agg"
    assert map_tmp(env, Path("/x"))["MPLCONFIGDIR"] == "/x/matplotlib"


def test_the_bootstrap_needs_only_the_standard_library() -> None:
    source = (REPO / "qlayer" / "cloudbox" / "bootstrap.py").read_text()
    # it runs as a script (python -S bootstrap.py ...) beside a zip function's code
    assert "import qlayer" not in source and "from qlayer" not in source


def test_event_patterns_with_wildcards_match_as_eventbridge_does():
    from qlayer.cloudbox.pumps import matches

    top_level_only = {"detail": {"name": [{"anything-but": {"wildcard": "*_*"}}]}}
    assert matches(top_level_only, {"detail": {"name": "20261201-124155-e337ca"}})
    assert not matches(top_level_only, {"detail": {"name": "20261201-124155-e337ca_3_7"}})
    assert matches({"detail": {"name": [{"wildcard": "job-*-x"}]}}, {"detail": {"name": "job-1-x"}})
    assert not matches({"detail": {"name": [{"wildcard": "job-*"}]}}, {"detail": {"name": "j"}})
    not_tmp = {"key": [{"anything-but": {"prefix": "tmp/"}}]}
    assert matches(not_tmp, {"key": "jobs/a"}) and not matches(not_tmp, {"key": "tmp/a"})


# -- API Gateway's edge (qlayer/cloudbox/front.py) ---------------------------------------
def test_a_request_becomes_the_rest_proxy_event_and_its_answer_the_response() -> None:
    import base64

    from qlayer.cloudbox.front import RestApi, http_answer, proxy_event

    api = RestApi("Api", "a1b2c3", "dev", "Fn", ("*/*",))
    headers = [
        ("Host", "127.0.0.1:9"),
        ("Content-Type", "application/json"),
        ("X-A", "1"),
        ("X-A", "2"),
    ]
    event = proxy_event(
        api, "POST", "/dev/api/v1/jobs/j%201/?limit=5&x=1&x=2", headers, b"{}", "127.0.0.1"
    )
    assert event["resource"] == "/{proxy+}" and event["path"] == "/api/v1/jobs/j 1/"
    assert event["pathParameters"] == {"proxy": "api/v1/jobs/j 1/"}
    assert event["httpMethod"] == "POST" and event["requestContext"]["stage"] == "dev"
    assert event["requestContext"]["path"] == "/dev/api/v1/jobs/j 1/"
    assert event["headers"]["X-A"] == "2" and event["multiValueHeaders"]["X-A"] == ["1", "2"]
    assert event["queryStringParameters"] == {"limit": "5", "x": "2"}
    assert event["multiValueQueryStringParameters"]["x"] == ["1", "2"]
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == b"{}"
    root = proxy_event(api, "GET", "/dev", [], None, "127.0.0.1")
    assert root["resource"] == "/" and root["body"] is None and root["isBase64Encoded"] is False
    text = RestApi("Api", "a1b2c3", "dev", "Fn", ())
    assert proxy_event(text, "POST", "/dev/x", headers, b"{}", "::1")["body"] == "{}"

    answer = {
        "statusCode": 201,
        "headers": {"Content-Type": "application/octet-stream"},
        "body": base64.b64encode(b"\x00\x01").decode(),
        "isBase64Encoded": True,
    }
    status, out_headers, body = http_answer(json.dumps(answer).encode(), None)
    assert (status, body) == (201, b"\x00\x01")
    assert ("Content-Type", "application/octet-stream") in out_headers
    assert http_answer(b'{"errorMessage": "boom"}', "Unhandled")[0] == 502
    assert http_answer(b"not json", None)[0] == 502


def test_the_server_makes_each_service_client_once() -> None:
    """The pumps ask for a client every tick: one made per service, shared (boto3's
    clients are thread-safe), pointed at the server's endpoint."""
    from qlayer.cloudbox.server import MotoServer

    server = MotoServer(port=45678)
    sqs = server.client("sqs")
    assert server.client("sqs") is sqs
    assert server.client("events") is not sqs
    assert sqs.meta.endpoint_url == "http://127.0.0.1:45678"
