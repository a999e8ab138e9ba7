"""The AWS ledger: :class:`qlayer.dispatch.ledger.Ledger` over the ``qpu_tasks`` table.

One item per execute request sent to the dispatcher (pk ``idempotency_key`` =
``<job-id>/<seq>``)::

    job_id, seq, backend, request_key
    status          the ledger state (WAITING, CLAIMED, SUBMITTED, QUEUED, RUNNING, DONE,
                    ERROR, CANCELLED); the GSI ``by_status`` lists entries by state,
                    oldest first (sort key ``submitted_at``, the creation time, ISO-8601)
    provider_job_id, message, owner, lease_until, claims
    task_token      the "Wait for QPU" state's token (the newest one)
    heartbeat_s, heartbeat_at   the token's heartbeat timeout; when it last got one
    decision        the outcome delivered to the state machine (JSON text)
    slot_backend    present while the entry holds one of its backend's in-flight slots
    created_at, updated_at (epoch seconds); expires_at (TTL, 30 days)

In-flight slots: one counter item per backend (key ``#limit/<backend>``, attribute
``in_flight``; it has no ``status``, so the index never lists it). An entry takes a slot in
one transaction with the counter's conditional increment (``in_flight < max``) and gives it
back in one transaction with its final state, so concurrent dispatchers never push a
backend past its limit and the counter cannot drift from the entries holding slots.

Leases: one item per named lease (key ``#lease/<name>``, ``owner`` and ``lease_until``; no
``status`` either), taken with a conditional write, e.g. the one poller that follows a
backlog (:mod:`qlayer.aws.poller`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from qlayer.aws.dynamo import Table, condition_failed, iso_now
from qlayer.dispatch.ledger import (
    DEFAULT_LEASE_S,
    FINAL_STATES,
    OPEN_STATES,
    Ledger,
    LedgerEntry,
    Slot,
    check_final,
    check_state,
)

BY_STATUS = "by_status"
TASK_TTL_S = 30 * 24 * 3600
LIMIT_PREFIX = "#limit/"
LEASE_PREFIX = "#lease/"
#: Entries read per query page where a caller stops early (:meth:`DynamoLedger.oldest_in`).
PAGE = 25


def task_key(job_id: str, seq: int) -> str:
    return f"{job_id}/{seq}"


def _open_values() -> dict[str, str]:
    return {f":open{i}": state for i, state in enumerate(OPEN_STATES)}


_IS_OPEN = "#status IN (" + ", ".join(f":open{i}" for i in range(len(OPEN_STATES))) + ")"


class DynamoLedger(Table, Ledger):
    """The ``qpu_tasks`` table. ``client`` is a boto3 DynamoDB client (injected)."""

    def _entry(self, item: Mapping[str, Any]) -> LedgerEntry:
        data = self.load(item)
        outcome = data.get("decision")
        return LedgerEntry(
            key=data["idempotency_key"],
            backend=data.get("backend", ""),
            request_key=data.get("request_key", ""),
            state=data.get("status", "CLAIMED"),
            provider_job_id=data.get("provider_job_id"),
            message=data.get("message"),
            owner=data.get("owner"),
            lease_until=float(data.get("lease_until") or 0.0),
            claims=int(data.get("claims") or 0),
            token=data.get("task_token"),
            heartbeat_s=data.get("heartbeat_s"),
            heartbeat_at=float(data.get("heartbeat_at") or 0.0),
            outcome=json.loads(outcome) if outcome else None,
            slot=bool(data.get("slot_backend")),
            created_at=float(data.get("created_at") or 0.0),
            updated_at=float(data.get("updated_at") or 0.0),
        )

    def _new_item(
        self, key: str, backend: str, request_key: str, state: str, **extra: Any
    ) -> dict[str, Any]:
        job_id, _, seq = key.rpartition("/")
        now = self.clock()
        item: dict[str, Any] = {
            "idempotency_key": key,
            "job_id": job_id,
            "seq": int(seq) if seq.isdigit() else 0,
            "backend": backend,
            "request_key": request_key,
            "status": state,
            "lease_until": 0,
            "claims": 0,
            "submitted_at": iso_now(now),
            "created_at": now,
            "updated_at": now,
            "expires_at": int(now + TASK_TTL_S),
        }
        item.update({k: v for k, v in extra.items() if v is not None})
        return item

    def _put_new(self, item: Mapping[str, Any]) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_item(
                TableName=self.table,
                Item=self.dump(item),
                ConditionExpression="attribute_not_exists(idempotency_key)",
            )
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def _conditional(self, key: str, expression: str, condition: str, **values: Any) -> bool:
        """One conditional update; False when the condition refused it."""
        return self._updated(key, expression, condition, **values) is not None

    def _updated(
        self, key: str, expression: str, condition: str, **values: Any
    ) -> LedgerEntry | None:
        """One conditional update; the entry as it is after it (one call: ``ALL_NEW``),
        or None when the condition refused it."""
        from botocore.exceptions import ClientError

        names = {"#status": "status", "#owner": "owner"}
        used = {k: v for k, v in names.items() if k in expression or k in condition}
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"idempotency_key": {"S": key}},
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeValues": self.dump(values),
        }
        if used:
            kwargs["ExpressionAttributeNames"] = used
        try:
            response = self.client.update_item(**kwargs, ReturnValues="ALL_NEW")
        except ClientError as exc:
            if condition_failed(exc):
                return None
            raise
        return self._entry(response["Attributes"])

    def _require(self, key: str) -> LedgerEntry:
        entry = self.get(key)
        if entry is None:
            raise KeyError(f"no ledger entry for {key!r}")
        return entry

    # -- the port -----------------------------------------------------------------------
    def hold(
        self,
        key: str,
        backend: str,
        request_key: str,
        *,
        token: str | None = None,
        heartbeat_s: float | None = None,
    ) -> LedgerEntry:
        item = self._new_item(
            key, backend, request_key, "WAITING", task_token=token, heartbeat_s=heartbeat_s
        )
        if self._put_new(item):
            return self._entry(self.dump(item))
        if token is not None:
            expression = "SET task_token = :t, updated_at = :now"
            values: dict[str, Any] = {":t": token, ":now": self.clock()}
            if heartbeat_s is not None:
                expression += ", heartbeat_s = :h"
                values[":h"] = heartbeat_s
            else:
                expression += " REMOVE heartbeat_s"
            updated = self._updated(key, expression, "attribute_exists(idempotency_key)", **values)
            if updated is not None:
                return updated
        return self._require(key)

    def record_heartbeat(self, key: str) -> None:
        self._conditional(
            key,
            "SET heartbeat_at = :now",
            "attribute_exists(idempotency_key)",
            **{":now": self.clock()},
        )

    def claim(
        self,
        key: str,
        backend: str,
        request_key: str,
        *,
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> LedgerEntry:
        import uuid

        owner = owner or uuid.uuid4().hex
        now = self.clock()
        fresh = self._new_item(key, backend, request_key, "CLAIMED", owner=owner)
        fresh.update(lease_until=now + lease_s, claims=1)
        if self._put_new(fresh):
            return self._entry(self.dump(fresh))
        lease = {":o": owner, ":l": now + lease_s, ":now": now}
        # a WAITING entry: this is its first claim
        claimed = self._updated(
            key,
            "SET #owner = :o, lease_until = :l, claims = :one, #status = :claimed,"
            " updated_at = :now",
            "#status = :waiting",
            **lease,
            **{":one": 1, ":claimed": "CLAIMED", ":waiting": "WAITING"},
        )
        # else a claim whose owner died before it recorded a provider job: take it over
        claimed = claimed or self._updated(
            key,
            "SET #owner = :o, lease_until = :l, updated_at = :now ADD claims :one",
            "#status = :claimed AND lease_until <= :now AND attribute_not_exists(provider_job_id)",
            **lease,
            **{":one": 1, ":claimed": "CLAIMED"},
        )
        return claimed or self._require(key)

    def release(self, key: str, owner: str) -> bool:
        return self._conditional(
            key,
            "SET lease_until = :zero",
            "#owner = :o AND #status = :claimed AND attribute_not_exists(provider_job_id)",
            **{":zero": 0, ":o": owner, ":claimed": "CLAIMED"},
        )

    def record_submission(self, key: str, provider_job_id: str) -> LedgerEntry:
        now = self.clock()
        recorded = self._updated(
            key,
            "SET provider_job_id = :p, #status = :s, updated_at = :now",
            "attribute_not_exists(provider_job_id) AND #status = :claimed",
            **{":p": provider_job_id, ":s": "SUBMITTED", ":claimed": "CLAIMED", ":now": now},
        )
        # else not CLAIMED (cancelled meanwhile): the id is still recorded, first one wins
        recorded = recorded or self._updated(
            key,
            "SET provider_job_id = :p, updated_at = :now",
            "attribute_exists(idempotency_key) AND attribute_not_exists(provider_job_id)",
            **{":p": provider_job_id, ":now": now},
        )
        return recorded or self._require(key)

    def set_state(self, key: str, state: str, message: str | None = None) -> LedgerEntry:
        check_state(state)
        if state in FINAL_STATES and self.finish(key, state, message=message):
            return self._require(key)
        expression = "SET #status = :s, updated_at = :now"
        values: dict[str, Any] = {":s": state, ":now": self.clock()}
        if message is not None:
            expression += ", message = :m"
            values[":m"] = message
        else:
            expression += " REMOVE message"
        updated = self._updated(key, expression, "attribute_exists(idempotency_key)", **values)
        if updated is None:
            raise KeyError(f"no ledger entry for {key!r}")
        return updated

    def record_outcome(self, key: str, outcome: Mapping[str, Any]) -> bool:
        return self._conditional(
            key,
            "SET decision = :d, updated_at = :now",
            f"attribute_not_exists(decision) AND {_IS_OPEN}",
            **{":d": json.dumps(dict(outcome)), ":now": self.clock(), **_open_values()},
        )

    def finish(
        self,
        key: str,
        state: str,
        *,
        outcome: Mapping[str, Any] | None = None,
        message: str | None = None,
    ) -> bool:
        from botocore.exceptions import ClientError

        check_final(state)
        values: dict[str, Any] = {":s": state, ":now": self.clock(), **_open_values()}
        sets = ["#status = :s", "updated_at = :now"]
        if outcome is not None:
            values[":d"] = json.dumps(dict(outcome))
            sets.append("decision = :d")
        if message is not None:
            values[":m"] = message
            sets.append("message = :m")
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"idempotency_key": {"S": key}},
            "UpdateExpression": "SET " + ", ".join(sets),
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": self.dump(values),
        }
        for _ in range(5):  # a slot taken or given back meanwhile: read again, try again
            current = self.get(key)
            if current is None or current.state in FINAL_STATES:
                return False
            try:
                if current.slot:
                    with_slot = {
                        **update,
                        "UpdateExpression": update["UpdateExpression"] + " REMOVE slot_backend",
                        "ConditionExpression": f"{_IS_OPEN} AND attribute_exists(slot_backend)",
                    }
                    self.client.transact_write_items(
                        TransactItems=[{"Update": with_slot}, self._decrement(current.backend)]
                    )
                else:
                    self.client.update_item(
                        **update,
                        ConditionExpression=f"{_IS_OPEN} AND attribute_not_exists(slot_backend)",
                    )
                return True
            except ClientError as exc:
                if not condition_failed(exc):
                    raise
        return False

    # -- in-flight slots ----------------------------------------------------------------
    def take_slot(self, key: str, max_in_flight: int) -> Slot:
        from botocore.exceptions import ClientError

        current = self.get(key)
        if current is None or current.state in FINAL_STATES:
            return Slot.NONE
        if current.slot:
            return Slot.HELD
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": {"idempotency_key": {"S": LIMIT_PREFIX + current.backend}},
                            "UpdateExpression": "SET in_flight = if_not_exists(in_flight, :zero)"
                            " + :one",
                            "ConditionExpression": "attribute_not_exists(in_flight) "
                            "OR in_flight < :max",
                            "ExpressionAttributeValues": self.dump(
                                {":zero": 0, ":one": 1, ":max": max_in_flight}
                            ),
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": {"idempotency_key": {"S": key}},
                            "UpdateExpression": "SET slot_backend = :b",
                            "ConditionExpression": f"{_IS_OPEN} AND attribute_not_exists("
                            "slot_backend)",
                            "ExpressionAttributeNames": {"#status": "status"},
                            "ExpressionAttributeValues": self.dump(
                                {":b": current.backend, **_open_values()}
                            ),
                        }
                    },
                ]
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            return Slot.NONE  # every slot taken (or the entry ended or got one meanwhile)
        return Slot.TAKEN

    def give_back_slot(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        current = self.get(key)
        if current is None or not current.slot:
            return False
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
                    self._decrement(current.backend),
                ]
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            return False
        return True

    def _decrement(self, backend: str) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table,
                "Key": {"idempotency_key": {"S": LIMIT_PREFIX + backend}},
                "UpdateExpression": "ADD in_flight :minus",
                "ExpressionAttributeValues": {":minus": {"N": "-1"}},
            }
        }

    def in_flight(self, backend: str) -> int:
        item = self.client.get_item(
            TableName=self.table,
            Key={"idempotency_key": {"S": LIMIT_PREFIX + backend}},
            ConsistentRead=True,
        ).get("Item")
        return int(item["in_flight"]["N"]) if item and "in_flight" in item else 0

    # -- reads --------------------------------------------------------------------------
    def get(self, key: str) -> LedgerEntry | None:
        item = self.client.get_item(
            TableName=self.table, Key={"idempotency_key": {"S": key}}, ConsistentRead=True
        )
        return self._entry(item["Item"]) if "Item" in item else None

    def oldest_in(
        self, state: str, *, backend: str | None = None, page: int = PAGE
    ) -> Iterator[LedgerEntry]:
        """The entries in ``state``, oldest first (the index's order), read a page at a time
        as the caller goes on: one that stops early (a drain whose slots are all taken)
        reads one page, not every waiting entry."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": BY_STATUS,
            "KeyConditionExpression": "#status = :s",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":s": {"S": state}},
            "Limit": page,
        }
        if backend is not None:
            kwargs["FilterExpression"] = "backend = :b"
            kwargs["ExpressionAttributeValues"][":b"] = {"S": backend}
        while True:
            got = self.client.query(**kwargs)
            yield from sorted(
                (self._entry(item) for item in got.get("Items", [])),
                key=lambda e: (e.created_at, e.key),
            )
            if "LastEvaluatedKey" not in got:
                return
            kwargs["ExclusiveStartKey"] = got["LastEvaluatedKey"]

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold the lease ``name`` for ``seconds`` if it is free, has run out, or is
        ``owner``'s already (a conditional write: of two callers, one gets it)."""
        from botocore.exceptions import ClientError

        now = self.clock()
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"idempotency_key": {"S": LEASE_PREFIX + name}},
                UpdateExpression="SET #owner = :o, lease_until = :until",
                ConditionExpression="attribute_not_exists(lease_until) OR lease_until <= :now"
                " OR #owner = :o",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues=self.dump(
                    {":o": owner, ":until": now + seconds, ":now": now}
                ),
            )
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease ``name`` now (a consistent read), or None."""
        item = self.client.get_item(
            TableName=self.table,
            Key={"idempotency_key": {"S": LEASE_PREFIX + name}},
            ConsistentRead=True,
        ).get("Item")
        if not item:
            return None
        data = self.load(item)
        if float(data.get("lease_until") or 0) <= self.clock():
            return None
        return str(data.get("owner"))

    def drop_lease(self, name: str, owner: str) -> None:
        """Give the lease ``name`` back, if ``owner`` still holds it."""
        self._conditional(
            LEASE_PREFIX + name,
            "SET lease_until = :zero",
            "#owner = :o",
            **{":zero": 0, ":o": owner},
        )

    def entries_in(self, states: Iterable[str], *, backend: str | None = None) -> list[LedgerEntry]:
        wanted = list(states)
        out: list[LedgerEntry] = []
        for state in wanted:
            kwargs: dict[str, Any] = {
                "TableName": self.table,
                "IndexName": BY_STATUS,
                "KeyConditionExpression": "#status = :s",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {":s": {"S": state}},
            }
            if backend is not None:
                kwargs["FilterExpression"] = "backend = :b"
                kwargs["ExpressionAttributeValues"][":b"] = {"S": backend}
            while True:
                page = self.client.query(**kwargs)
                out.extend(self._entry(item) for item in page.get("Items", []))
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(out, key=lambda e: (e.created_at, e.key))
