"""The Ledger contract (qlayer/dispatch/ledger.py), on memory, SQLite and DynamoDB (moto),
and the exactly-once calls of qlayer/dispatch/calls.py over each of them."""

from __future__ import annotations

import pytest

from qlayer.dispatch import (
    NotSubmitted,
    RateLimiter,
    RateLimits,
    Slot,
    SubmissionEnded,
    SubmissionInProgress,
    admit,
    cancel_once,
    end,
    poll_once,
    submit_once,
)
from qlayer.providers.base import AsyncProvider, ProviderError, ProviderJobStatus
from qlayer.request import ExecuteRequest


class QueueProvider(AsyncProvider):
    """A provider's service, faked: it has jobs, finds them by their key's tag, records calls."""

    name = "fake"

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.calls: list[tuple] = []
        self.fail_next: BaseException | None = None
        self.on_submit = None

    def backends(self):
        return []

    def target(self, backend):
        raise NotImplementedError

    def find_job(self, backend, idempotency_key):
        self.calls.append(("find_job", idempotency_key))
        for job_id, job in self.jobs.items():
            if job["key"] == idempotency_key:
                return job_id
        return None

    def submit(self, backend, request, *, idempotency_key):
        self.calls.append(("submit", idempotency_key))
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        job_id = f"job-{len(self.jobs) + 1}"
        self.jobs[job_id] = {"key": idempotency_key, "state": "QUEUED"}
        if self.on_submit is not None:
            self.on_submit()
        return job_id

    def status(self, provider_job_id):
        self.calls.append(("status", provider_job_id))
        return ProviderJobStatus(self.jobs[provider_job_id]["state"])

    def result(self, provider_job_id):
        raise NotImplementedError

    def cancel(self, provider_job_id):
        self.calls.append(("cancel", provider_job_id))
        self.jobs[provider_job_id]["state"] = "CANCELLED"

    def submits(self) -> int:
        return sum(1 for call in self.calls if call[0] == "submit")


REQUEST = ExecuteRequest(primitive="sampler", pubs=["pub"], backend="q", then="t")


# -- the port -------------------------------------------------------------------------
def test_hold_records_a_waiting_request_once_with_the_newest_token(ledger):
    entry = ledger.hold("j/1", "q", "req/1", token="t1")
    assert (entry.state, entry.token, entry.provider_job_id, entry.slot) == (
        "WAITING",
        "t1",
        None,
        False,
    )
    assert (entry.job_id, entry.seq, entry.request_key) == ("j", 1, "req/1")
    assert ledger.hold("j/1", "q", "req/1", token="t2").token == "t2"
    assert ledger.hold("j/1", "q", "req/1").token == "t2"  # no token given: kept
    ledger.claim("j/1", "q", "req/1", owner="a")
    assert ledger.hold("j/1", "q", "req/1", token="t3").state == "CLAIMED"


def test_heartbeats_are_paced_by_the_waiters_timeout(ledger, clock):
    ledger.hold("j/1", "q", "req", token="t", heartbeat_s=300)
    ledger.hold("j/2", "q", "req", token="u")  # no timeout known: news every time
    ledger.hold("j/3", "q", "req")  # nobody waits
    entry = ledger.get("j/1")
    assert entry.heartbeat_s == 300 and not entry.heartbeat_due(clock.now)
    clock.now += 100
    assert ledger.get("j/1").heartbeat_due(clock.now)
    ledger.record_heartbeat("j/1")
    assert ledger.get("j/1").heartbeat_at == clock.now
    assert not ledger.get("j/1").heartbeat_due(clock.now + 99)
    assert ledger.get("j/1").heartbeat_due(clock.now + 100)
    assert ledger.get("j/2").heartbeat_due(clock.now)
    assert not ledger.get("j/3").heartbeat_due(clock.now + 10**6)
    ledger.record_heartbeat("missing/1")  # nothing to record: no error


