"""A FAKE remote QPU service, for the dispatcher's end-to-end tests. Never a real provider.

It is faithful to what qlayer relies on in a QPU service (IBM Runtime, Braket):

* every ``submit`` call that is accepted creates a new provider job (like IBM's REST
  API: no client token), durably, in its own SQLite ledger ``<dir>/fake_qpu.db``, so a
  test counts provider jobs across daemon restarts; jobs carry their idempotency key as
  a tag, and ``find_job`` looks it up (IBM job tags, Braket task tags);
* jobs go QUEUED -> RUNNING -> DONE over successive ``status`` polls;
* ``result`` returns a real ``PrimitiveResult``, computed with qiskit_aer's
  SamplerV2/EstimatorV2 from the submitted PUBs;
* ``cancel`` is recorded (the test asserts the provider saw it);
* it refuses (non-retryable, like IBM error 3458) a submission beyond
  ``QLAYER_FAKE_QPU_MAX_IN_FLIGHT`` jobs queued or running at once.

Every call is recorded in the ``calls`` table. The backend name picks a behaviour:

==================== ==============================================================
``fakeqpu_ok``       QUEUED, RUNNING, DONE over three polls
``fakeqpu_block``    submit accepts the job, writes ``<dir>/accepted.<n>``, then blocks
                     until ``<dir>/go`` exists (kill the dispatcher there)
``fakeqpu_never``    never leaves RUNNING (a completion that never arrives)
``fakeqpu_throttle`` the first two submit calls per key fail with a retryable 429
``fakeqpu_fatal``    submit fails with a non-retryable 400 and the provider's message
``fakeqpu_fail``     the job is accepted, then reports ERROR with the provider's message
``fakeqpu_echo``     QUEUED, RUNNING, QUEUED, RUNNING, DONE, DONE, then RUNNING after
                     DONE (events out of order and twice)
``fakeqpu_quick``    DONE on the first poll (a burst of many requests)
==================== ==============================================================

While ``<dir>/hold`` exists no job goes past RUNNING. Register it with
``QLAYER_PROVIDERS=fakeqpu=<this file>:FakeQpu`` and ``QLAYER_FAKE_QPU_DIR=<dir>``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from qlayer.dispatch import RateLimits
from qlayer.providers.base import AsyncProvider, BackendInfo, ProviderError, ProviderJobStatus
from qlayer.request import ExecuteRequest, decode_request, encode_request

MODES = ("ok", "block", "never", "throttle", "fatal", "fail", "echo", "quick")
FATAL_MESSAGE = "400 Bad Request: circuit uses 2-qubit gate 'cx' on uncoupled qubits (0, 4)"
FAIL_MESSAGE = "Job failed on the device: calibration drift on qubit 3 (error 1517)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, n INTEGER NOT NULL, key TEXT NOT NULL, backend TEXT NOT NULL,
    request TEXT NOT NULL, state TEXT NOT NULL, polls INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    call_id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, pid INTEGER NOT NULL,
    op TEXT NOT NULL, backend TEXT, key TEXT, job_id TEXT, outcome TEXT
);
CREATE TABLE IF NOT EXISTS peak (id INTEGER PRIMARY KEY CHECK (id = 1), in_flight INTEGER);
"""

FINAL = ("DONE", "ERROR", "CANCELLED")


