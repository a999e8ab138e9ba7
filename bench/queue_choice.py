"""Why the local layer has its own queue instead of huey: measured, same machine, same run.

The issue asked us to prefer a well-kept library (huey with SqliteStorage) for the
durable queue unless we measured a reason not to. This script measures the two
things that decided it:

1. hop latency: a chain of no-op tasks, each enqueuing the next, under huey's default
   consumer settings and tuned ones, against a chain of no-op stages in qlayer;
2. wake-up latency after idling: huey workers back off to ``max_delay`` (10 s by
   default) when the queue is empty.

And one it cannot measure but reads from huey's source: ``SqliteStorage.dequeue``
deletes the task row *before* the task runs, so a consumer killed mid-task loses it
(at-most-once). qlayer needs at-least-once steps made idempotent, so it would keep its
own step ledger anyway — and then huey's queue would be a second, weaker copy of it.

Run: ``.venv/bin/python bench/queue_choice.py`` (needs huey: ``pip install huey``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def huey_chain(hops: int, consumer_args: list[str], idle_before: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HUEY_DB": f"{tmp}/huey.db", "PYTHONPATH": str(HERE)}
        consumer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "huey.bin.huey_consumer",
                "huey_app.huey",
                "-w",
                "2",
                "-k",
                "process",
                *consumer_args,
            ],
            env=env,
            cwd=HERE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sys.path.insert(0, str(HERE))
            os.environ["HUEY_DB"] = env["HUEY_DB"]
            import importlib

            import huey_app

            importlib.reload(huey_app)
            time.sleep(1.0 + idle_before)  # consumer up, then idle so workers back off
            marker = Path(tmp) / "done"
            started = time.time()
            huey_app.hop(hops, str(marker))
            while not marker.exists():
                time.sleep(0.001)
            time.sleep(0.01)
            return float(marker.read_text()) - started
        finally:
            consumer.terminate()
            consumer.wait(timeout=10)


def qlayer_chain(hops: int, idle_before: float) -> float:
    from qlayer import Client

    client = Client.local(tempfile.mkdtemp(prefix="qlayer-queue-"))
    client.up()
    try:
        client.run(HERE / "programs" / "chain.py", {"length": 2}).result(timeout=60)
        time.sleep(idle_before)
        started = time.perf_counter()
        client.run(HERE / "programs" / "chain.py", {"length": hops + 1}).result(timeout=120)
        return time.perf_counter() - started
    finally:
        client.down()


def main() -> int:
    hops = 20
    rows = []
    default = huey_chain(hops, [], idle_before=0.0)
    rows.append(("huey, default consumer (-d 0.1 -m 10)", default / hops * 1000))
    tuned = huey_chain(hops, ["-d", "0.001", "-m", "0.01", "-b", "1.0"], idle_before=0.0)
    rows.append(("huey, tuned polling (-d 0.001 -m 0.01)", tuned / hops * 1000))
    ours = statistics.median(qlayer_chain(hops, 0.0) for _ in range(3))
    rows.append(("qlayer daemon (pipes + wake socket)", ours / hops * 1000))
    print("| per hop, 20-hop chain of no-op tasks | ms |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    idle_huey = huey_chain(0, [], idle_before=20.0)
    idle_ours = qlayer_chain(0, 20.0)
    print()
    print("| first task after 20 s idle | s |")
    print("|---|---|")
    print(f"| huey, default consumer | {idle_huey:.2f} |")
    print(f"| qlayer daemon | {idle_ours:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