def test_claim_creates_claims_waiting_and_refuses_a_live_claim(ledger, clock):
    first = ledger.claim("j/1", "q", "req", owner="a", lease_s=60)
    assert (first.state, first.owner, first.claims) == ("CLAIMED", "a", 1)
    assert ledger.claim("j/1", "q", "req", owner="b").owner == "a"  # live: not taken
    ledger.hold("j/2", "q", "req")
    waiting = ledger.claim("j/2", "q", "req", owner="b")
    assert (waiting.state, waiting.owner, waiting.claims) == ("CLAIMED", "b", 1)


def test_an_expired_claim_without_an_id_is_taken_over(ledger, clock):
    ledger.claim("j/1", "q", "req", owner="a", lease_s=60)
    clock.now += 61
    taken = ledger.claim("j/1", "q", "req", owner="b", lease_s=60)
    assert (taken.owner, taken.claims) == ("b", 2)


def test_release_lets_the_next_claim_take_over_at_once(ledger):
    ledger.claim("j/1", "q", "req", owner="a", lease_s=600)
    assert not ledger.release("j/1", "someone-else")
    assert ledger.release("j/1", "a")
    assert ledger.claim("j/1", "q", "req", owner="b").owner == "b"


def test_a_claim_with_a_provider_id_or_an_end_is_never_taken_over(ledger, clock):
    ledger.claim("j/1", "q", "req", owner="a", lease_s=1)
    ledger.record_submission("j/1", "p-1")
    clock.now += 10
    entry = ledger.claim("j/1", "q", "req", owner="b")
    assert (entry.owner, entry.state, entry.provider_job_id) == ("a", "SUBMITTED", "p-1")
    assert not ledger.release("j/1", "a")
    ledger.hold("j/2", "q", "req")
    ledger.finish("j/2", "CANCELLED")
    assert ledger.claim("j/2", "q", "req", owner="b").state == "CANCELLED"


def test_record_submission_first_writer_wins_even_when_cancelled(ledger):
    ledger.claim("j/1", "q", "req", owner="a")
    assert ledger.record_submission("j/1", "p-1").state == "SUBMITTED"
    assert ledger.record_submission("j/1", "p-2").provider_job_id == "p-1"
    ledger.claim("j/2", "q", "req", owner="a")
    ledger.finish("j/2", "CANCELLED")
    late = ledger.record_submission("j/2", "p-9")
    assert (late.state, late.provider_job_id) == ("CANCELLED", "p-9")
    with pytest.raises(KeyError):
        ledger.record_submission("nope/1", "p")


def test_set_state_records_the_providers_states(ledger):
    ledger.claim("j/1", "q", "req", owner="a")
    ledger.record_submission("j/1", "p-1")
    assert ledger.set_state("j/1", "RUNNING").state == "RUNNING"
    assert ledger.set_state("j/1", "ERROR", "calibration drift").message == "calibration drift"
    with pytest.raises(ValueError):
        ledger.set_state("j/1", "EXPLODED")
    with pytest.raises(KeyError):
        ledger.set_state("nope/1", "RUNNING")


def test_record_outcome_and_finish_happen_once(ledger):
    ledger.claim("j/1", "q", "req", owner="a")
    ledger.record_submission("j/1", "p-1")
    assert ledger.record_outcome("j/1", {"kind": "next", "seq": 2})
    assert not ledger.record_outcome("j/1", {"kind": "error"})
    assert ledger.get("j/1").outcome == {"kind": "next", "seq": 2}
    assert ledger.finish("j/1", "DONE", message="ok")
    assert not ledger.finish("j/1", "ERROR")
    assert not ledger.record_outcome("j/1", {"kind": "error"})
    entry = ledger.get("j/1")
    assert (entry.state, entry.message, entry.outcome["kind"]) == ("DONE", "ok", "next")
    assert not ledger.finish("nope/1", "DONE")
    with pytest.raises(ValueError):
        ledger.finish("j/1", "RUNNING")


def test_a_second_admission_whose_rate_says_wait_keeps_the_first_ones_slot(ledger):
    """Two dispatchers admit one waiting request: the first takes the slot and goes on to
    submit; the second finds the slot held and the rate spent. It must leave the slot
    where it is (giving it back let a job past the backend's limit: the first submits
    with no slot counted, and the next request takes the freed one)."""
    limiter = RateLimiter({"q": RateLimits(max_in_flight=1, submits_per_s=0.001, burst=1)})
    ledger.hold("j/1", "q", "req")
    ledger.hold("j/2", "q", "req")
    assert admit(ledger, limiter, "j/1", "q") == 0.0  # the first dispatcher: slot and token
    assert admit(ledger, limiter, "j/1", "q") > 0  # the second: no token to submit with
    assert ledger.get("j/1").slot and ledger.in_flight("q") == 1
    assert admit(ledger, limiter, "j/2", "q") == float("inf")  # the limit holds


