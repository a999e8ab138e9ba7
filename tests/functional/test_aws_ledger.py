"""What the DynamoDB ledger adds to the port for the AWS poller: oldest-first pages, leases.

moto in this process (``mock_aws``); the port's own contract is tests/contract.
"""

from __future__ import annotations

from typing import Any

import pytest
from aws_fixtures import TASKS_TABLE

from qlayer.aws.ledger import DynamoLedger

pytestmark = pytest.mark.moto


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(aws: Any, clock: Clock) -> DynamoLedger:
    return DynamoLedger(TASKS_TABLE, aws.session.client("dynamodb"), clock=clock)


def queries(ledger: DynamoLedger) -> list[dict[str, Any]]:
    """The Query calls the ledger's client sends from now on (botocore's own event)."""
    sent: list[dict[str, Any]] = []
    ledger.client.meta.events.register(
        "provide-client-params.dynamodb.Query", lambda params, **_: sent.append(params)
    )
    return sent


def test_oldest_in_goes_oldest_first_across_pages_for_one_backend(
    ledger: DynamoLedger, clock: Clock
) -> None:
    made = []
    for n in range(12):
        clock.now += 1
        backend = "b1" if n % 3 else "b2"
        ledger.hold(f"job{11 - n:02d}/1", backend, f"req/{n}")
        if backend == "b1":
            made.append(f"job{11 - n:02d}/1")
    sent = queries(ledger)
    got = [e.key for e in ledger.oldest_in("WAITING", backend="b1", page=3)]
    assert got == made  # by age, not by key
    assert len(sent) >= 3 and all(q["Limit"] == 3 for q in sent)
    assert [e.key for e in ledger.oldest_in("CLAIMED")] == []


def test_a_caller_that_stops_early_reads_one_page(ledger: DynamoLedger, clock: Clock) -> None:
    for n in range(30):
        clock.now += 1
        ledger.hold(f"job{n:02d}/1", "b1", f"req/{n}")
    sent = queries(ledger)
    first = next(iter(ledger.oldest_in("WAITING", page=5)))
    assert first.key == "job00/1"
    assert len(sent) == 1


def test_a_lease_has_one_holder_until_it_runs_out_or_is_dropped(
    ledger: DynamoLedger, clock: Clock
) -> None:
    assert ledger.take_lease("poller-backlog", "a", 60)
    assert not ledger.take_lease("poller-backlog", "b", 60)
    assert ledger.take_lease("poller-backlog", "a", 60)  # its holder may renew it
    ledger.drop_lease("poller-backlog", "b")  # not b's: nothing happens
    assert not ledger.take_lease("poller-backlog", "b", 60)
    clock.now += 61
    assert ledger.take_lease("poller-backlog", "b", 60)  # a's ran out
    ledger.drop_lease("poller-backlog", "b")
    assert ledger.take_lease("poller-backlog", "a", 60)
    assert ledger.take_lease("other", "b", 60)  # leases are by name
    # a lease is not an entry: the index of entries by state never lists it
    assert all(
        not e.key.startswith("#") for s in ("WAITING", "CLAIMED") for e in ledger.oldest_in(s)
    )
