"""The program side: a Qiskit Serverless function as a one-stage qlayer workflow.

The stage ``run`` starts the function's entrypoint in a process of its own (through
:mod:`qlayer.serverless.launch`), in a scratch copy of the function's folder, with the
environment the ``qiskit_serverless`` library reads inside a job:

==============================  ===========================================================
``ARGUMENTS_PATH``              a file holding the client's arguments (``get_arguments``)
``RESULTS_PATH``                where ``save_result`` writes; it becomes the job's result
``DATA_PATH``                   a folder with the function's user files; files the
                                function leaves there are kept (``client.files``)
``ENV_JOB_GATEWAY_HOST``        the gateway, for ``update_status``, ``send_error`` and the
``ENV_JOB_GATEWAY_TOKEN``       runtime-job registration of ``get_runtime_service``; the
``ENV_JOB_ID_GATEWAY``          token (derived here from the gateway's secret and the job
                                id, :mod:`qlayer.serverless.tokens`; stored nowhere)
                                reaches only this job's in-job routes
==============================  ===========================================================

plus the function's own ``env_vars``. A Ray the function starts (``@ray.remote``, with
Ray installed: the ``ray`` extra) is a local one inside the job's process tree, bound to
127.0.0.1, its files in the job's scratch, with usage reporting off.

Everything the process prints reaches ``qlayer logs`` as it is printed. A process that
exits non-zero fails the job with a structured error: the error events it sent (code,
message, exception type) or else the last line of its traceback.

The process ends with the stage: a timeout kills it; when the stage's worker dies (a
cancel, a crash) it is told and winds down (:mod:`qlayer.serverless.runtime_once`: the
runtime jobs of a cancelled job are cancelled, those of a crashed one are left for the
rerun). It runs without the stage's address-space cap (``memory_mb``), which a function's
own processes, a local Ray above all, cannot live under.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from qlayer import keys
from qlayer.context import StageContext
from qlayer.errors import QlayerError
from qlayer.outcomes import Done
from qlayer.workflow import Workflow

LAUNCHER = Path(__file__).with_name("launch.py")
#: The longest a function may run (a batch stage's limit), unless the function's
#: ``env_vars`` set ``QLAYER_TIMEOUT_S``.
DEFAULT_TIMEOUT_S = 6 * 3600
#: The largest result a function may save.
MAX_RESULT_BYTES = 256 * 1024 * 1024
_PR_SET_PDEATHSIG = 1

try:  # loaded before any fork: the child only calls it
    _LIBC: Any = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


class FunctionError(QlayerError):
    """The function's process failed; the message says how (its error events first)."""