def test_slots_never_exceed_the_cap_and_come_back_with_the_end(ledger):
    for n in range(4):
        ledger.hold(f"j/{n}", "q", "req")
    ledger.hold("k/0", "other", "req")
    assert [ledger.take_slot(f"j/{n}", 2) for n in range(4)] == [True, True, False, False]
    assert ledger.take_slot("j/0", 2) is Slot.HELD  # holding one already: kept, not taken
    assert ledger.take_slot("j/3", 2) is Slot.NONE
    assert ledger.in_flight("q") == 2 and ledger.take_slot("k/0", 2)  # per backend
    assert ledger.get("j/0").slot and not ledger.get("j/2").slot
    ledger.finish("j/0", "DONE")
    assert ledger.in_flight("q") == 1 and ledger.take_slot("j/2", 2)
    assert ledger.give_back_slot("j/1") and not ledger.give_back_slot("j/1")
    assert ledger.in_flight("q") == 1
    ledger.claim("j/2", "q", "req", owner="a")
    ledger.record_submission("j/2", "p")
    ledger.set_state("j/2", "CANCELLED")
    assert ledger.in_flight("q") == 0
    assert not ledger.take_slot("j/2", 5) and not ledger.take_slot("nope/1", 5)


def test_entries_in_oldest_first_by_state_and_backend(ledger, clock):
    for n, backend in enumerate(("q", "r", "q")):
        clock.now += 1
        ledger.hold(f"j/{n}", backend, "req")
    ledger.claim("j/2", "q", "req", owner="a")
    assert [e.key for e in ledger.entries_in(["WAITING"])] == ["j/0", "j/1"]
    assert [e.key for e in ledger.entries_in(["WAITING", "CLAIMED"], backend="q")] == [
        "j/0",
        "j/2",
    ]
    assert ledger.entries_in([]) == []
    assert ledger.get("nope/1") is None


# -- the calls over each ledger ---------------------------------------------------------
def test_submit_once_twice_is_one_provider_job(ledger):
    provider = QueueProvider()
    first = submit_once(ledger, provider, "j/1", "q", REQUEST)
    assert submit_once(ledger, provider, "j/1", "q", REQUEST) == first
    assert provider.submits() == 1


def test_a_live_claim_elsewhere_is_retryable(ledger):
    ledger.claim("j/1", "q", "req", owner="other", lease_s=600)
    with pytest.raises(SubmissionInProgress) as caught:
        submit_once(ledger, QueueProvider(), "j/1", "q", REQUEST)
    assert caught.value.retryable


def test_a_crash_between_acceptance_and_record_is_found_not_resubmitted(ledger, clock):
    provider = QueueProvider()
    ledger.claim("j/1", "q", "req", owner="dead", lease_s=60)
    provider.jobs["job-1"] = {"key": "j/1", "state": "RUNNING"}  # accepted, never recorded
    clock.now += 61
    assert submit_once(ledger, provider, "j/1", "q", REQUEST) == "job-1"
    assert provider.submits() == 0 and ("find_job", "j/1") in provider.calls


def test_a_failed_submit_releases_the_claim_for_the_next_try(ledger):
    provider = QueueProvider()
    provider.fail_next = ProviderError("429 Too Many Requests", retryable=True)
    with pytest.raises(ProviderError):
        submit_once(ledger, provider, "j/1", "q", REQUEST)
    assert submit_once(ledger, provider, "j/1", "q", REQUEST) == "job-1"
    assert provider.submits() == 2 and ("find_job", "j/1") in provider.calls


