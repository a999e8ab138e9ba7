"""Scale, end to end: a small job is not stuck behind a huge fan-out (a real daemon)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

import helpers
from helpers import PROGRAMS, TRIVIAL

FANOUT = PROGRAMS / "fanout.py"
N = 600


@pytest.fixture
def client(tmp_path):
    yield from helpers.local_client(tmp_path / "home", workers=1)


@pytest.mark.slow
def test_a_small_job_starts_before_the_big_trees_remaining_children(client):
    big = client.run(FANOUT, {"n": N})
    helpers.wait_for(lambda: big.info()["stage"] and "×" in big.info()["stage"], what="the fan-out")
    small = client.run(TRIVIAL, {"x": 3})
    assert small.result(timeout=120) == {"x": 3, "double": 6}
    assert big.result(timeout=300) == {"children": N}

    with helpers.db(client) as conn:
        started = [
            row[0]
            for row in conn.execute(
                "SELECT job_id FROM events WHERE event = 'started' ORDER BY event_id"
            )
        ]
    children = [job_id for job_id in started if job_id.startswith(big.job_id + "_")]
    assert len(children) == N
    after_small = started[started.index(small.job_id) :]
    # Round-robin between trees: at most a step of the big tree went before the small job
    # once it was queued; strict FIFO would have run every child first.
    assert sum(job_id.startswith(big.job_id + "_") for job_id in after_small) > N // 2