def function_workflow(main_file: str) -> Workflow:
    """The workflow of the function whose program folder holds ``main_file``."""
    folder = Path(main_file).resolve().parent
    meta = json.loads((folder / "serverless.json").read_text())
    name = meta["title"] if not meta.get("provider") else f"{meta['provider']}.{meta['title']}"
    timeout = int(meta.get("env_vars", {}).get("QLAYER_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
    wf = Workflow(name[:128])

    @wf.stage(compute="batch", timeout_s=timeout)
    def run(arguments: dict[str, Any], ctx: StageContext) -> Done:
        return Done(run_function(folder, meta, arguments, ctx))

    return wf


def _prepare_child() -> None:  # pragma: no cover - runs in the child
    """Be told when the stage's process dies; and no address-space cap (see below)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # A stage's memory_mb is enforced as an address-space limit, which a function's own
    # processes cannot live under (a local Ray reserves far more than it uses, and fails
    # to start): a function is a program of its own, and runs without it.
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def function_env(
    meta: dict[str, Any],
    arguments: dict[str, Any],
    job_id: str,
    work: Path,
    ray_tmp: Path,
    env_paths: tuple[str, ...] = (),
) -> dict[str, str]:
    """The environment of the function's process.

    Its ``PYTHONPATH``: the overlay (``qiskit_serverless``), the function's folder, what
    was there already, then the job's environment (``env_paths``: the packages of the
    function's ``dependencies``, last, as in the stage's own process; processes the
    function starts, a Ray's workers, inherit them).
    """
    env = dict(os.environ)
    env.update(meta.get("env_vars") or {})
    paths = [str(work / "function")]
    # The gateway names the overlay it built (qlayer serve); where it names none, the
    # compute holds one (the AWS runner image sets QLAYER_SERVERLESS_OVERLAY).
    overlay = arguments.get("overlay") or os.environ.get("QLAYER_SERVERLESS_OVERLAY")
    if overlay:
        paths.insert(0, str(overlay))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    paths.extend(env_paths)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(paths),
            # launch.py processes their .pth files, as the worker's site.addsitedir does
            "QLAYER_ENV_PATHS": os.pathsep.join(env_paths),
            "PYTHONUNBUFFERED": "1",
            "ARGUMENTS_PATH": str(work / "io" / "arguments.json"),
            "RESULTS_PATH": str(work / "io" / "results.json"),
            "DATA_PATH": str(work / "data"),
            "ENV_JOB_GATEWAY_HOST": str(arguments.get("gateway") or ""),
            "ENV_JOB_GATEWAY_TOKEN": gateway_token(arguments, job_id),
            "ENV_JOB_ID_GATEWAY": job_id,
            "ENV_GATEWAY_PROVIDER_VERSION": "v1",
            "OTEL_ENABLED": "false",
            # A Ray the function starts (ray.init(), or its first @ray.remote call) is a
            # local one: bound to 127.0.0.1, its files in the job's scratch, no usage report.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TMPDIR": str(ray_tmp),
            # removed by the process itself if it outlives its stage (runtime_once)
            "QLAYER_FUNCTION_SCRATCH": os.pathsep.join([str(work), str(ray_tmp)]),
        }
    )
    return env


def gateway_token(arguments: dict[str, Any], job_id: str) -> str:
    """The job's gateway token, derived from the secret its ``token_source`` names ("" when
    the gateway gave none: the function's in-job calls are then refused).

    Raises:
        FunctionError: The secret cannot be read.
    """
    from qlayer.serverless import tokens

    source = arguments.get("token_source")
    if not source:
        return ""
    try:
        return tokens.job_token(tokens.read_secret(source), job_id)
    except QlayerError as exc:
        raise FunctionError(f"the function cannot be given its gateway token: {exc}") from exc


def run_function(
    folder: Path, meta: dict[str, Any], arguments: dict[str, Any], ctx: StageContext
) -> str | None:
    """Run the function once; its saved result (JSON text), or None if it saved none.

    Raises:
        FunctionError: The process exited non-zero (or saved an oversized result).
    """
    from qlayer.serverless.functions import check_file_name, files_prefix
    from qlayer.serverless.gateway import events_key

    work = Path(tempfile.mkdtemp(prefix=f"qlayer-qs-{ctx.job_id}-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="qsray-", dir="/tmp"))  # short: Ray's socket paths
    try:
        shutil.copytree(folder / "function", work / "function")
        (work / "io").mkdir()
        (work / "data").mkdir()
        (work / "io" / "arguments.json").write_text(str(arguments.get("arguments") or "{}"))
        prefix = files_prefix(meta["title"], meta.get("provider"))
        before: dict[str, str] = {}
        for key in ctx.store.list(prefix):
            name = key[len(prefix) :]
            target = work / "data" / name
            target.write_bytes(ctx.store.get_bytes(key))
            before[name] = _digest(target)
        env = function_env(meta, arguments, ctx.job_id, work, ray_tmp, ctx.env_paths)
        tail: collections.deque[str] = collections.deque(maxlen=40)
        process = subprocess.Popen(
            [sys.executable, "-u", str(LAUNCHER), meta["entrypoint"]],
            cwd=work / "function",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # a killed worker's group is SIGKILLed; this winds down
            preexec_fn=_prepare_child,  # two system calls: no lock is taken in the child
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                tail.append(line.rstrip("\n"))
            code = process.wait()
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # it, and whatever it left running
            process.wait()
        _keep_data_files(ctx, work / "data", prefix, before, check_file_name)
        if code != 0:
            raise _failure(ctx, events_key(ctx.job_id), code, list(tail))
        results = work / "io" / "results.json"
        if not results.exists():
            return None
        if results.stat().st_size > MAX_RESULT_BYTES:
            raise FunctionError(
                f"the function saved a result of {results.stat().st_size} bytes; "
                f"at most {MAX_RESULT_BYTES} are kept"
            )
        return results.read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _keep_data_files(
    ctx: StageContext, data: Path, prefix: str, before: dict[str, str], check: Any
) -> None:
    """Keep what the function wrote to ``DATA_PATH`` (new or changed top-level files)."""
    for path in sorted(data.iterdir()):
        if not path.is_file() or path.is_symlink():
            ctx.log.warning("DATA_PATH: %s is not a plain file; not kept", path.name)
            continue
        try:
            name = check(path.name)
        except Exception:
            ctx.log.warning("DATA_PATH: %r is not a name files can have; not kept", path.name)
            continue
        if before.get(name) != _digest(path):
            ctx.store.put_bytes(prefix + name, path.read_bytes())
            ctx.log.info("kept %s from DATA_PATH (%d bytes)", name, path.stat().st_size)


def _failure(ctx: StageContext, key: str, code: int, tail: list[str]) -> FunctionError:
    events = []
    try:
        for line in ctx.store.get_text(key).splitlines():
            if line.strip():
                events.append(json.loads(line).get("data", {}))
    except Exception:
        events = []
    if events:
        last = events[-1]
        parts = [
            f"{e.get('exception', 'Error')}: {e.get('message', '')} (code {e.get('code')})"
            for e in events
        ]
        kind = str(last.get("exception") or "FunctionError")
        error: type[FunctionError] = FunctionError
        if kind.isidentifier():
            error = type(kind, (FunctionError,), {})
        return error("; ".join(parts))
    reason = next((line for line in reversed(tail) if line.strip()), "")
    where = keys.job_prefix(ctx.job_id)
    return FunctionError(
        f"the function exited with status {code}: {reason or 'no output'} "
        f"(its output is in the job's logs, {where})"
    )
