"""The event sources of the cloud in a box: SQS event source mappings and EventBridge.

Both read their configuration from moto through the AWS API, each loop, so a change
made there (``update_event_source_mapping(Enabled=False)``, ``disable_rule``) takes
effect as it would on AWS.

:class:`SqsPoller` is Lambda's poller for one SQS event source mapping: it receives up
to BatchSize messages, gathering more within MaximumBatchingWindowInSeconds, invokes
the function with the SQS event (the records as Lambda builds them), and deletes the
messages the function did not list in ``batchItemFailures`` (with
ReportBatchItemFailures; without it, or when the function fails, none). Failed
messages come back when the queue's visibility timeout ends and go to the DLQ after
the RedrivePolicy's maxReceiveCount receives: the queue's own settings, moto applies them.

:class:`EventBridge` runs the rules: a ``rate(...)`` schedule fires its targets on time
(divided by an explicit ``schedule_speedup``, the box's only time compression), and
the "Step Functions Execution Status Change" events that moto does not emit are made
from the executions' ends (FAILED, TIMED_OUT, ABORTED, SUCCEEDED) and delivered to every
rule whose pattern matches (:func:`matches`; moto has no TestEventPattern). Targets are
invoked asynchronously (``InvocationType=Event``), as EventBridge invokes Lambda.
``cron(...)`` schedules and events of other services (Braket task state changes) are
not emulated.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qlayer.cloudbox.server import ACCOUNT, REGION

log = logging.getLogger("qlayer.cloudbox")

Client = Callable[[str], Any]
_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}
#: Execution statuses an EventBridge "Execution Status Change" event is made for.
_ENDED = ("FAILED", "TIMED_OUT", "ABORTED", "SUCCEEDED")


def _iso(stamp: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """One record of Lambda's SQS event, from a ReceiveMessage message."""
    attributes = {
        k: v
        for k, v in message.get("Attributes", {}).items()
        if k
        in (
            "ApproximateReceiveCount",
            "SentTimestamp",
            "SenderId",
            "ApproximateFirstReceiveTimestamp",
            "AWSTraceHeader",
            "MessageGroupId",
            "MessageDeduplicationId",
            "SequenceNumber",
        )
    }
    attrs = {}
    for name, value in message.get("MessageAttributes", {}).items():
        attrs[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value.get("DataType"),
        }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": attrs,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


