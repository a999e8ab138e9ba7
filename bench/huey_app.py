"""A huey app for bench/queue_choice.py: one chained no-op task on SqliteHuey."""

import os
import time

from huey import SqliteHuey

huey = SqliteHuey(filename=os.environ.get("HUEY_DB", "/tmp/qlayer-huey-bench.db"))


@huey.task()
def hop(remaining: int, marker: str) -> None:
    """Re-enqueue itself ``remaining`` times, then write the finish time to ``marker``."""
    if remaining <= 0:
        with open(marker, "w") as handle:
            handle.write(repr(time.time()))
        return
    hop(remaining - 1, marker)
