"""DynamoDB adapters: the ``jobs`` table (one item per job) and the ``qpu_tasks`` table.

``jobs`` item (pk ``job_id``)::

    kind            "job" (top level, listed by the GSI ``by_created``) or "child"
    created_at      ISO-8601 UTC with microseconds (the GSI's sort key)
    updated_at, finished_at   epoch seconds
    status, stage, seq, message, error_type
    program_id, workflow, backend, arguments (JSON text: floats survive)
    parent_id, item_index, children_total
    runs            map stage -> number set of the seqs that ran it (ADD is idempotent)
    cancel_requested, execution_arn, provider_job_ids (string set)
    timeline        list of {at, seq, stage, event, detail (JSON text)}

Every status write is conditional: a final status (DONE, ERROR, CANCELLED) is never
overwritten, so a late step cannot revive a job that was cancelled or failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from qlayer.errors import JobNotFound
from qlayer.status import FINAL_STATUSES, JobStatus

BY_CREATED = "by_created"
BY_STATUS = "by_status"
TASK_TTL_S = 30 * 24 * 3600
_FINAL = [status.value for status in FINAL_STATUSES]


def _serializer() -> tuple[Any, Any]:
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

    return TypeSerializer(), TypeDeserializer()


def _to_python(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_to_python(v) for v in value)
    return value


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_dynamo(v) for v in value]
    return value


def iso_now(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_to_epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


@dataclass
class JobRecord:
    """One job as the client sees it (the AWS twin of ``qlayer.local.state.JobRow``)."""

    job_id: str
    status: JobStatus
    program_id: str = ""
    workflow: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    backend: str = ""
    stage: str | None = None
    seq: int = 0
    message: str | None = None
    error_type: str | None = None
    parent_id: str | None = None
    item_index: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    cancel_requested: bool = False
    children_total: int = 0
    fanout_seq: int = 0  # the step whose children ``children_total`` counts
    execution_arn: str | None = None
    provider_job_ids: list[str] = field(default_factory=list)
    runs: dict[str, list[int]] = field(default_factory=dict)  # stage -> seqs that ran it
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> JobRecord:
        data = _to_python(dict(item))
        timeline = []
        for event in data.get("timeline") or []:
            detail = event.get("detail")
            timeline.append({**event, "detail": json.loads(detail) if detail else None})
        return cls(
            job_id=data["job_id"],
            status=JobStatus(data["status"]),
            program_id=data.get("program_id", ""),
            workflow=data.get("workflow", ""),
            arguments=json.loads(data.get("arguments") or "{}"),
            backend=data.get("backend", ""),
            stage=data.get("stage"),
            seq=int(data.get("seq") or 0),
            message=data.get("message"),
            error_type=data.get("error_type"),
            parent_id=data.get("parent_id"),
            item_index=data.get("item_index"),
            created_at=iso_to_epoch(data["created_at"]) if data.get("created_at") else 0.0,
            updated_at=float(data.get("updated_at") or 0.0),
            finished_at=data.get("finished_at"),
            cancel_requested=bool(data.get("cancel_requested")),
            children_total=int(data.get("children_total") or 0),
            fanout_seq=int(data.get("fanout_seq") or 0),
            execution_arn=data.get("execution_arn"),
            provider_job_ids=list(data.get("provider_job_ids") or []),
            runs={k: [int(s) for s in v] for k, v in (data.get("runs") or {}).items()},
            timeline=timeline,
        )

    def runs_before(self, seq: int) -> dict[str, int]:
        """Completed runs of each stage in steps before ``seq`` (``ctx.run`` - 1, max_runs)."""
        return {stage: sum(1 for s in seqs if s < seq) for stage, seqs in self.runs.items()}


class _Table:
    """A DynamoDB table behind an injected boto3 client, with typed (de)serialisation."""

    def __init__(self, table: str, client: Any, *, clock: Any = time.time) -> None:
        self.table = table
        self.client = client
        self.clock = clock
        self._ser, self._de = _serializer()

    def _dump(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._ser.serialize(_to_dynamo(v)) for k, v in values.items()}

    def _load(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._de.deserialize(v) for k, v in item.items()}


class JobTable(_Table):
    """The ``jobs`` table. ``client`` is a boto3 DynamoDB client (injected)."""

    @staticmethod
    def _event(
        now: float, seq: int | None, stage: str | None, event: str, detail: Any
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"at": now, "event": event}
        if seq is not None:
            out["seq"] = seq
        if stage is not None:
            out["stage"] = stage
        if detail is not None:
            out["detail"] = json.dumps(detail, default=str)
        return out

    # -- writes --------------------------------------------------------------------------
    def put_job(
        self,
        job_id: str,
        *,
        program_id: str,
        workflow: str,
        arguments: Mapping[str, Any],
        backend: str,
        stage: str | None = None,
        status: JobStatus = JobStatus.QUEUED,
        parent_id: str | None = None,
        item_index: int | None = None,
        message: str | None = None,
        error_type: str | None = None,
    ) -> bool:
        """Create the job's item; False (and no change) if it exists already."""
        from botocore.exceptions import ClientError

        now = self.clock()
        item: dict[str, Any] = {
            "job_id": job_id,
            "kind": "child" if parent_id else "job",
            "created_at": iso_now(now),
            "updated_at": now,
            "status": status.value,
            "seq": 0,
            "program_id": program_id,
            "workflow": workflow,
            "arguments": json.dumps(dict(arguments)),
            "backend": backend,
            "runs": {},
            "cancel_requested": False,
            "children_total": 0,
            "timeline": [
                self._event(now, 0, stage, "submitted", {"backend": backend} if backend else None)
            ],
        }
        for name, value in (
            ("stage", stage),
            ("parent_id", parent_id),
            ("item_index", item_index),
            ("message", message),
            ("error_type", error_type),
        ):
            if value is not None:
                item[name] = value
        if status.is_final:
            item["finished_at"] = now
        try:
            self.client.put_item(
                TableName=self.table,
                Item=self._dump(item),
                ConditionExpression="attribute_not_exists(job_id)",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def update(
        self,
        job_id: str,
        *,
        status: JobStatus | None = None,
        stage: str | None = None,
        seq: int | None = None,
        message: str | None = None,
        error_type: str | None = None,
        event: str | None = None,
        detail: Any = None,
        execution_arn: str | None = None,
        children_total: int | None = None,
        provider_job_id: str | None = None,
        clear_stage: bool = False,
        attrs: Mapping[str, Any] | None = None,
        event_seq: int | None = None,
        event_stage: str | None = None,
    ) -> bool:
        """Update a job that has not ended; False if it had (nothing is written then).

        ``event`` appends a timeline entry in the same write, for step ``event_seq`` of
        ``event_stage`` (default: ``seq`` and ``stage``).
        """
        from botocore.exceptions import ClientError

        now = self.clock()
        sets = ["#updated_at = :now"]
        names: dict[str, str] = {"#updated_at": "updated_at", "#status": "status"}
        values: dict[str, Any] = {":now": now}
        adds: list[str] = []
        removes: list[str] = []

        def put(name: str, value: Any) -> None:
            names[f"#{name}"] = name
            values[f":{name}"] = value
            sets.append(f"#{name} = :{name}")

        if status is not None:
            put("status", status.value)
            if status.is_final:
                put("finished_at", now)
        if stage is not None:
            put("stage", stage)
        elif clear_stage:
            names["#stage"] = "stage"
            removes.append("#stage")
        for name, value in (
            ("seq", seq),
            ("message", message),
            ("error_type", error_type),
            ("execution_arn", execution_arn),
            ("children_total", children_total),
        ):
            if value is not None:
                put(name, value)
        for name, value in (attrs or {}).items():
            put(name, value)
        if event is not None:
            names["#timeline"] = "timeline"
            values[":event"] = [
                self._event(
                    now,
                    seq if event_seq is None else event_seq,
                    stage if event_stage is None else event_stage,
                    event,
                    detail,
                )
            ]
            values[":empty"] = []
            sets.append("#timeline = list_append(if_not_exists(#timeline, :empty), :event)")
        if provider_job_id is not None:
            names["#pids"] = "provider_job_ids"
            values[":pid"] = {provider_job_id}
            adds.append("#pids :pid")
        values[":final"] = _FINAL
        expression = "SET " + ", ".join(sets)
        if adds:
            expression += " ADD " + ", ".join(adds)
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        final_values = values.pop(":final")
        condition_values = {f":final{i}": v for i, v in enumerate(final_values)}
        values.update(condition_values)
        condition = (
            "attribute_exists(job_id) AND NOT #status IN (" + ", ".join(condition_values) + ")"
        )
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=self._dump(values),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def record_run(self, job_id: str, stage: str, seq: int) -> None:
        """Count a run of ``stage`` at step ``seq`` (idempotent: the seqs are a number set)."""
        self._record_run(job_id, stage, seq)

    def _record_run(self, job_id: str, stage: str, seq: int) -> None:
        from botocore.exceptions import ClientError

        try:  # the stage's set exists: ADD the seq to it
            self.client.update_item(
                TableName=self.table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression="ADD #runs.#stage :seq",
                ConditionExpression="attribute_exists(#runs.#stage)",
                ExpressionAttributeNames={"#runs": "runs", "#stage": stage},
                ExpressionAttributeValues={":seq": {"NS": [str(seq)]}},
            )
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        try:  # first run of this stage: create its set
            self.client.update_item(
                TableName=self.table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression="SET #runs.#stage = :seq",
                ConditionExpression=(
                    "attribute_exists(job_id) AND attribute_not_exists(#runs.#stage)"
                ),
                ExpressionAttributeNames={"#runs": "runs", "#stage": stage},
                ExpressionAttributeValues={":seq": {"NS": [str(seq)]}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            self._record_run(job_id, stage, seq)  # a racing writer created it: ADD now

    def request_cancel(self, job_id: str) -> bool:
        """Set the cancel flag of a job that has not ended; False if it had."""
        from botocore.exceptions import ClientError

        try:
            self.client.update_item(
                TableName=self.table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression="SET cancel_requested = :true, updated_at = :now",
                ConditionExpression="attribute_exists(job_id) AND NOT #status IN (:f0, :f1, :f2)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=self._dump(
                    {
                        ":true": True,
                        ":now": self.clock(),
                        ":f0": _FINAL[0],
                        ":f1": _FINAL[1],
                        ":f2": _FINAL[2],
                    }
                ),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    # -- reads ---------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        item = self.client.get_item(
            TableName=self.table, Key={"job_id": {"S": job_id}}, ConsistentRead=True
        )
        if "Item" not in item:
            raise JobNotFound(f"no job {job_id!r} in table {self.table}")
        return JobRecord.from_item(self._load(item["Item"]))

    def find(self, job_id: str) -> JobRecord | None:
        try:
            return self.get(job_id)
        except JobNotFound:
            return None

    def list_jobs(self, *, limit: int = 50, status: str | None = None) -> list[JobRecord]:
        """Top-level jobs, newest first (GSI ``by_created``)."""
        out: list[JobRecord] = []
        for item in self._query_created():
            record = JobRecord.from_item(self._load(item))
            if status is not None and record.status.value != status.upper():
                continue
            out.append(record)
            if len(out) >= limit:
                break
        return out

    def _query_created(self) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": BY_CREATED,
            "KeyConditionExpression": "#kind = :job",
            "ExpressionAttributeNames": {"#kind": "kind"},
            "ExpressionAttributeValues": {":job": {"S": "job"}},
            "ScanIndexForward": False,
        }
        while True:
            page = self.client.query(**kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def children(self, parent_id: str, count: int | None = None) -> list[JobRecord]:
        """The children of a fan-out, by item index (ids follow ``steps.child_job_id``)."""
        record = self.get(parent_id)
        total = count if count is not None else record.children_total
        seq = record.fanout_seq
        from qlayer.steps import child_job_id

        ids = [child_job_id(parent_id, seq, i) for i in range(total)]
        return [r for r in self.get_many(ids) if r is not None]

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        found: dict[str, JobRecord] = {}
        for start in range(0, len(job_ids), 100):
            keys_ = [{"job_id": {"S": j}} for j in job_ids[start : start + 100]]
            request: dict[str, Any] = {self.table: {"Keys": keys_, "ConsistentRead": True}}
            while request:
                response = self.client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    record = JobRecord.from_item(self._load(item))
                    found[record.job_id] = record
                request = response.get("UnprocessedKeys") or {}
        return [found.get(j) for j in job_ids]


# ------------------------------------------------------------------------------ tasks
@dataclass
class TaskRecord:
    """One execute request handed to the dispatcher (pk ``idempotency_key`` = ``<job>/<seq>``)."""

    idempotency_key: str
    job_id: str
    seq: int
    backend: str
    request_key: str
    status: str  # CLAIMED | SUBMITTED | DONE | ERROR | CANCELLED
    task_token: str | None = None
    provider_job_id: str | None = None
    owner: str | None = None
    lease_until: float = 0.0
    claims: int = 1
    decision: dict[str, Any] | None = None
    message: str | None = None
    submitted_at: str | None = None
    slot: bool = False  # holds one of its backend's in-flight slots (see TaskTable.take_slot)


def task_key(job_id: str, seq: int) -> str:
    return f"{job_id}/{seq}"


class TaskTable(_Table):
    """The ``qpu_tasks`` table: one item per execute request sent to the dispatcher.

    ``claim`` is a conditional put (``attribute_not_exists``), so a redelivered SQS
    message never submits a second provider job; ``record_submission`` only sets a
    provider job id where none is set (first writer wins).

    Per-backend in-flight limits: one counter item per backend (key ``#limit/<backend>``,
    attribute ``in_flight``; it has no ``status``, so the ``by_status`` index never lists
    it). A task takes a slot (``take_slot``) in one transaction with the counter's
    conditional increment (``in_flight < max``) and gives it back in one transaction with
    its final status (``finish``), so concurrent dispatchers never push a backend past
    its limit and the counter cannot drift from the tasks that hold slots.
    """

    OPEN = ("CLAIMED", "SUBMITTED")
    LIMIT_PREFIX = "#limit/"

    def _record(self, item: Mapping[str, Any]) -> TaskRecord:
        data = _to_python({k: self._de.deserialize(v) for k, v in item.items()})
        decision = data.get("decision")
        return TaskRecord(
            idempotency_key=data["idempotency_key"],
            job_id=data["job_id"],
            seq=int(data["seq"]),
            backend=data.get("backend", ""),
            request_key=data.get("request_key", ""),
            status=data.get("status", "CLAIMED"),
            task_token=data.get("task_token"),
            provider_job_id=data.get("provider_job_id"),
            owner=data.get("owner"),
            lease_until=float(data.get("lease_until") or 0.0),
            claims=int(data.get("claims") or 1),
            decision=json.loads(decision) if decision else None,
            message=data.get("message"),
            submitted_at=data.get("submitted_at"),
            slot=bool(data.get("slot_backend")),
        )

    def get(self, key: str) -> TaskRecord | None:
        item = self.client.get_item(
            TableName=self.table, Key={"idempotency_key": {"S": key}}, ConsistentRead=True
        )
        return self._record(item["Item"]) if "Item" in item else None

    def claim(
        self,
        *,
        job_id: str,
        seq: int,
        backend: str,
        request_key: str,
        task_token: str | None,
        owner: str,
        lease_s: float = 300.0,
    ) -> TaskRecord:
        """Create the task if absent (the caller owns it), or take over an expired claim.

        Returns the item as it is after the call: the caller owns the claim when
        ``record.owner == owner``. The newest task token is always stored (a state
        re-entered by a retry brings a new one).
        """
        from botocore.exceptions import ClientError

        key = task_key(job_id, seq)
        now = self.clock()
        item = {
            "idempotency_key": key,
            "job_id": job_id,
            "seq": seq,
            "backend": backend,
            "request_key": request_key,
            "status": "CLAIMED",
            "owner": owner,
            "lease_until": now + lease_s,
            "claims": 1,
            "submitted_at": iso_now(now),
            "expires_at": int(now + TASK_TTL_S),
        }
        if task_token:
            item["task_token"] = task_token
        try:
            self.client.put_item(
                TableName=self.table,
                Item=self._dump(item),
                ConditionExpression="attribute_not_exists(idempotency_key)",
            )
            return self._record(self._dump(item))
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        if task_token:
            self.client.update_item(
                TableName=self.table,
                Key={"idempotency_key": {"S": key}},
                UpdateExpression="SET task_token = :t",
                ExpressionAttributeValues={":t": {"S": task_token}},
            )
        try:  # take over a claim whose owner died before it submitted anything
            self.client.update_item(
                TableName=self.table,
                Key={"idempotency_key": {"S": key}},
                UpdateExpression="SET #owner = :o, lease_until = :l ADD claims :one",
                ConditionExpression="#status = :claimed AND lease_until <= :now "
                "AND attribute_not_exists(provider_job_id)",
                ExpressionAttributeNames={"#owner": "owner", "#status": "status"},
                ExpressionAttributeValues=self._dump(
                    {
                        ":o": owner,
                        ":l": now + lease_s,
                        ":one": 1,
                        ":claimed": "CLAIMED",
                        ":now": now,
                    }
                ),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        record = self.get(key)
        assert record is not None
        return record

    def release_claim(self, key: str, owner: str, *, undo: bool = False) -> bool:
        """Let the next delivery take the claim over at once (lease ends now).

        ``undo`` also takes back this claim's count: for a claim that never called the
        provider (deferred by a limit), so the next one need not ask ``find_job``.
        """
        from botocore.exceptions import ClientError

        expression = "SET lease_until = :zero" + (" ADD claims :minus" if undo else "")
        values: dict[str, Any] = {":zero": 0, ":o": owner, ":claimed": "CLAIMED"}
        if undo:
            values[":minus"] = -1
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"idempotency_key": {"S": key}},
                UpdateExpression=expression,
                ConditionExpression="#owner = :o AND #status = :claimed "
                "AND attribute_not_exists(provider_job_id)",
                ExpressionAttributeNames={"#owner": "owner", "#status": "status"},
                ExpressionAttributeValues=self._dump(values),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False
        return True

    # -- in-flight slots -----------------------------------------------------------------
    def limit_key(self, backend: str) -> str:
        return self.LIMIT_PREFIX + backend

    def in_flight(self, backend: str) -> int:
        """Provider jobs of ``backend`` holding a slot now (the counter item)."""
        item = self.client.get_item(
            TableName=self.table,
            Key={"idempotency_key": {"S": self.limit_key(backend)}},
            ConsistentRead=True,
        ).get("Item")
        return int(item["in_flight"]["N"]) if item and "in_flight" in item else 0

    def take_slot(self, key: str, owner: str, backend: str, max_in_flight: int) -> bool:
        """Take one of ``backend``'s ``max_in_flight`` slots for task ``key`` (claimed by
        ``owner``); False when they are all taken. Idempotent: a task that holds a slot
        (a takeover after a crash) keeps it."""
        from botocore.exceptions import ClientError

        current = self.get(key)
        if current is not None and current.slot:
            return True
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": {"idempotency_key": {"S": self.limit_key(backend)}},
                            "UpdateExpression": "SET in_flight = if_not_exists(in_flight, :zero)"
                            " + :one",
                            "ConditionExpression": "attribute_not_exists(in_flight) "
                            "OR in_flight < :max",
                            "ExpressionAttributeValues": self._dump(
                                {":zero": 0, ":one": 1, ":max": max_in_flight}
                            ),
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": {"idempotency_key": {"S": key}},
                            "UpdateExpression": "SET slot_backend = :b",
                            "ConditionExpression": "#owner = :o AND #status = :claimed "
                            "AND attribute_not_exists(slot_backend)",
                            "ExpressionAttributeNames": {"#owner": "owner", "#status": "status"},
                            "ExpressionAttributeValues": self._dump(
                                {":b": backend, ":o": owner, ":claimed": "CLAIMED"}
                            ),
                        }
                    },
                ]
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            return False
        return True

    def give_back_slot(self, key: str) -> bool:
        """Return task ``key``'s slot without ending the task (its submission did not go)."""
        from botocore.exceptions import ClientError

        current = self.get(key)
        if current is None or not current.slot:
            return False
        backend = self._slot_backend(key)
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": {"idempotency_key": {"S": key}},
                            "UpdateExpression": "REMOVE slot_backend",
                            "ConditionExpression": "attribute_exists(slot_backend)",
                        }
                    },
                    self._decrement(backend),
                ]
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            return False
        return True

    def _slot_backend(self, key: str) -> str:
        item = self.client.get_item(
            TableName=self.table, Key={"idempotency_key": {"S": key}}, ConsistentRead=True
        )["Item"]
        return str(item["slot_backend"]["S"])

    def _decrement(self, backend: str) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table,
                "Key": {"idempotency_key": {"S": self.limit_key(backend)}},
                "UpdateExpression": "ADD in_flight :minus",
                "ExpressionAttributeValues": {":minus": {"N": "-1"}},
            }
        }

    def record_submission(self, key: str, provider_job_id: str) -> TaskRecord:
        """Set the provider job id if none is set yet (first writer wins).

        The status moves CLAIMED -> SUBMITTED; a task cancelled while its submission was
        in flight keeps CANCELLED but still gets the id, so the caller can cancel the job.
        """
        from botocore.exceptions import ClientError

        try:
            self.client.update_item(
                TableName=self.table,
                Key={"idempotency_key": {"S": key}},
                UpdateExpression="SET provider_job_id = :p, #status = :s",
                ConditionExpression="attribute_not_exists(provider_job_id) AND #status = :claimed",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":p": {"S": provider_job_id},
                    ":s": {"S": "SUBMITTED"},
                    ":claimed": {"S": "CLAIMED"},
                },
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            try:
                self.client.update_item(
                    TableName=self.table,
                    Key={"idempotency_key": {"S": key}},
                    UpdateExpression="SET provider_job_id = :p",
                    ConditionExpression="attribute_not_exists(provider_job_id)",
                    ExpressionAttributeValues={":p": {"S": provider_job_id}},
                )
            except ClientError as again:
                if again.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
        record = self.get(key)
        assert record is not None
        return record

    def record_outcome(self, key: str, decision: Mapping[str, Any]) -> bool:
        """Record the decision for a submitted task, once: True for the caller that wrote it.

        The poller's gate against duplicates: of two pollers that both saw DONE, only the
        one that records the outcome advances the job and wakes the state machine. A task
        with an outcome but still SUBMITTED (its poller died before ``finish``) is
        delivered again by the next poll.
        """
        from botocore.exceptions import ClientError

        try:
            self.client.update_item(
                TableName=self.table,
                Key={"idempotency_key": {"S": key}},
                UpdateExpression="SET decision = :d",
                ConditionExpression="#status = :submitted AND attribute_not_exists(decision)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":d": {"S": json.dumps(dict(decision))},
                    ":submitted": {"S": "SUBMITTED"},
                },
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def finish(
        self,
        key: str,
        status: str,
        *,
        decision: Mapping[str, Any] | None = None,
        message: str | None = None,
    ) -> bool:
        """Record the outcome (DONE/ERROR/CANCELLED) and the decision sent to the state machine.

        Only an open task (CLAIMED, SUBMITTED) is finished: True when this call ended it,
        False when it had ended already. A task holding an in-flight slot gives it back in
        the same transaction.
        """
        from botocore.exceptions import ClientError

        values: dict[str, Any] = {":s": status, ":open0": self.OPEN[0], ":open1": self.OPEN[1]}
        sets = ["#status = :s"]
        if decision is not None:
            values[":d"] = json.dumps(dict(decision))
            sets.append("decision = :d")
        if message is not None:
            values[":m"] = message
            sets.append("message = :m")
        condition = "#status IN (:open0, :open1)"
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"idempotency_key": {"S": key}},
            "UpdateExpression": "SET " + ", ".join(sets),
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": self._dump(values),
        }
        for _ in range(5):  # a slot taken or given back meanwhile: read again, try again
            current = self.get(key)
            if current is None or current.status not in self.OPEN:
                return False
            try:
                if current.slot:
                    with_slot = {
                        **update,
                        "UpdateExpression": update["UpdateExpression"] + " REMOVE slot_backend",
                        "ConditionExpression": condition + " AND attribute_exists(slot_backend)",
                    }
                    self.client.transact_write_items(
                        TransactItems=[
                            {"Update": with_slot},
                            self._decrement(self._slot_backend(key)),
                        ]
                    )
                else:
                    self.client.update_item(
                        **update,
                        ConditionExpression=condition + " AND attribute_not_exists(slot_backend)",
                    )
                return True
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in (
                    "TransactionCanceledException",
                    "ConditionalCheckFailedException",
                ):
                    raise
        return False

    def open_tasks(self, limit: int = 500) -> list[TaskRecord]:
        """Tasks submitted to a provider and not finished, oldest first (GSI ``by_status``)."""
        out: list[TaskRecord] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": BY_STATUS,
            "KeyConditionExpression": "#status = :s",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":s": {"S": "SUBMITTED"}},
        }
        while len(out) < limit:
            page = self.client.query(**kwargs)
            out.extend(self._record(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return out[:limit]

    def for_job(self, job_id: str, seqs: range | list[int]) -> list[TaskRecord]:
        found = [self.get(task_key(job_id, seq)) for seq in seqs]
        return [r for r in found if r is not None]
