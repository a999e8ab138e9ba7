"""``ctx``: what a stage gets besides its data."""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qlayer import keys
from qlayer.store.base import ArtifactStore

if TYPE_CHECKING:
    from qiskit.transpiler import PassManager, Target


@dataclass
class StageContext:
    """The stage's view of its job.

    Attributes:
        job_id: The job's id.
        stage: This stage's name.
        seq: This step's sequence number in the job.
        arguments: The job's arguments (after defaults).
        backend: The job's default backend name.
        state: The ``state`` handed on by the step that led here (Execute/FanOut).
        run: How many times this stage has run in this job, this run included.
        index: For a fan-out child, its item index; else None.
        log: A logger whose lines reach ``qlayer logs``.
        env_paths: The folders of the job's environment (:mod:`qlayer.envs`), on this
            process's import path already; a process the stage starts needs them on its
            own (``PYTHONPATH``) to import the environment's packages. () without one.
    """

    job_id: str
    stage: str
    seq: int
    arguments: dict[str, Any]
    backend: str
    store: ArtifactStore
    log: logging.Logger
    state: Any = None
    run: int = 1
    index: int | None = None
    env_paths: tuple[str, ...] = ()
    saved_files: list[str] = field(default_factory=list)

    @property
    def target(self) -> Target:
        """The ``Target`` of the job's backend (a fake device's, or Aer's)."""
        return backend_target(self.backend)

    def target_of(self, backend: str) -> Target:
        """The ``Target`` of another backend."""
        return backend_target(backend)

    def pass_manager(
        self, optimization_level: int = 2, *, backend: str | None = None, seed: int | None = 7
    ) -> PassManager:
        """A preset pass manager for the backend's target (built once per process)."""
        return preset_pass_manager(backend or self.backend, optimization_level, seed)

    def save_file(self, name: str, data: bytes | str) -> str:
        """Save a file with the job (``qlayer files`` lists it). Returns its key.

        ``name`` may be any Unicode name, with ``/`` between folders
        (``"plots/fig 1.png"``, ``"grüße ✓.txt"``); it may not be absolute, hold ``.``
        or ``..`` segments, empty segments, backslashes or control characters, and is
        at most 900 bytes of UTF-8 (255 a segment).

        Raises:
            FileNameError: (a ``ValueError``) the name breaks one of those rules.
        """
        key = keys.file_key(self.job_id, name)
        self.store.put_bytes(key, data.encode() if isinstance(data, str) else data)
        self.saved_files.append(name)
        self.log.info("saved file %s (%d bytes)", name, len(data))
        return key

    def save_figure(self, name: str, figure: Any, *, dpi: int = 120) -> str:
        """Save a matplotlib figure as PNG (``name`` should end in .png)."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        return self.save_file(name, buffer.getvalue())


@functools.lru_cache(maxsize=32)
def backend_target(backend: str) -> Target:
    from qlayer.providers.registry import provider

    return provider(backend).target(backend)


@functools.lru_cache(maxsize=32)
def preset_pass_manager(backend: str, optimization_level: int, seed: int | None) -> PassManager:
    from qiskit.transpiler import generate_preset_pass_manager

    return generate_preset_pass_manager(
        optimization_level=optimization_level,
        target=backend_target(backend),
        seed_transpiler=seed,
    )