@dataclass
class SqsPoller:
    """Lambda's poller for one SQS event source mapping (see the module docstring).

    Attributes:
        client: ``client(service)`` -> a boto3 client of the box.
        uuid: The mapping's UUID.
        pollers: Concurrent batches (Lambda starts with five for SQS; the box fewer).
    """

    client: Client
    uuid: str
    pollers: int = 2
    delivered: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _seen_disabled: dict[int, bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def mapping(self) -> dict[str, Any]:
        return self.client("lambda").get_event_source_mapping(UUID=self.uuid)  # type: ignore[no-any-return]

    def start(self) -> None:
        for n in range(self.pollers):
            thread = threading.Thread(target=self._loop, args=(n,), daemon=True)
            thread.name = f"cloudbox-sqs-poller-{n}"
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def quiet(self) -> bool:
        """Every poller has seen the mapping disabled and holds no batch."""
        with self._lock:
            return len(self._seen_disabled) == self.pollers and all(self._seen_disabled.values())

    def _loop(self, n: int) -> None:
        lam, sqs = self.client("lambda"), self.client("sqs")
        while not self._stop.is_set():
            try:
                mapping = lam.get_event_source_mapping(UUID=self.uuid)
                enabled = mapping.get("State") in ("Enabled", "Enabling", None)
                with self._lock:
                    self._seen_disabled[n] = not enabled
                if not enabled:
                    time.sleep(0.1)
                    continue
                self._one_batch(lam, sqs, mapping)
            except Exception as exc:  # keep polling, as Lambda does; the box reports it
                if self._stop.is_set():
                    return
                log.exception("SQS poller %s", self.uuid)
                self.errors.append(repr(exc))
                time.sleep(0.5)

    def _one_batch(self, lam: Any, sqs: Any, mapping: dict[str, Any]) -> None:
        queue_arn = mapping["EventSourceArn"]
        account, name = queue_arn.split(":")[4:6]
        url = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        size = int(mapping.get("BatchSize") or 10)
        window = float(mapping.get("MaximumBatchingWindowInSeconds") or 0)
        messages = self._receive(sqs, url, size, wait_s=1)
        if not messages:
            return
        gathered_until = time.monotonic() + window
        while len(messages) < size and time.monotonic() < gathered_until:
            more = self._receive(sqs, url, size - len(messages), wait_s=0)
            if not more:
                time.sleep(min(0.05, max(0.0, gathered_until - time.monotonic())))
            messages += more
        self.batches.append(len(messages))
        records = [sqs_record(m, queue_arn) for m in messages]
        self.delivered.extend(records)
        out = lam.invoke(
            FunctionName=mapping["FunctionArn"],
            Payload=json.dumps({"Records": records}).encode(),
        )
        body = out["Payload"].read()
        if out.get("FunctionError"):
            log.warning("%s failed on a batch of %d: %s", name, len(records), body[:500])
            return  # the whole batch comes back after the visibility timeout
        failed = self._failed_ids(body, mapping, {r["messageId"] for r in records})
        if failed is None:
            return
        for message in messages:
            if message["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    @staticmethod
    def _receive(sqs: Any, url: str, count: int, wait_s: int) -> list[dict[str, Any]]:
        return sqs.receive_message(  # type: ignore[no-any-return]
            QueueUrl=url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])

    @staticmethod
    def _failed_ids(body: bytes, mapping: dict[str, Any], ids: set[str]) -> set[str] | None:
        """The ids to keep: the reported failures; None (keep all) for a malformed report."""
        if "ReportBatchItemFailures" not in (mapping.get("FunctionResponseTypes") or []):
            return set()
        try:
            answer = json.loads(body or b"null")
        except json.JSONDecodeError:
            return set()
        if not isinstance(answer, dict) or "batchItemFailures" not in answer:
            return set()  # no report: the batch succeeded
        failures = answer["batchItemFailures"] or []
        failed = set()
        for item in failures:
            identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not identifier or identifier not in ids:
                return None  # Lambda treats a malformed report as a failed batch
            failed.add(identifier)
        return failed


def matches(pattern: Any, event: Any) -> bool:
    """Whether an EventBridge event pattern matches an event.

    moto does not implement TestEventPattern. Supported: nested fields, lists of values
    (any of them), and the ``prefix``, ``wildcard``, ``exists`` and ``anything-but``
    (of values, or of a prefix, suffix or wildcard) filters; a field
    holding a list matches when any of its items does.
    """
    if isinstance(pattern, dict):
        if not isinstance(event, dict):
            return False
        for key, sub in pattern.items():
            if isinstance(sub, dict):
                if not matches(sub, event.get(key)):
                    return False
            elif not _field_matches(sub, key in event, event.get(key)):
                return False
        return True
    return False


def _field_matches(options: Any, present: bool, value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    for option in options if isinstance(options, list) else [options]:
        if isinstance(option, dict):
            if "exists" in option and bool(option["exists"]) == present:
                return True
            if not present:
                continue
            if "prefix" in option and any(
                isinstance(v, str) and v.startswith(option["prefix"]) for v in values
            ):
                return True
            if "wildcard" in option and any(_wildcard(option["wildcard"], v) for v in values):
                return True
            if "anything-but" in option:
                banned = option["anything-but"]
                if isinstance(banned, dict):  # {"prefix": ...}, {"suffix": ...}, {"wildcard": ...}
                    if not any(_field_matches([banned], True, v) for v in values) and not (
                        "suffix" in banned
                        and any(isinstance(v, str) and v.endswith(banned["suffix"]) for v in values)
                    ):
                        return True
                    continue
                banned = banned if isinstance(banned, list) else [banned]
                if all(v not in banned for v in values):
                    return True
        elif present and option in values:
            return True
    return False


def _wildcard(pattern: Any, value: Any) -> bool:
    """EventBridge's ``wildcard`` filter: ``*`` matches any run of characters."""
    if not isinstance(pattern, str) or not isinstance(value, str):
        return False
    return (
        re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), value) is not None
    )


