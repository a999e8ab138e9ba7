"""Coalescing for a remote QPU service, end to end: the daemon and the cloud in a box.

``--jobs`` (100) jobs, each one small unseeded sampler request (|k> on 3 qubits, one PUB,
50 shots) on ``ibm_brisbane`` of the FAKE IBM Quantum Platform service
(tests/fakes/ibm_runtime, on 127.0.0.1; the real qiskit-ibm-runtime client talks to it),
all submitted at once, with coalescing (the default) and without (``QLAYER_COALESCE=0``).
The fake runs a job in two status reads (queued, running, completed): what is measured is
qlayer's side — provider calls (every runtime API request the service answered), runtime
jobs created, and each job's wait from submission to its result.

IBM's limits apply as configured for the run: ``--in-flight`` jobs pending at once
(Open Plan: 3) and no submission-rate limit (the Open Plan's 5 job creations a minute would
make the uncoalesced run last 20 minutes). Polls every ``QLAYER_QPU_POLL_S`` = 0.5 s.

Run: ``.venv/bin/python bench/coalesce_remote.py`` (``--substrate daemon`` or ``box`` for
one of them). Prints a markdown table; the box's rows take minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DAEMON_PROGRAM = REPO / "bench" / "programs" / "basis_state.py"
BOX_PROGRAM = REPO / "tests" / "functional" / "programs" / "aws_basis.py"


@contextmanager
def fake_ibm(workdir: Path) -> Iterator[Any]:
    from tests.fakes.ibm_runtime import serve_in_thread

    with serve_in_thread(workdir / "ibm") as fake:
        fake.ideal()
        yield fake


def provider_calls(fake: Any) -> int:
    from tests.fakes.ibm_runtime import RUNTIME_PREFIX

    return sum(1 for call in fake.store.calls() if call.path.startswith(RUNTIME_PREFIX))


def waits(jobs: list[Any]) -> list[float]:
    out = []
    for job in jobs:
        info = job.info()
        out.append(float(info["finished_at"]) - float(info["created_at"]))
    return out


def env_for(fake: Any, coalesce: bool, in_flight: int) -> dict[str, str]:
    creds = fake.credentials()
    limits = {"ibm": {"max_in_flight": in_flight, "submits_per_s": 1000, "burst": 1000}}
    return {
        **fake.client_env(),
        "QISKIT_IBM_TOKEN": creds["token"],
        "QISKIT_IBM_INSTANCE": creds["instance"],
        "QISKIT_IBM_URL": creds["url"],
        "QISKIT_IBM_CHANNEL": creds["channel"],
        "QLAYER_RATE_LIMITS": json.dumps(limits),
        "QLAYER_QPU_POLL_S": "0.5",
        "QLAYER_COALESCE": "1" if coalesce else "0",
    }


def measure_daemon(coalesce: bool, jobs: int, in_flight: int) -> dict[str, Any]:
    from qlayer import Client

    workdir = Path(tempfile.mkdtemp(prefix="qlayer-coalesce-remote-"))
    with fake_ibm(workdir) as fake:
        saved = dict(os.environ)
        os.environ.update(env_for(fake, coalesce, in_flight))
        client = Client.local(workdir / "home")
        client.up()
        try:
            client.run(DAEMON_PROGRAM, {"k": 0, "shots": 10}, backend="ibm_brisbane").result(
                timeout=300
            )  # warm: the device's Target fetched, workers importing qiskit
            calls0, created0 = provider_calls(fake), fake.job_creations()
            started = time.perf_counter()
            submitted = [
                client.run(DAEMON_PROGRAM, {"k": k % 8, "shots": 50}, backend="ibm_brisbane")
                for k in range(jobs)
            ]
            results = [job.result(timeout=1800) for job in submitted]
            wall = time.perf_counter() - started
            for k, result in enumerate(results):
                assert result["counts"] == {format(k % 8, "05b"): 50}, (k, result)
            return {
                "calls": provider_calls(fake) - calls0,
                "created": fake.job_creations() - created0,
                "waits": waits(submitted),
                "wall": wall,
            }
        finally:
            client.down()
            os.environ.clear()
            os.environ.update(saved)


def measure_box(coalesce: bool, jobs: int, in_flight: int) -> dict[str, Any]:
    from qlayer import Client
    from qlayer.cloudbox import BoxOptions, CloudBox, synthesize
    from qlayer.cloudbox.server import REGION

    workdir = Path(tempfile.mkdtemp(prefix="qlayer-coalesce-box-"))
    limits = {"ibm": {"max_in_flight": in_flight, "submits_per_s": 1000, "burst": 1000}}
    with fake_ibm(workdir) as fake:
        synthesis = synthesize(workdir / "cdk.out", rate_limits=limits)
        image_env = {**fake.client_env(), "QLAYER_COALESCE": "1" if coalesce else "0"}
        options = BoxOptions(image_env=image_env, max_processes=3, schedule_speedup=60.0)
        with CloudBox(synthesis, workdir / "box", options) as box:
            settings = {f"ibm_{k}": v for k, v in fake.credentials().items()}
            box.client("secretsmanager").put_secret_value(
                SecretId=box.outputs["ProvidersSecretArn"], SecretString=json.dumps(settings)
            )
            client = Client.aws(stack="Qlayer", region=REGION)
            client.run(BOX_PROGRAM, {"k": 0, "shots": 10}).result(timeout=900)  # warm
            calls0, created0 = provider_calls(fake), fake.job_creations()
            started = time.perf_counter()
            submitted = [client.run(BOX_PROGRAM, {"k": k % 8, "shots": 50}) for k in range(jobs)]
            results = [job.result(timeout=3600) for job in submitted]
            wall = time.perf_counter() - started
            for k, result in enumerate(results):
                assert result["counts"] == {format(k % 8, "03b"): 50}, (k, result)
            return {
                "calls": provider_calls(fake) - calls0,
                "created": fake.job_creations() - created0,
                "waits": waits(submitted),
                "wall": wall,
            }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=3)
    parser.add_argument("--substrate", choices=("daemon", "box", "both"), default="both")
    args = parser.parse_args()
    rows = []
    substrates = ("daemon", "box") if args.substrate == "both" else (args.substrate,)
    for substrate in substrates:
        measure = measure_daemon if substrate == "daemon" else measure_box
        for coalesce in (False, True):
            got = measure(coalesce, args.jobs, args.in_flight)
            rows.append((substrate, coalesce, got))
            print(f"# {substrate} coalesce={coalesce}: {got['calls']} calls", file=sys.stderr)
    print(
        f"| {args.jobs} small requests on ibm_brisbane (fake service), {args.in_flight} in flight"
        " | runtime jobs | provider calls | mean wait (s) | p95 wait (s) | wall (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for substrate, coalesce, got in rows:
        name = "daemon" if substrate == "daemon" else "cloud in a box"
        mode = "coalescing (default)" if coalesce else "without coalescing (`QLAYER_COALESCE=0`)"
        ordered = sorted(got["waits"])
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        print(
            f"| {name}, {mode} | {got['created']} | {got['calls']} |"
            f" {statistics.mean(got['waits']):.1f} | {p95:.1f} | {got['wall']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
