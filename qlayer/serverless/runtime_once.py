"""Exactly one IBM Runtime job per call of a function, however often the function reruns.

A function is opaque to qlayer: after a crash (a killed daemon, a dead worker) its stage
runs again from the top, and so does every ``sampler.run(...)`` in it. Loaded into the
function's process by :mod:`qlayer.serverless.launch`, this wraps
``QiskitRuntimeService._run`` — the one call every primitive, session and batch of
qiskit-ibm-runtime submits through, the one ``get_runtime_service()``'s service
overrides too — so that the job's *n*-th submission carries the tag
``qlayer-<job id>-<n>`` and, before it is sent, the service is asked for a job with that
tag: if the first run got that far (even if it died before hearing the answer), that job
is returned and nothing is submitted. It is the rule qlayer's dispatcher recovers by
(find the provider job by its idempotency tag), applied at the function's boundary.

The *n*-th call of a rerun is taken to be the same call as the *n*-th of the first run:
true of functions whose submissions do not depend on timing or randomness.

Like :mod:`qlayer.serverless.launch`, this imports nothing of qlayer.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from typing import Any

TAG_PREFIX = "qlayer-"


def install(job_id: str) -> bool:
    """Wrap the service's ``_run`` for job ``job_id``; False if qiskit-ibm-runtime is absent."""
    try:
        from qiskit_ibm_runtime import QiskitRuntimeService
    except ImportError:
        return False
    original = QiskitRuntimeService._run
    if getattr(original, "_qlayer_once", False):
        return True
    calls = itertools.count()

    def _run(
        self: Any, program_id: str, inputs: Any, options: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        tag = f"{TAG_PREFIX}{job_id}-{next(calls)}"
        earlier = self.jobs(job_tags=[tag], limit=1)
        if earlier:
            print(
                f"qlayer: {tag} was submitted before as {earlier[0].job_id()}; "
                "not submitting it again",
                file=sys.stderr,
                flush=True,
            )
            return earlier[0]
        return original(self, program_id, inputs, _tagged(options, tag), *args, **kwargs)

    _run._qlayer_once = True  # type: ignore[attr-defined]
    QiskitRuntimeService._run = _run  # type: ignore[method-assign]
    return True


def _tagged(options: Any, tag: str) -> Any:
    if options is None:
        return None
    if isinstance(options, dict):
        return {**options, "job_tags": [*(options.get("job_tags") or []), tag]}
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        tags = list(getattr(options, "job_tags", None) or [])
        return dataclasses.replace(options, job_tags=[*tags, tag])
    return options


def install_from_environment() -> bool:
    job_id = os.environ.get("ENV_JOB_ID_GATEWAY")
    return bool(job_id) and install(str(job_id))