def test_a_cancel_during_submission_cancels_the_new_provider_job(ledger):
    provider = QueueProvider()
    provider.on_submit = lambda: cancel_once(ledger, provider, "j/1")
    with pytest.raises(SubmissionEnded) as caught:
        submit_once(ledger, provider, "j/1", "q", REQUEST)
    assert caught.value.provider_job_id == "job-1"
    assert provider.jobs["job-1"]["state"] == "CANCELLED"
    assert ledger.get("j/1").state == "CANCELLED"
    with pytest.raises(SubmissionEnded):
        submit_once(ledger, provider, "j/1", "q", REQUEST)
    assert provider.submits() == 1


def test_cancel_once_reaches_the_provider_in_every_state(ledger, clock):
    provider = QueueProvider()
    ledger.hold("w/1", "q", "req")
    assert cancel_once(ledger, provider, "w/1") is None
    assert ledger.get("w/1").state == "CANCELLED" and provider.calls == []
    job = submit_once(ledger, provider, "s/1", "q", REQUEST)
    assert cancel_once(ledger, provider, "s/1") == job
    assert provider.jobs[job]["state"] == "CANCELLED" and ledger.get("s/1").state == "CANCELLED"
    ledger.claim("c/1", "q", "req", owner="dead")  # accepted before its dispatcher died
    provider.jobs["job-x"] = {"key": "c/1", "state": "QUEUED"}
    assert cancel_once(ledger, provider, "c/1") == "job-x"
    assert ledger.get("c/1").provider_job_id == "job-x"
    assert cancel_once(ledger, provider, "missing/1") is None


def test_poll_once_records_running_states_and_end_delivers_once(ledger):
    from qlayer.interpreter import Decision

    provider = QueueProvider()
    with pytest.raises(NotSubmitted):
        poll_once(ledger, provider, "j/1")
    job = submit_once(ledger, provider, "j/1", "q", REQUEST)
    ledger.take_slot("j/1", 5)
    provider.jobs[job]["state"] = "RUNNING"
    assert poll_once(ledger, provider, "j/1").state == "RUNNING"
    assert ledger.get("j/1").state == "RUNNING"
    provider.jobs[job]["state"] = "DONE"
    assert poll_once(ledger, provider, "j/1").state == "DONE"
    assert ledger.get("j/1").state == "RUNNING"  # the end is recorded by whoever delivers it
    delivered = []
    decision = Decision("next", seq=2, stage="t")
    assert end(ledger, "j/1", decision, delivered.append)
    assert not end(ledger, "j/1", decision, delivered.append)
    assert delivered == [decision]
    assert ledger.get("j/1").state == "DONE" and ledger.in_flight("q") == 0
    polls = len(provider.calls)
    provider.jobs[job]["state"] = "RUNNING"  # a stale state after the end is never seen
    assert poll_once(ledger, provider, "j/1").state == "DONE" and len(provider.calls) == polls


def test_an_outcome_recorded_before_a_crash_is_delivered_again(ledger, tmp_path):
    from qlayer.dispatch import follow
    from qlayer.interpreter import Decision
    from qlayer.store.local import FolderStore

    provider = QueueProvider()
    submit_once(ledger, provider, "j/1", "q", REQUEST)
    decision = Decision("next", seq=2, stage="t")
    assert ledger.record_outcome("j/1", decision.to_json())  # ...and the poller died here
    status, again = follow(ledger, provider, FolderStore(tmp_path / "a"), "j/1")
    assert (status.state, again) == ("DONE", decision)
    delivered = []
    assert end(ledger, "j/1", again, delivered.append) and delivered == [decision]


def test_admit_takes_a_slot_then_a_token(ledger, clock):
    limiter = RateLimiter({"q": RateLimits(2, 1.0, 1, source="test")}, clock=clock)
    for n in range(3):
        ledger.hold(f"j/{n}", "q", "req")
    assert admit(ledger, limiter, "j/0", "q") == 0.0
    assert admit(ledger, limiter, "j/1", "q") == pytest.approx(1.0)  # rate: 1/s, burst 1
    assert not ledger.get("j/1").slot  # the slot is given back while it waits for a token
    clock.now += 1
    assert admit(ledger, limiter, "j/1", "q") == 0.0
    assert admit(ledger, limiter, "j/2", "q") == float("inf")  # both slots taken
