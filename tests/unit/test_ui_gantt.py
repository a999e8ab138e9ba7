"""The dashboard's Gantt chart: segments from timeline events, and their geometry."""

from __future__ import annotations

import pytest

from qlayer.ui import gantt


def event(at, seq, stage, name, detail=None):
    return {"at": at, "seq": seq, "stage": stage, "event": name, "detail": detail}


# The events a local job with an execute and a fan-out records (as SqliteJobStore has them).
FULL = [
    event(100.0, 0, "prepare", "submitted", {"backend": "aer"}),
    event(101.0, 0, "prepare", "started", {"attempt": 1, "worker": 7}),
    event(102.0, 0, "prepare", "finished", {"decision": "execute"}),
    event(102.0, 1, "execute", "submitted", {"backend": "aer", "provider_job_id": "dev-1"}),
    event(103.0, 1, "execute", "device running", {"backend": "aer", "provider_job_id": "dev-1"}),
    event(105.0, 1, "execute", "finished", {"decision": "next"}),
    event(105.0, 2, "spread", "started", {"attempt": 1}),
    event(106.0, 2, "spread", "finished", {"decision": "fanout"}),
    event(106.0, 3, "square", "fanned out", {"children": 3}),
    event(108.0, 3, "fan-in", "finished", {"decision": "next"}),
    event(108.0, 4, "gather", "started", {"attempt": 1}),
    event(110.0, 4, "gather", "finished", {"decision": "done"}),
    event(110.0, 4, None, "done"),
]


def test_segments_of_a_job_with_an_execute_and_a_fan_out():
    found = gantt.segments(FULL)
    assert [(s.seq, s.label, s.kind, s.start, s.end) for s in found] == [
        (0, "prepare", "queued", 100.0, 101.0),
        (0, "prepare", "stage", 101.0, 102.0),
        (1, "execute", "qpu-wait", 102.0, 103.0),
        (1, "execute", "execute", 103.0, 105.0),
        (2, "spread", "stage", 105.0, 106.0),
        (3, "square ×3", "fanout", 106.0, 108.0),
        (4, "gather", "stage", 108.0, 110.0),
    ]
    fan = found[5]
    assert (fan.done, fan.total, fan.note) == (3, 3, "3/3 children done")
    assert "dev-1" in found[2].note


def test_the_build_of_a_jobs_environment_is_a_bar_of_its_own():
    timeline = [
        event(100.0, 0, "start", "submitted", {"backend": "aer"}),
        event(100.1, 0, "start", "building environment", {"env": "e" * 32}),
        event(103.0, 0, "start", "environment ready", {"env": "e" * 32, "build_s": 2.9}),
        event(103.1, 0, "start", "started", {"attempt": 1, "env": "e" * 32}),
        event(104.0, 0, "start", "finished", {"decision": "done"}),
    ]
    found = gantt.segments(timeline)
    assert [(s.kind, s.start, s.end, s.note) for s in found][:3] == [
        ("queued", 100.0, 100.1, "waiting for a worker"),
        ("queued", 100.1, 103.0, "building its environment"),
        ("queued", 103.0, 103.1, "waiting for a worker"),
    ]


def test_layout_places_bars_in_percent_of_the_job_span():
    chart = gantt.layout(gantt.segments(FULL), start=100.0, end=110.0, now=110.0)
    assert [label for label, _ in chart.rows] == [
        "0 · prepare",
        "1 · execute",
        "2 · spread",
        "3 · square ×3",
        "4 · gather",
    ]
    execute = {bar.segment.kind: bar for bar in chart.rows[1][1]}
    assert execute["qpu-wait"].left_pct == pytest.approx(20.0)
    assert execute["qpu-wait"].width_pct == pytest.approx(10.0)
    assert execute["execute"].left_pct == pytest.approx(30.0)
    assert execute["execute"].width_pct == pytest.approx(20.0)
    last = chart.rows[4][1][0]
    assert last.left_pct + last.width_pct == pytest.approx(100.0)
    assert [label for _, label in chart.ticks] == ["0.0 s", "2.5 s", "5.0 s", "7.5 s", "10 s"]
    assert not chart.running


def test_a_running_stage_reaches_now_and_a_running_fan_out_shows_done_of_total():
    running = [
        *FULL[:9],  # fanned out at 106, not fanned in
    ]
    found = gantt.segments(running, children={"done": 1, "total": 3})
    fan = found[-1]
    assert fan.running and (fan.done, fan.total) == (1, 3)
    chart = gantt.layout(found, start=100.0, end=116.0, now=116.0)
    bar = chart.rows[-1][1][0]
    assert chart.running
    assert bar.left_pct == pytest.approx(6 / 16 * 100)
    assert bar.left_pct + bar.width_pct == pytest.approx(100.0)

    stage = gantt.segments([*FULL[:2]])
    chart = gantt.layout(stage, start=100.0, end=103.0, now=103.0)
    started = chart.rows[0][1][1]
    assert started.segment.running
    assert started.width_pct == pytest.approx(2 / 3 * 100)


def test_an_instant_still_shows_and_no_bar_runs_past_the_edge():
    instant = [event(100.0, 0, "a", "started"), event(100.0, 0, "a", "finished")]
    chart = gantt.layout(gantt.segments(instant), start=100.0, end=200.0, now=200.0)
    assert chart.rows[0][1][0].width_pct == gantt.MIN_WIDTH_PCT
    late = [event(200.0, 0, "a", "started"), event(250.0, 0, "a", "finished")]
    chart = gantt.layout(gantt.segments(late), start=100.0, end=200.0, now=200.0)
    bar = chart.rows[0][1][0]
    assert bar.left_pct + bar.width_pct == pytest.approx(100.0)
    assert bar.width_pct == pytest.approx(gantt.MIN_WIDTH_PCT)


def test_a_cancel_ends_what_was_open_and_a_retry_starts_a_new_bar():
    timeline = [
        event(0.0, 0, "a", "submitted"),
        event(1.0, 0, "a", "started", {"attempt": 1}),
        event(2.0, 0, "a", "worker died, retrying", {"how": "killed"}),
        event(3.0, 0, "a", "started", {"attempt": 2}),
        event(4.0, 0, "a", "cancel requested"),
        event(5.0, None, None, "cancelled"),
    ]
    found = gantt.segments(timeline)
    assert [(s.kind, s.start, s.end, s.note) for s in found] == [
        ("queued", 0.0, 1.0, "waiting for a worker"),
        ("stage", 1.0, 2.0, "attempt 1"),
        ("stage", 3.0, 5.0, "attempt 2"),
    ]


def test_chart_for_spans_submission_to_the_end_of_a_finished_job():
    info = {"created_at": 100.0, "finished_at": 110.0, "children": {"done": 3, "total": 3}}
    chart = gantt.chart_for(FULL, info, now=500.0)
    assert (chart.start, chart.end) == (100.0, 110.0)
    running = gantt.chart_for(FULL[:7], {"created_at": 100.0}, now=120.0)
    assert (running.start, running.end, running.running) == (100.0, 120.0, True)
