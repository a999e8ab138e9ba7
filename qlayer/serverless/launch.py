"""Start a Qiskit Serverless function's entrypoint in its own process (run as a script).

``python launch.py ENTRYPOINT`` runs the entrypoint as ``__main__`` from the function's
folder, as ``python ENTRYPOINT`` would. If the entrypoint only defines a ``Runner`` class
(the form their custom images use) and saved no result, it is called the way their
gateway's template calls it: ``Runner().run(get_arguments())``, the return value saved,
an exception sent as an error event and raised again.

Before the entrypoint runs, :mod:`qlayer.serverless.runtime_once` makes its IBM Runtime
submissions exactly-once across reruns (when the job's id is in the environment).

This file imports nothing of qlayer: the function's process holds only its own modules,
``qiskit_serverless`` and what the environment provides.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import site
import sys
import traceback
from typing import Any


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: launch.py ENTRYPOINT", file=sys.stderr)
        return 2
    entry = os.path.abspath(sys.argv[1])
    sys.argv = [entry]
    sys.path[0] = os.path.dirname(entry)  # as `python ENTRYPOINT` sets it, not this folder
    for folder in filter(None, os.environ.get("QLAYER_ENV_PATHS", "").split(os.pathsep)):
        site.addsitedir(folder)  # the job's environment: on PYTHONPATH, and its .pth files
    _load_sibling("runtime_once").install_from_environment()
    namespace = runpy.run_path(entry, run_name="__main__")
    runner = namespace.get("Runner")
    results = os.environ.get("RESULTS_PATH", "")
    if not isinstance(runner, type) or not callable(getattr(runner, "run", None)):
        return 0
    if not (results and os.path.exists(results)):
        return _run_runner(runner)
    return 0


def _load_sibling(name: str) -> Any:
    """A module of this folder, loaded by path (the folder itself stays off sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_qlayer_serverless_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_runner(runner: type) -> int:
    from qiskit_serverless import get_arguments, save_result, send_error

    arguments = get_arguments()
    try:
        result = runner().run(arguments)
        if result is not None:
            save_result(result)
    except Exception as exc:
        code = getattr(exc, "code", 1)
        message = getattr(exc, "message", "".join(traceback.format_exception_only(exc)).strip())
        send_error(code, str(message), type(exc).__name__, getattr(exc, "details", None))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
