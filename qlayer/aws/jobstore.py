"""The AWS job store: :class:`qlayer.core.ports.JobStore` over the ``jobs`` DynamoDB table.

One item per job (pk ``job_id``)::

    kind            "job" (top level, listed by the GSI ``by_created``) or "child"
    created_at      ISO-8601 UTC with microseconds (the GSI's sort key)
    updated_at, finished_at   epoch seconds
    status, stage, seq, message, error_type
    program_id, workflow, backend, arguments (JSON text: floats survive)
    parent_id, item_index
    children_total, children_done, fanout_seq     the latest fan-out
    runs            map stage -> number set of the seqs that ran it (ADD is idempotent)
    cancel_requested, execution_arn, provider_job_ids (string set)
    timeline        list of {at, seq, stage, event, detail (JSON text)}

Every status write is conditional: a final status (DONE, ERROR, CANCELLED) is never
overwritten, so a late step cannot revive a job that was cancelled or failed. DynamoDB
has no multi-item transaction here, so :meth:`atomic` groups nothing: the transitions
order their writes to be safe if a Lambda dies between any two.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from qlayer.aws.dynamo import Table, condition_failed, iso_now, iso_to_epoch
from qlayer.core.ports import KEEP, Event, JobRecord, JobStore, NewJob
from qlayer.errors import JobNotFound
from qlayer.status import FINAL_STATUSES, JobStatus

BY_CREATED = "by_created"
_FINAL = sorted(status.value for status in FINAL_STATUSES)
#: What a job record is read with: every attribute but the ones that grow with the job's
#: history (``timeline``, ``runs``), which their own reads fetch. A status read stays the
#: same size however long the job has run.
_RECORD_ATTRIBUTES = (
    "job_id",
    "kind",
    "created_at",
    "updated_at",
    "finished_at",
    "status",
    "stage",
    "seq",
    "message",
    "error_type",
    "program_id",
    "workflow",
    "backend",
    "arguments",
    "parent_id",
    "item_index",
    "children_total",
    "children_done",
    "fanout_seq",
    "cancel_requested",
    "execution_arn",
    "provider_job_ids",
    "env",
)
_RECORD_NAMES = {f"#a{i}": name for i, name in enumerate(_RECORD_ATTRIBUTES)}
_RECORD_PROJECTION = ", ".join(_RECORD_NAMES)
_NOT_FINAL = "NOT #status IN (:final0, :final1, :final2)"


def _final_values() -> dict[str, str]:
    return {f":final{i}": value for i, value in enumerate(_FINAL)}


class DynamoJobStore(Table, JobStore):
    """The ``jobs`` table. ``client`` is a boto3 DynamoDB client (injected)."""

    @staticmethod
    def _event(now: float, event: Event) -> dict[str, Any]:
        out: dict[str, Any] = {"at": now, "event": event.event}
        if event.seq is not None:
            out["seq"] = event.seq
        if event.stage is not None:
            out["stage"] = event.stage
        if event.detail is not None:
            out["detail"] = event.detail_json()
        return out

    def _record(self, item: Mapping[str, Any]) -> tuple[JobRecord, dict[str, Any]]:
        data = self.load(item)
        record = JobRecord(
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
            children_done=int(data.get("children_done") or 0),
            fanout_seq=int(data.get("fanout_seq") or 0),
            provider_job_ids=list(data.get("provider_job_ids") or []),
            execution_arn=data.get("execution_arn"),
            env=data.get("env"),
        )
        return record, data

    # -- writes -------------------------------------------------------------------------
    def create(self, job: NewJob) -> bool:
        from botocore.exceptions import ClientError

        now = self.clock()
        timeline = [
            self._event(
                now,
                Event(0, job.stage, "submitted", {"backend": job.backend} if job.backend else None),
            )
        ]
        if job.status == JobStatus.ERROR:
            error = {"error_type": job.error_type, "message": job.message}
            timeline.append(self._event(now, Event(0, None, "error", error)))
        item: dict[str, Any] = {
            "job_id": job.job_id,
            "kind": "child" if job.parent_id else "job",
            "created_at": iso_now(now),
            "updated_at": now,
            "status": job.status.value,
            "seq": 0,
            "program_id": job.program_id,
            "workflow": job.workflow,
            "arguments": json.dumps(dict(job.arguments)),
            "backend": job.backend,
            "runs": {},
            "cancel_requested": False,
            "children_total": 0,
            "children_done": 0,
            "fanout_seq": 0,
            "timeline": timeline,
        }
        for name, value in (
            ("stage", job.stage),
            ("parent_id", job.parent_id),
            ("item_index", job.item_index),
            ("message", job.message),
            ("error_type", job.error_type),
            ("env", job.env),
        ):
            if value is not None:
                item[name] = value
        if job.status.is_final:
            item["finished_at"] = now
        try:
            self.client.put_item(
                TableName=self.table,
                Item=self.dump(item),
                ConditionExpression="attribute_not_exists(job_id)",
            )
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def update(
        self,
        job_id: str,
        *,
        status: JobStatus | None = None,
        stage: Any = KEEP,
        seq: int | None = None,
        message: str | None = None,
        error_type: str | None = None,
        provider_job_id: str | None = None,
        event: Event | None = None,
    ) -> bool:
        return self.set(
            job_id,
            status=status,
            stage=stage,
            seq=seq,
            message=message,
            error_type=error_type,
            provider_job_id=provider_job_id,
            event=event,
        )

    def set(
        self,
        job_id: str,
        *,
        status: JobStatus | None = None,
        stage: Any = KEEP,
        seq: int | None = None,
        message: str | None = None,
        error_type: str | None = None,
        provider_job_id: str | None = None,
        event: Event | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> bool:
        """:meth:`update`, plus ``attrs``: AWS-only fields of a job that has not ended
        (``execution_arn``; ``workflow``/``backend``/``arguments`` once an inbox job is
        prepared)."""
        from botocore.exceptions import ClientError

        now = self.clock()
        sets = ["#updated_at = :now"]
        names: dict[str, str] = {"#updated_at": "updated_at", "#status": "status"}
        values: dict[str, Any] = {":now": now, **_final_values()}
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
        if stage is None:
            names["#stage"] = "stage"
            removes.append("#stage")
        elif stage is not KEEP:
            put("stage", stage)
        for name, value in (("seq", seq), ("message", message), ("error_type", error_type)):
            if value is not None:
                put(name, value)
        for name, value in (attrs or {}).items():
            put(name, value)
        if event is not None:
            names["#timeline"] = "timeline"
            values[":event"] = [self._event(now, event)]
            values[":empty"] = []
            sets.append("#timeline = list_append(if_not_exists(#timeline, :empty), :event)")
        if provider_job_id is not None:
            names["#pids"] = "provider_job_ids"
            values[":pid"] = {provider_job_id}
            adds.append("#pids :pid")
        expression = "SET " + ", ".join(sets)
        if adds:
            expression += " ADD " + ", ".join(adds)
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression=expression,
                ConditionExpression=f"attribute_exists(job_id) AND {_NOT_FINAL}",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=self.dump(values),
            )
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def add_event(self, job_id: str, event: Event) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.update_item(
                TableName=self.table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression="SET #timeline = list_append(if_not_exists(#timeline, :empty),"
                " :event)",
                ConditionExpression="attribute_exists(job_id)",
                ExpressionAttributeNames={"#timeline": "timeline"},
                ExpressionAttributeValues=self.dump(
                    {":event": [self._event(self.clock(), event)], ":empty": []}
                ),
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise

    def set_fan_out(self, parent_id: str, seq: int, total: int) -> None:
        self.client.update_item(
            TableName=self.table,
            Key={"job_id": {"S": parent_id}},
            UpdateExpression="SET children_total = :t, children_done = :zero, fanout_seq = :s",
            ConditionExpression="attribute_exists(job_id)",
            ExpressionAttributeValues=self.dump({":t": total, ":zero": 0, ":s": seq}),
        )

    def child_done(self, parent_id: str) -> tuple[int, int]:
        from botocore.exceptions import ClientError

        try:
            response = self.client.update_item(
                TableName=self.table,
                Key={"job_id": {"S": parent_id}},
                UpdateExpression="ADD children_done :one",
                ConditionExpression="attribute_exists(job_id)",
                ExpressionAttributeValues={":one": {"N": "1"}},
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if condition_failed(exc):
                raise JobNotFound(f"no job {parent_id!r} in table {self.table}") from exc
            raise
        data = self.load(response["Attributes"])
        return int(data.get("children_done") or 0), int(data.get("children_total") or 0)

    def record_run(self, job_id: str, stage: str, seq: int) -> None:
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
            if not condition_failed(exc):
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
            if not condition_failed(exc):
                raise
            if self.find(job_id) is not None:
                self.record_run(job_id, stage, seq)  # a racing writer created it: ADD now

    def request_cancel(self, job_id: str) -> bool:
        if not self._flag_cancel(job_id):
            if self.find(job_id) is None:
                raise JobNotFound(f"no job {job_id!r} in table {self.table}")
            return False
        pending = [job_id]
        while pending:
            for child in self.children(pending.pop()):
                if not child.status.is_final and self._flag_cancel(child.job_id):
                    pending.append(child.job_id)
        return True

    def _flag_cancel(self, job_id: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.update_item(
                TableName=self.table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression="SET cancel_requested = :true, updated_at = :now",
                ConditionExpression=f"attribute_exists(job_id) AND {_NOT_FINAL}",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=self.dump(
                    {":true": True, ":now": self.clock(), **_final_values()}
                ),
            )
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    # -- reads --------------------------------------------------------------------------
    def _item(self, job_id: str, *attributes: str) -> dict[str, Any]:
        """The job's item: the record's attributes, or only ``attributes`` (plus its id)."""
        if attributes:
            names = {f"#p{i}": name for i, name in enumerate(("job_id", *attributes))}
            projection = {
                "ProjectionExpression": ", ".join(names),
                "ExpressionAttributeNames": names,
            }
        else:
            projection = {
                "ProjectionExpression": _RECORD_PROJECTION,
                "ExpressionAttributeNames": _RECORD_NAMES,
            }
        item = self.client.get_item(
            TableName=self.table,
            Key={"job_id": {"S": job_id}},
            ConsistentRead=True,
            **projection,
        )
        if "Item" not in item:
            raise JobNotFound(f"no job {job_id!r} in table {self.table}")
        return item["Item"]  # type: ignore[no-any-return]

    def get(self, job_id: str) -> JobRecord:
        return self._record(self._item(job_id))[0]

    def timeline(self, job_id: str) -> list[dict[str, Any]]:
        data = self.load(self._item(job_id, "timeline"))
        out = []
        for event in data.get("timeline") or []:
            detail = event.get("detail")
            out.append(
                {
                    "at": event.get("at"),
                    "seq": event.get("seq"),
                    "stage": event.get("stage"),
                    "event": event["event"],
                    "detail": json.loads(detail) if detail else None,
                }
            )
        return out

    def runs_before(self, job_id: str, seq: int) -> dict[str, int]:
        runs = self.load(self._item(job_id, "runs")).get("runs") or {}
        counts = {stage: sum(1 for s in seqs if int(s) < seq) for stage, seqs in runs.items()}
        return {stage: n for stage, n in counts.items() if n}

    def children(self, parent_id: str) -> list[JobRecord]:
        from qlayer.core.transitions import child_job_id

        parent = self.find(parent_id)
        if parent is None or not parent.children_total:
            return []
        ids = [child_job_id(parent_id, parent.fanout_seq, i) for i in range(parent.children_total)]
        return [record for record in self.get_many(ids) if record is not None]

    def list_jobs(self, *, limit: int = 50, status: str | None = None) -> list[JobRecord]:
        out: list[JobRecord] = []
        for item in self._query_created():
            record = self._record(item)[0]
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
            "ExpressionAttributeNames": {"#kind": "kind", **_RECORD_NAMES},
            "ExpressionAttributeValues": {":job": {"S": "job"}},
            "ProjectionExpression": _RECORD_PROJECTION,
            "ScanIndexForward": False,
        }
        while True:
            page = self.client.query(**kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """The jobs of ``job_ids`` (None where there is none), in order: batched reads."""
        found: dict[str, JobRecord] = {}
        for start in range(0, len(job_ids), 100):
            keys_ = [{"job_id": {"S": j}} for j in job_ids[start : start + 100]]
            request: dict[str, Any] = {
                self.table: {
                    "Keys": keys_,
                    "ConsistentRead": True,
                    "ProjectionExpression": _RECORD_PROJECTION,
                    "ExpressionAttributeNames": _RECORD_NAMES,
                }
            }
            while request:
                response = self.client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    record = self._record(item)[0]
                    found[record.job_id] = record
                request = response.get("UnprocessedKeys") or {}
        return [found.get(j) for j in job_ids]
