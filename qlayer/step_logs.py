"""A step's log: qlayer's own lines (:func:`note`), and what a stage prints or logs.

A stage's ``print`` and ``logging`` output go to its step's log (``keys.log_key``), line by
line, flushed while it runs; each attempt at a step is labelled (earlier attempts' lines
stay).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from qlayer import keys
from qlayer.errors import ArtifactError
from qlayer.store.base import ArtifactStore


def note(store: ArtifactStore, job_id: str, seq: int, name: str, text: str) -> None:
    """Append a line of qlayer's own (not the stage's) to step ``seq``'s log."""
    if not text.strip():
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    try:
        store.append_text(keys.log_key(job_id, seq, name), f"{stamp} qlayer  {text.rstrip()}\n")
    except Exception:  # a log line must never fail a step
        logging.getLogger("qlayer").exception("cannot write a log line for %s", job_id)


def attempt_of(store: ArtifactStore, key: str, stage: str) -> int:
    """Which attempt at this step this is: one more than the starts its log records.

    A step is attempted again when the process running it died (a daemon restart, a
    killed worker, a Lambda retried); the earlier attempts' lines stay in the log.
    """
    try:
        text = store.get_bytes(key).decode("utf-8", "replace")
    except ArtifactError:
        return 1
    return text.count(f" stage {stage} started (") + 1


class _LogSink:
    """Buffers stage output and appends it to the stage's log artifact line by line.

    Where appending is cheap (a local folder) logged lines are written at once and a
    thread flushes printed output every :attr:`FLUSH_S` while the stage runs, so a
    worker killed mid-stage loses at most that much of what it printed.
    """

    FLUSH_S = 0.25

    def __init__(self, store: ArtifactStore, key: str) -> None:
        self.store = store
        self.key = key
        self._buffer: list[str] = []
        #: The buffer holds the stage's own output (printed, or logged by it).
        self._own = False
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        #: Set inside :meth:`flushing`: start the flushing thread once output waits.
        self._start_flusher: Any = None

    def write(self, text: str) -> int:
        """Printed output: buffered, appended a line at a time at most every 0.5 s."""
        return self._add(text, own=True)

    def _add(self, text: str, *, own: bool) -> int:
        if text:
            with self._lock:
                self._buffer.append(text)
                self._own = self._own or own
            if "\n" in text and (
                time.monotonic() - self._last_flush > 0.5 or len(self._buffer) > 200
            ):
                self.flush()
            elif self._start_flusher is not None:
                self._start_flusher()
        return len(text)

    def write_line(self, text: str, *, now: bool, own: bool = True) -> None:
        """A logged line: appended at once if ``now``, else with the printed output.

        Args:
            own: The stage's line, not qlayer's: once appended it must survive a kill
                (:meth:`ArtifactStore.make_durable`).
        """
        if not now:
            self._add(text, own=own)
            return
        with self._lock:
            self._buffer.append(text)
            self._own = self._own or own
        self.flush()

    def flush(self) -> None:
        with self._lock:
            text, self._buffer = "".join(self._buffer), []
            own, self._own = self._own, False
            if text:
                self.store.append_text(self.key, text)
                if own:
                    self.store.make_durable(self.key)
            self._last_flush = time.monotonic()

    @contextlib.contextmanager
    def flushing(self) -> Iterator[None]:
        """Flush in the background while the block runs (cheap appends only).

        The thread starts when output first waits in the buffer: a stage that prints
        nothing (or whose logged lines are appended at once) costs no thread.
        """
        if not self.store.append_is_cheap:
            yield
            return
        stop = threading.Event()
        threads: list[threading.Thread] = []

        def loop() -> None:
            while not stop.wait(self.FLUSH_S):
                try:
                    self.flush()
                except Exception:  # a log line must never fail a step
                    return

        def start() -> None:
            self._start_flusher = None  # once
            thread = threading.Thread(target=loop, name="qlayer-log-flush", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no room for a thread under the stage's memory limit
                return
            threads.append(thread)

        self._start_flusher = start
        try:
            yield
        finally:
            self._start_flusher = None
            stop.set()
            for thread in threads:
                thread.join()

    def isatty(self) -> bool:
        return False


#: Marks a record qlayer logs itself on a stage's logger (``extra=QLAYER_OWN``): it may
#: be held with the step's other small artifacts, unlike the stage's own lines.
QLAYER_LINE = "qlayer_line"
QLAYER_OWN = {QLAYER_LINE: True}


class _SinkHandler(logging.Handler):
    def __init__(self, sink: _LogSink) -> None:
        super().__init__()
        self.sink = sink
        self.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # logged lines survive a kill that follows them
            now = record.levelno >= logging.WARNING or self.sink.store.append_is_cheap
            own = not getattr(record, QLAYER_LINE, False) or record.levelno >= logging.WARNING
            self.sink.write_line(self.format(record) + "\n", now=now, own=own)
        except Exception:  # pragma: no cover - logging must never break a stage
            self.handleError(record)


def stage_logger(
    store: ArtifactStore, key: str, job_id: str, stage: str
) -> tuple[logging.Logger, _LogSink]:
    sink = _LogSink(store, key)
    # Not registered with logging.getLogger: a warm worker runs many jobs, and the
    # logging module never forgets a registered logger.
    logger = logging.Logger(f"qlayer.stage.{stage}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(_SinkHandler(sink))
    return logger, sink


@contextlib.contextmanager
def redirect_output(sink: _LogSink) -> Any:
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = sink  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old_out, old_err
