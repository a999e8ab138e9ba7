"""A warm worker process: runs stages and simulated-device jobs for the daemon.

Workers are forked from the daemon after it has imported qiskit, so no stage
pays for imports. Each worker dies with the daemon (``PR_SET_PDEATHSIG``), so a
killed daemon never leaves a stage running unseen. Messages are JSON over a pipe.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import resource
import signal
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from qlayer import keys
from qlayer.errors import ArtifactError
from qlayer.local import envs, procs
from qlayer.local.artifacts import HomeStore, encode_records
from qlayer.local.health import storage_fault
from qlayer.planner import Resources
from qlayer.program import ProgramCache
from qlayer.request import decode_request
from qlayer.steps import JobInfo, complete_execute, run_stage

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the daemon) dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:  # pragma: no cover - not Linux
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)  # the daemon died before the request above took effect


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _address_space_mb() -> int:
    """This process's address space (``VmSize``), from ``/proc/self/statm``'s first field:
    one short line, where ``status`` is forty (read before every stage)."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            pages = int(os.read(fd, 128).split(maxsplit=1)[0])
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0
    return pages * _PAGE_BYTES // (1024 * 1024)


class MemoryLimit:
    """Cap the address space for one stage: what the worker uses now plus ``memory_mb``."""

    def __init__(self, memory_mb: int | None) -> None:
        self.memory_mb = memory_mb
        self._old: tuple[int, int] | None = None

    def __enter__(self) -> MemoryLimit:
        if self.memory_mb:
            self._old = resource.getrlimit(resource.RLIMIT_AS)
            limit = (_address_space_mb() + self.memory_mb) * 1024 * 1024
            hard = self._old[1]
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            resource.setrlimit(resource.RLIMIT_AS, self._old)


def release_daemon_lock(lock_fd: int | None) -> None:
    """Drop this process's reference to the daemon's lock file (inherited by fork).

    The daemon's ``flock`` belongs to the open file, not to the process: any process
    holding a copy keeps it locked. A stage that forks (multiprocessing) would hand the
    copy to processes that outlive a killed daemon, and no daemon could start again
    until they ended. Point the descriptor at /dev/null instead (the number stays valid).
    """
    if lock_fd is None:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, lock_fd)
    finally:
        os.close(null)


def worker_main(
    conn: Connection,
    artifacts: str,
    scratch: str,
    local_memory_mb: int,
    lock_fd: int | None = None,
    *,
    watch_parent: bool = True,
    db: str | None = None,
) -> None:
    """Serve requests from the daemon until the pipe closes.

    Args:
        watch_parent: Ask to die with the parent (False when the zygote did it).
        db: The state database: a stage step's small artifacts are held and handed to
            the daemon with its reply (:mod:`qlayer.local.artifacts`). None: files only.
    """
    if watch_parent:
        die_with_parent()
    release_daemon_lock(lock_fd)
    procs.lead_group()  # what a stage forks is in this group; the daemon kills it whole
    procs.become_subreaper()  # and what it orphans is re-parented here, to be reaped
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    store = HomeStore(artifacts, db)
    programs = ProgramCache(store, Path(scratch))
    limits = Resources(local_memory_mb=local_memory_mb)
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        message = json.loads(raw)
        try:
            reply = _handle(message, store, programs, limits)
        except Exception as exc:  # a bug in qlayer itself: report, stay alive
            reply = {
                "ok": False,
                "error_type": type(exc).__name__,
                "message": str(exc) or f"{type(exc).__name__} with no message",
                "traceback": traceback.format_exc(),
                "storage": storage_fault(exc),  # a full disk, a read-only folder: not the job's
            }
        finally:
            procs.end_descendants()  # a step's processes end with the step
        reply["id"] = message["id"]
        conn.send_bytes(json.dumps(reply).encode())


