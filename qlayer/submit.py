"""Preparing a job: what every substrate does before it starts one.

Check the program (it exists, parses, defines one Workflow), bind the arguments, check
the backend name, upload the bundle, and write the job's input and its first stage's
input. The substrate then records the job and starts it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlayer import codec, keys
from qlayer.core.ports import NewJob
from qlayer.envs import Base, env_id, lock_for, program_requirements
from qlayer.errors import ArgumentError, CodecError, ProgramError
from qlayer.interpreter import Decision
from qlayer.keys import check_new_job_id, new_job_id
from qlayer.program import bundle, load_path, upload
from qlayer.steps import first_input
from qlayer.store.base import ArtifactStore
from qlayer.workflow import Workflow, check_budget


@dataclass(frozen=True)
class PreparedJob:
    """A job whose artifacts are written, ready to be recorded and started."""

    job_id: str
    program_id: str
    workflow: Workflow
    arguments: dict[str, Any]  # encoded (plain JSON; arrays and circuits as sidecar refs)
    backend: str
    first: Decision  # the decision that runs the first stage
    warnings: tuple[str, ...] = ()  # the substrate's, for the job's timeline
    env: str | None = None  # the job's environment (qlayer.envs), None: the base

    @property
    def first_stage(self) -> str:
        assert self.first.stage is not None
        return self.first.stage

    def record(self, notify: Sequence[str] = ()) -> NewJob:
        """The job as a substrate's job store records it.

        Args:
            notify: Targets to announce its end to, besides the workflow's own.
        """
        return NewJob(
            self.job_id,
            program_id=self.program_id,
            workflow=self.workflow.name,
            arguments=self.arguments,
            backend=self.backend,
            first=self.first,
            notify=tuple(dict.fromkeys([*self.workflow.notify, *notify])),
            env=self.env,
        )


def prepare_job(
    store: ArtifactStore,
    program: str | os.PathLike[str] | Workflow,
    arguments: Mapping[str, Any] | None = None,
    *,
    backend: str | None = None,
    credentials_elsewhere: bool = False,
    check: Callable[[Workflow], Sequence[str]] | None = None,
    max_cost_usd: float | None = None,
    base: Base | Callable[[], Base] | None = None,
    job_id: str | None = None,
) -> PreparedJob:
    """Check and upload a program and write a new job's inputs.

    Args:
        job_id: The new job's id, made in advance by :func:`new_job_id` (default: a new
            one); checked by :func:`check_new_job_id`.
        base: What the substrate's stages run on, for resolving the program's
            requirements (default: this interpreter, :meth:`qlayer.envs.Base.current`).
        credentials_elsewhere: The substrate holds the providers' credentials (an AWS
            stack's secret), not this machine (see :func:`qlayer.providers.registry.resolve`).
        check: The substrate's own check of the workflow, run before anything is
            written; it raises to refuse the job, or returns warnings, which the
            prepared job carries.

    Raises:
        ProgramError: The program is missing, does not parse, or defines no Workflow.
        ArgumentError: The arguments do not match the declared parameters.
        BackendError: The backend name is unknown.
        RequirementError: The program's requirements are malformed, cannot be resolved,
            or cannot coexist with the base.
    """
    if isinstance(program, Workflow):
        if not program.source_path:
            raise ProgramError("this Workflow was not defined in a file; pass the program's path")
        path = Path(program.source_path)
    else:
        path = Path(program)
    program_bundle = bundle(path)  # missing files and syntax errors surface here, before import
    workflow = program if isinstance(program, Workflow) else load_path(path)
    bound = workflow.bind_arguments(dict(arguments or {}))  # before anything is written
    warnings = tuple(check(workflow)) if check is not None else ()
    lock = lock_for(store, program_requirements(workflow, program_bundle.files), base)
    program_id = upload(store, program_bundle)
    job = write_inputs(
        store,
        check_new_job_id(job_id) if job_id is not None else new_job_id(),
        program_id,
        workflow,
        bound,
        backend=backend,
        credentials_elsewhere=credentials_elsewhere,
        max_cost_usd=max_cost_usd,
        env=env_id(lock),
    )
    return dataclasses.replace(job, warnings=warnings)


def write_inputs(
    store: ArtifactStore,
    job_id: str,
    program_id: str,
    workflow: Workflow,
    arguments: Mapping[str, Any],
    *,
    backend: str | None = None,
    extra: Mapping[str, Any] | None = None,
    credentials_elsewhere: bool = False,
    max_cost_usd: float | None = None,
    env: str | None = None,
) -> PreparedJob:
    """Bind the arguments, check the backend, and write ``input.json`` and the first input.

    Args:
        arguments: The job's arguments as Python values (decoded).
        extra: More fields for ``input.json`` (a substrate's own bookkeeping).
        max_cost_usd: The run's budget; the job's is the smaller of it and the workflow's.
        env: The job's environment id (its lock stored already, see
            :func:`qlayer.envs.lock_for`); recorded as ``input.json``'s ``env``.

    Raises:
        ArgumentError: The arguments do not match the declared parameters.
        BackendError: The backend name is unknown.
    """
    from qlayer.providers.registry import resolve

    bound = workflow.bind_arguments(dict(arguments))
    budgets = [b for b in (workflow.max_cost_usd, check_budget(max_cost_usd)) if b is not None]
    chosen = backend or workflow.backend
    resolve(chosen, credentials_elsewhere=credentials_elsewhere)
    stage = workflow.first_stage
    encoded = encode_arguments(store, job_id, bound)
    first = Decision(
        "next",
        seq=0,
        stage=stage,
        input_key=first_input(store, job_id, stage, encoded),
        compute=workflow.stages[stage].compute.to_json(),
    )
    store.put_json(
        keys.job_input(job_id),
        {
            **(extra or {}),
            "program_id": program_id,
            "workflow": workflow.name,
            "arguments": encoded,
            "backend": chosen,
            "first": first.to_json(),
            "prepared": True,
            **({"max_cost_usd": min(budgets)} if budgets else {}),
            **({"env": env} if env else {}),
        },
    )
    return PreparedJob(job_id, program_id, workflow, encoded, chosen, first, env=env)


def encode_arguments(
    store: ArtifactStore, job_id: str, arguments: Mapping[str, Any]
) -> dict[str, Any]:
    """Encode a job's arguments by their values alone (no program needed): JSON values
    stay as they are; circuits, operators and arrays take the codec's typed encodings,
    and large arrays and circuits are written once, as sidecars of ``input.json``
    (``jobs/<id>/input-<n>.npy``, ``.qpy``). The result is what the job records hold.

    Raises:
        ArgumentError: An argument cannot be serialised; the message names it.
    """
    sidecars = codec.Sidecars(store, keys.job_input(job_id))
    encoded: dict[str, Any] = {}
    for name, value in arguments.items():
        try:
            encoded[name] = codec.encode(value, where=f"argument {name!r}", sidecars=sidecars)
        except CodecError as exc:
            raise ArgumentError(str(exc)) from exc
    return encoded
