"""A job's timeline as a Gantt chart: segments from events, then their geometry.

:func:`segments` reads the events of :meth:`qlayer.client.Job.timeline` (the same on every
substrate) and returns one :class:`Segment` per span of time something happened in: a
stage running, an execute waiting for its QPU or device, the execute running, a fan-out
waiting for its children. :func:`layout` places them on rows, one per step, with
positions in percent of the chart's width, so the page draws them with plain CSS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Segment kinds, as the CSS classes ``kind-<kind>`` draw them.
KINDS = ("queued", "stage", "qpu-wait", "execute", "fanout")

#: Events that end whatever segment of their step is open.
_CLOSING = {"finished", "error", "worker died, retrying", "recovered after restart"}
#: Job-level events that end every open segment (the job ended).
_FINAL = {"done", "error", "cancelled"}
#: Narrowest bar drawn, in percent: an instant still shows.
MIN_WIDTH_PCT = 0.6


@dataclass
class Segment:
    """One span of a step.

    Attributes:
        seq: The step.
        label: What ran: the stage, ``execute``, or ``<child stage> ×N``.
        kind: One of :data:`KINDS`.
        start: Epoch seconds it began.
        end: Epoch seconds it ended; None while it goes on.
        note: A short fact shown on hover (a backend, a provider job id, done/total).
    """

    seq: int
    label: str
    kind: str
    start: float
    end: float | None = None
    note: str = ""
    done: int | None = None
    total: int | None = None

    @property
    def running(self) -> bool:
        return self.end is None


@dataclass
class Bar:
    """A segment placed on the chart (percent of its width)."""

    segment: Segment
    row: int
    left_pct: float
    width_pct: float

    @property
    def css(self) -> str:
        return f"left:{self.left_pct:.3f}%;width:{self.width_pct:.3f}%"


@dataclass
class Chart:
    """Everything the template draws: rows of bars and a time axis."""

    start: float
    end: float
    rows: list[tuple[str, list[Bar]]] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    running: bool = False

    @property
    def seconds(self) -> float:
        return self.end - self.start


def segments(
    timeline: Iterable[Mapping[str, Any]],
    *,
    children: Mapping[str, int] | None = None,
) -> list[Segment]:
    """The segments of a job's timeline, in the order they began.

    Args:
        timeline: The job's events (``at``, ``seq``, ``stage``, ``event``, ``detail``).
        children: ``{"done": d, "total": t}`` of the job's latest fan-out (``info()``'s
            ``children``), shown on the fan-out bar still open.
    """
    out: list[Segment] = []
    open_by_seq: dict[int, Segment] = {}

    def close(seq: int, at: float) -> None:
        segment = open_by_seq.pop(seq, None)
        if segment is not None:
            segment.end = max(at, segment.start)

    def begin(segment: Segment) -> None:
        close(segment.seq, segment.start)
        open_by_seq[segment.seq] = segment
        out.append(segment)

    for event in timeline:
        at, seq, stage = float(event["at"]), event.get("seq"), event.get("stage")
        name, detail = event["event"], event.get("detail") or {}
        if seq is None or stage is None:
            if name in _FINAL:
                for open_seq in list(open_by_seq):
                    close(open_seq, at)
            continue
        if name == "submitted" and stage != "execute":
            # the job itself was submitted: its first stage waits for a worker
            begin(Segment(seq, stage, "queued", at, note="waiting for a worker"))
        elif name == "building environment":  # its program environment is being built
            begin(Segment(seq, stage, "queued", at, note="building its environment"))
        elif name == "environment ready":
            begin(Segment(seq, stage, "queued", at, note="waiting for a worker"))
        elif name == "started":
            if stage == "execute":  # AWS: a simulator execute runs as a step of its own
                begin(Segment(seq, "execute", "execute", at, note=_note(detail)))
            else:
                begin(Segment(seq, stage, "stage", at, note=f"attempt {detail.get('attempt', 1)}"))
        elif name == "submitted":
            begin(Segment(seq, "execute", "qpu-wait", at, note=_note(detail)))
        elif name == "device running":
            begin(Segment(seq, "execute", "execute", at, note=_note(detail)))
        elif name == "fanned out":
            total = int(detail.get("children", 0))
            begin(Segment(seq, f"{stage} ×{total}", "fanout", at, done=0, total=total))
        elif name in _CLOSING:
            segment = open_by_seq.get(seq)
            if segment is not None and segment.kind == "fanout":
                segment.done = segment.total
            close(seq, at)
        elif name == "error":
            close(seq, at)
    for segment in out:
        if segment.kind == "fanout":
            if segment.running and children:
                segment.done = int(children.get("done", 0))
                segment.total = int(children.get("total", segment.total or 0))
            segment.note = f"{segment.done}/{segment.total} children done"
    return out


def _note(detail: Mapping[str, Any]) -> str:
    parts = [str(detail[key]) for key in ("backend", "provider_job_id", "state") if key in detail]
    return " · ".join(parts)


def layout(found: list[Segment], *, start: float, end: float, now: float, ticks: int = 5) -> Chart:
    """Place segments on a chart spanning ``start`` to ``end``.

    A segment still open reaches ``now``; rows are steps in order, each labelled by the
    first segment that is not a queue wait. Positions are percentages of the chart's
    width; a bar is at least :data:`MIN_WIDTH_PCT` wide and never runs past the edge.

    Args:
        found: What :func:`segments` returned.
        start: The chart's left edge (the job's submission), epoch seconds.
        end: Its right edge (the job's end, or now), epoch seconds.
        now: The time an open segment is drawn up to.
        ticks: Time-axis labels to place (the first at 0 s).
    """
    span = max(end - start, 1e-6)
    chart = Chart(start=start, end=end, running=any(s.running for s in found))
    rows: dict[int, list[Bar]] = {}
    labels: dict[int, str] = {}
    named: set[int] = set()
    order = sorted({s.seq for s in found})
    for segment in found:
        row = order.index(segment.seq)
        stop = now if segment.end is None else segment.end
        stop = min(max(stop, segment.start), end)
        left = min(max((segment.start - start) / span * 100.0, 0.0), 100.0)
        width = max((stop - segment.start) / span * 100.0, MIN_WIDTH_PCT)
        left = min(left, 100.0 - MIN_WIDTH_PCT)
        width = min(width, 100.0 - left)
        rows.setdefault(segment.seq, []).append(Bar(segment, row, left, width))
        if segment.seq not in labels or (segment.kind != "queued" and segment.seq not in named):
            labels[segment.seq] = segment.label
            if segment.kind != "queued":
                named.add(segment.seq)
    for seq in sorted(rows):
        chart.rows.append((f"{seq} · {labels[seq]}", rows[seq]))
    for index in range(max(ticks, 2)):
        fraction = index / (max(ticks, 2) - 1)
        chart.ticks.append((fraction * 100.0, _seconds(fraction * span)))
    return chart


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def chart_for(timeline: list[dict[str, Any]], info: Mapping[str, Any], *, now: float) -> Chart:
    """The chart of a job from its timeline and its ``info()`` record."""
    found = segments(timeline, children=info.get("children"))
    first = min([float(e["at"]) for e in timeline] or [float(info.get("created_at") or now)])
    start = float(info.get("created_at") or first)
    start = min(start, first)
    finished = info.get("finished_at")
    end = float(finished) if finished else now
    end = max(end, max([s.end for s in found if s.end is not None] or [start]))
    return layout(found, start=start, end=end, now=now)
