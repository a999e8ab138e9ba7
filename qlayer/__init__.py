"""qlayer: write a quantum program once as stages, submit it, come back to the result.

The public names are imported lazily so that ``import qlayer`` stays cheap (Lambda
cold starts, CLI start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Workflow": "qlayer.workflow",
    "Param": "qlayer.workflow",
    "Execute": "qlayer.outcomes",
    "Done": "qlayer.outcomes",
    "Next": "qlayer.outcomes",
    "FanOut": "qlayer.outcomes",
    "StageContext": "qlayer.context",
    "Client": "qlayer.client",
    "Job": "qlayer.client",
    "JobStatus": "qlayer.status",
}

__all__ = [
    "Client",
    "Done",
    "Execute",
    "FanOut",
    "Job",
    "JobStatus",
    "Next",
    "Param",
    "StageContext",
    "Workflow",
    "__version__",
]

if TYPE_CHECKING:
    from qlayer.client import Client, Job
    from qlayer.context import StageContext
    from qlayer.outcomes import Done, Execute, FanOut, Next
    from qlayer.status import JobStatus
    from qlayer.workflow import Param, Workflow


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qlayer' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