class FakeQpu(AsyncProvider):
    """A FAKE QPU service (see the module docstring). Thread-safe: one connection per call."""

    name = "fakeqpu"

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        folder = folder or os.environ.get("QLAYER_FAKE_QPU_DIR")
        if not folder:
            raise RuntimeError("FakeQpu needs QLAYER_FAKE_QPU_DIR (its ledger's folder)")
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self.dir / "fake_qpu.db"
        self.max_in_flight = int(os.environ.get("QLAYER_FAKE_QPU_MAX_IN_FLIGHT", "1000000"))
        with self._conn() as conn:
            conn.executescript(SCHEMA)
        self.limits = {
            "fakeqpu": RateLimits(max_in_flight=4, submits_per_s=1000.0, burst=1000, source="fake")
        }

    # -- storage ---------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.db), timeout=60, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def _record(self, conn: sqlite3.Connection, op: str, **fields: Any) -> None:
        conn.execute(
            "INSERT INTO calls (at, pid, op, backend, key, job_id, outcome) VALUES (?,?,?,?,?,?,?)",
            (
                time.time(),
                os.getpid(),
                op,
                fields.get("backend"),
                fields.get("key"),
                fields.get("job_id"),
                fields.get("outcome"),
            ),
        )

    # -- the port --------------------------------------------------------------------
    def backends(self) -> list[BackendInfo]:
        return [
            BackendInfo(
                name=f"fakeqpu_{mode}",
                provider="fakeqpu",
                kind="qpu",
                num_qubits=27,
                noisy=False,
                max_concurrency=4,
                description=f"FAKE QPU service for tests ({mode})",
            )
            for mode in MODES
        ]

    def target(self, backend: str) -> Any:
        from qiskit.transpiler import Target

        return Target.from_configuration(
            basis_gates=["rz", "sx", "x", "rx", "cx", "measure"], num_qubits=27
        )

    def find_job(self, backend: str, idempotency_key: str) -> str | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT job_id FROM jobs WHERE key = ? ORDER BY n LIMIT 1", (idempotency_key,)
            ).fetchone()
            found = row["job_id"] if row else None
            self._record(conn, "find_job", backend=backend, key=idempotency_key, job_id=found or "")
        return found

    def submit(self, backend: str, request: ExecuteRequest, *, idempotency_key: str) -> str:
        mode = backend.removeprefix("fakeqpu_")
        raw = json.dumps(encode_request(request, None, where="the fake QPU"))
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if mode == "throttle":
                tries = conn.execute(
                    "SELECT COUNT(*) FROM calls WHERE op = 'submit' AND key = ?",
                    (idempotency_key,),
                ).fetchone()[0]
                if tries < 2:
                    self._record(
                        conn, "submit", backend=backend, key=idempotency_key, outcome="429"
                    )
                    conn.execute("COMMIT")
                    raise ProviderError("429 Too Many Requests: slow down", retryable=True)
            if mode == "fatal":
                self._record(conn, "submit", backend=backend, key=idempotency_key, outcome="400")
                conn.execute("COMMIT")
                raise ProviderError(FATAL_MESSAGE, retryable=False)
            in_flight = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state NOT IN ('DONE','ERROR','CANCELLED')"
            ).fetchone()[0]
            if in_flight >= self.max_in_flight:
                self._record(
                    conn, "submit", backend=backend, key=idempotency_key, outcome="rejected"
                )
                conn.execute("COMMIT")
                raise ProviderError(
                    f"Error 3458: you have reached the limit of {self.max_in_flight} pending jobs",
                    retryable=False,
                )
            n = conn.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM jobs").fetchone()[0]
            job_id = f"fq-{n:05d}"
            conn.execute(
                "INSERT INTO jobs (job_id, n, key, backend, request, state, created_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (job_id, n, idempotency_key, backend, raw, "QUEUED", time.time()),
            )
            conn.execute(
                "INSERT INTO peak (id, in_flight) VALUES (1, ?) ON CONFLICT(id) DO UPDATE"
                " SET in_flight = MAX(in_flight, excluded.in_flight)",
                (in_flight + 1,),
            )
            self._record(
                conn, "submit", backend=backend, key=idempotency_key, job_id=job_id, outcome="ok"
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        if mode == "block":  # accepted: the dispatcher may now die before it records the id
            (self.dir / f"accepted.{n}").write_text(job_id)
            deadline = time.monotonic() + 120
            while not (self.dir / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return job_id

    def status(self, provider_job_id: str) -> ProviderJobStatus:
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (provider_job_id,)).fetchone()
            if row is None:
                conn.execute("COMMIT")
                raise ProviderError(f"404 job {provider_job_id} not found", retryable=False)
            mode = row["backend"].removeprefix("fakeqpu_")
            polls = row["polls"] + 1
            state, message = self._script(mode, row["state"], polls)
            conn.execute(
                "UPDATE jobs SET polls = ?, state = ? WHERE job_id = ?",
                (polls, state, provider_job_id),
            )
            self._record(conn, "status", job_id=provider_job_id, outcome=state)
            conn.execute("COMMIT")
        return ProviderJobStatus(
            state,  # type: ignore[arg-type]
            queue_position=2 if state == "QUEUED" else None,
            message=message,
            usage_seconds=1.5 if state == "DONE" else None,
        )

    def _script(self, mode: str, current: str, polls: int) -> tuple[str, str | None]:
        if current == "CANCELLED":
            return "CANCELLED", "cancelled by the user"
        held = (self.dir / "hold").exists()
        if mode == "echo":
            # Out of order and twice: QUEUED, RUNNING, QUEUED, RUNNING, DONE, DONE, then a
            # stale RUNNING after DONE.
            script = ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "DONE", "DONE"]
            return (script[polls - 1] if polls <= len(script) else "RUNNING"), None
        if current in FINAL:
            return current, None
        if mode == "quick" and not held:
            return "DONE", None
        if polls <= 1:
            return "QUEUED", None
        if polls == 2 or held or mode == "never":
            return "RUNNING", None
        if mode == "fail":
            return "ERROR", FAIL_MESSAGE
        return "DONE", None

    def result(self, provider_job_id: str) -> Any:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (provider_job_id,)).fetchone()
            self._record(conn, "result", job_id=provider_job_id)
        if row is None or row["state"] not in ("DONE", "RUNNING"):
            raise ProviderError(f"job {provider_job_id} has no result", retryable=False)
        request = decode_request(json.loads(row["request"]))
        return run_with_aer(request)

    def cancel(self, provider_job_id: str) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'CANCELLED' WHERE job_id = ?"
                " AND state NOT IN ('DONE','ERROR','CANCELLED')",
                (provider_job_id,),
            )
            self._record(conn, "cancel", job_id=provider_job_id)

    # -- for the tests ---------------------------------------------------------------
    def jobs(self) -> list[dict[str, Any]]:
        with self._conn() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY n").fetchall()]

    def calls(self, op: str | None = None) -> list[dict[str, Any]]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM calls ORDER BY call_id").fetchall()
        return [dict(r) for r in rows if op is None or r["op"] == op]

    def peak_in_flight(self) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT in_flight FROM peak WHERE id = 1").fetchone()
        return int(row[0]) if row else 0


def run_with_aer(request: ExecuteRequest) -> Any:
    """The request's PUBs through qiskit_aer's V2 primitives (the fake device's 'hardware')."""
    from qiskit_aer.primitives import EstimatorV2, SamplerV2

    if request.primitive == "sampler":
        sampler = SamplerV2(default_shots=request.shots or 1024, seed=request.seed)
        return sampler.run(request.pubs).result()
    options: dict[str, Any] = {}
    if request.precision is not None:
        options["default_precision"] = request.precision
    if request.seed is not None:
        options["run_options"] = {"seed": request.seed}
    return EstimatorV2(options=options).run(request.pubs).result()