def _handle(
    message: dict[str, Any], store: HomeStore, programs: ProgramCache, limits: Resources
) -> dict[str, Any]:
    if message["op"] == "stage":
        site = message.get("env_path")
        job = JobInfo(**message["job"], env_paths=(site,) if site else ())
        envs.activate(message.get("env"), site)
        try:
            workflow = programs.workflow(message["program_id"])
        except Exception as exc:
            store.append_text(
                keys.log_key(job.job_id, message["seq"], message["stage"]),
                f"cannot load the program: {type(exc).__name__}: {exc}\n",
            )
            return {
                "ok": True,
                "decision": {
                    "kind": "error",
                    "seq": message["seq"],
                    "stage": message["stage"],
                    "error_type": "ProgramError",
                    "message": str(exc),
                },
            }
        with store.hold() as records, MemoryLimit(message.get("memory_mb")):
            decision = run_stage(
                store,
                workflow,
                job,
                message["seq"],
                message["stage"],
                limits,
                given_input=message.get("input"),
            )
        return {"ok": True, "decision": decision.to_json(), "records": encode_records(records)}
    if message["op"] == "device":
        # Idempotent like every step: a device job whose outcome was recorded (the
        # daemon died before it heard of it) is not run again — nor are its riders'.
        recorded = _recorded(store, message)
        if recorded is not None:
            reply: dict[str, Any] = {"ok": True, "decision": recorded}
            if message.get("riders"):
                reply["riders"] = {
                    r["device_job_id"]: (
                        {"ok": True, "decision": done}
                        if (done := _recorded(store, r)) is not None
                        else _run_alone(
                            store, message["backend"], r, store.get_json(r["request_key"]), None
                        )
                    )
                    for r in message["riders"]
                }
            return reply
        request_raw = store.get_json(message["request_key"])
        request = decode_request(request_raw)
        backend = message["backend"]
        riders = message.get("riders") or []
        if riders:
            merged = _run_coalesced(store, backend, message, request_raw, request, riders)
            if merged is not None:
                return merged
            # the merged run failed: each request runs on its own, so one bad request
            # cannot fail the others
            return {
                **_run_alone(store, backend, message, request_raw, request),
                "riders": {
                    r["device_job_id"]: _run_alone(
                        store, backend, r, store.get_json(r["request_key"]), None
                    )
                    for r in riders
                },
            }
        return _run_alone(store, backend, message, request_raw, request)
    if message["op"] == "validate":  # a submission's checks (qlayer.local.admission)
        from qlayer.local.admission import check

        return check(message, store, programs)
    if message["op"] == "ping":
        return {"ok": True, "pid": os.getpid()}
    raise ValueError(f"unknown op {message['op']!r}")


def _recorded(store: HomeStore, member: dict[str, Any]) -> dict[str, Any] | None:
    """The decision a device job's execute step already recorded, or None (torn: run it)."""
    from qlayer.interpreter import Decision

    key = keys.step_dir(member["job_id"], member["seq"], "execute") + "output.json"
    if not store.exists(key):
        return None
    try:
        return Decision.from_json(store.get_json(key)).to_json()
    except (ArtifactError, ValueError, TypeError):
        return None


def _run_alone(
    store: HomeStore, backend: str, member: dict[str, Any], raw: dict[str, Any], request: Any
) -> dict[str, Any]:
    from qlayer.providers.registry import sync_provider

    try:
        result = sync_provider(backend).run(backend, request or decode_request(raw))
    except Exception as exc:
        return {"ok": False, "error_type": type(exc).__name__, "message": str(exc) or repr(exc)}
    decision = complete_execute(store, member["job_id"], member["seq"], raw, result)
    return {"ok": True, "decision": decision.to_json()}


def _run_coalesced(
    store: HomeStore,
    backend: str,
    lead: dict[str, Any],
    lead_raw: dict[str, Any],
    lead_request: Any,
    riders: list[dict[str, Any]],
) -> dict[str, Any] | None:
    """One device run for the leader and its riders; None if the merged run failed."""
    from qlayer.dispatch.coalesce import merge, split
    from qlayer.providers.registry import sync_provider

    raws = [lead_raw] + [store.get_json(r["request_key"]) for r in riders]
    requests = [lead_request] + [decode_request(raw) for raw in raws[1:]]
    merged = merge(requests)
    try:
        result = sync_provider(backend).run(backend, merged)
        parts = split(result, [len(request.pubs) for request in requests])
    except Exception:
        return None
    members = [lead, *riders]
    decisions = [
        complete_execute(store, m["job_id"], m["seq"], raw, part).to_json()
        for m, raw, part in zip(members, raws, parts, strict=True)
    ]
    return {
        "ok": True,
        "decision": decisions[0],
        "riders": {
            m["device_job_id"]: {"ok": True, "decision": d}
            for m, d in zip(riders, decisions[1:], strict=True)
        },
        "coalesced": len(members),
    }