@dataclass
class EventBridge:
    """Runs the rules the box deployed (see the module docstring).

    Attributes:
        client: ``client(service)`` -> a boto3 client of the box.
        schedule_speedup: Schedules fire this many times faster (1 = as written).
        tick_s: How often rules and executions are looked at.
    """

    client: Client
    schedule_speedup: float = 1.0
    tick_s: float = 0.25
    fired: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _next: dict[str, float] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._seen |= {e["executionArn"] for e in self._ended_executions()}
        self._thread = threading.Thread(target=self._loop, name="cloudbox-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                rules = self._rules()
                self._schedules(rules)
                self._execution_changes(rules)
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.exception("EventBridge emulation")
                self.errors.append(repr(exc))

    def _rules(self) -> list[dict[str, Any]]:
        events = self.client("events")
        rules: list[dict[str, Any]] = []
        for page in events.get_paginator("list_rules").paginate():
            rules += [r for r in page["Rules"] if r.get("State") == "ENABLED"]
        return rules

    def period_s(self, expression: str) -> float | None:
        """A ``rate(...)`` schedule's period in seconds, sped up; None for cron()."""
        match = _RATE.match(expression.strip())
        if not match:
            return None
        unit = match.group(2).rstrip("s")
        return int(match.group(1)) * _UNIT_S[unit] / self.schedule_speedup

    def _schedules(self, rules: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for rule in rules:
            expression = rule.get("ScheduleExpression")
            if not expression:
                continue
            period = self.period_s(expression)
            if period is None:
                continue
            due = self._next.setdefault(rule["Arn"], now + period)
            if now < due:
                continue
            self._next[rule["Arn"]] = max(due + period, now)
            event = {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": ACCOUNT,
                "time": _iso(),
                "region": REGION,
                "resources": [rule["Arn"]],
                "detail": {},
            }
            self._deliver(rule, event)

    def _ended_executions(self) -> list[dict[str, Any]]:
        sfn = self.client("stepfunctions")
        out: list[dict[str, Any]] = []
        for machine in sfn.list_state_machines()["stateMachines"]:
            for status in _ENDED:
                pages = sfn.get_paginator("list_executions").paginate(
                    stateMachineArn=machine["stateMachineArn"], statusFilter=status
                )
                for page in pages:
                    out += page["executions"]
        return out

    def _execution_changes(self, rules: list[dict[str, Any]]) -> None:
        patterns = [r for r in rules if r.get("EventPattern")]
        fresh = [e for e in self._ended_executions() if e["executionArn"] not in self._seen]
        if not fresh:
            return
        sfn = self.client("stepfunctions")
        for execution in fresh:
            self._seen.add(execution["executionArn"])
            event = self.execution_event(
                sfn.describe_execution(executionArn=execution["executionArn"])
            )
            for rule in patterns:
                if matches(json.loads(rule["EventPattern"]), event):
                    self._deliver(rule, event)

    @staticmethod
    def execution_event(desc: dict[str, Any]) -> dict[str, Any]:
        """The documented "Step Functions Execution Status Change" event of one execution."""

        def millis(value: Any) -> int | None:
            return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else None

        detail = {
            "executionArn": desc["executionArn"],
            "stateMachineArn": desc["stateMachineArn"],
            "name": desc["name"],
            "status": desc["status"],
            "startDate": millis(desc.get("startDate")),
            "stopDate": millis(desc.get("stopDate")),
            "input": desc.get("input"),
            "output": desc.get("output"),
            "inputDetails": {"included": True},
            "outputDetails": {"included": True} if desc.get("output") else None,
            "error": desc.get("error"),
            "cause": desc.get("cause"),
        }
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Step Functions Execution Status Change",
            "source": "aws.states",
            "account": ACCOUNT,
            "time": _iso(),
            "region": REGION,
            "resources": [desc["executionArn"]],
            "detail": detail,
        }

    def _deliver(self, rule: dict[str, Any], event: dict[str, Any]) -> None:
        events, lam = self.client("events"), self.client("lambda")
        targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        for target in targets:
            if ":lambda:" not in target["Arn"]:
                log.warning("rule %s: target %s is not emulated", rule["Name"], target["Arn"])
                continue
            payload = target["Input"] if "Input" in target else json.dumps(event)
            lam.invoke(FunctionName=target["Arn"], InvocationType="Event", Payload=payload)
            self.fired.append({"rule": rule["Name"], "target": target["Arn"], "event": event})
