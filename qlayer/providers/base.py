"""The provider port: what every quantum backend offers qlayer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from qiskit.primitives import PrimitiveResult
    from qiskit.transpiler import Target

    from qlayer.request import ExecuteRequest

BackendKind = Literal["simulator", "qpu"]


@dataclass(frozen=True)
class BackendInfo:
    """What qlayer knows of a backend before touching it.

    Attributes:
        name: The name programs use (``backend=`` on Execute).
        provider: ``aer``, ``ibm`` or ``braket``.
        kind: ``simulator`` (runs on our compute) or ``qpu`` (a device with a queue,
            real or simulated with a real device's noise).
        num_qubits: Qubits available (None: limited by memory only).
        method: Simulation method for simulators (``automatic`` lets the planner pick).
        noisy: Whether results carry a device's noise.
        max_concurrency: Provider jobs allowed at once on this backend.
        description: One line for ``qlayer backends``.
    """

    name: str
    provider: str
    kind: BackendKind
    num_qubits: int | None
    method: str = "automatic"
    noisy: bool = False
    max_concurrency: int = 1
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SyncProvider(ABC):
    """A provider that computes results on our own compute (simulators).

    The local dispatcher wraps it with a queue, a ledger and concurrency limits so
    that it behaves like a device: submit once, wait, collect.
    """

    name: str

    @abstractmethod
    def backends(self) -> list[BackendInfo]:
        """Every backend this provider offers."""

    @abstractmethod
    def target(self, backend: str) -> Target:
        """The backend's ``Target`` (for transpiling)."""

    @abstractmethod
    def run(self, backend: str, request: ExecuteRequest) -> PrimitiveResult:
        """Run all PUBs of ``request`` as one batched primitive call."""


ProviderJobState = Literal["QUEUED", "RUNNING", "DONE", "ERROR", "CANCELLED"]


@dataclass(frozen=True)
class ProviderJobStatus:
    """A provider job's state as qlayer sees it.

    Attributes:
        state: One of QUEUED, RUNNING, DONE, ERROR, CANCELLED.
        queue_position: Position in the device queue, when the provider reports it.
        message: The provider's own words for an error, or None.
        usage_seconds: QPU (or simulator) seconds the provider reports, when known.
    """

    state: ProviderJobState
    queue_position: int | None = None
    message: str | None = None
    usage_seconds: float | None = None


class ProviderError(Exception):
    """A provider call failed.

    Attributes:
        retryable: True for throttling and transient network faults (retry with
            backoff); False for errors that will not go away (bad request, auth).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class AsyncProvider(ABC):
    """A provider with its own queue (a QPU service): submit, poll, collect, cancel.

    Submission must be idempotent for a given ``idempotency_key`` (job id and
    request sequence): a second call with the same key returns the first
    provider job's id instead of creating another job. Providers without a
    native client token do this by tagging jobs with the key and looking for the
    tag before submitting.
    """

    name: str

    @abstractmethod
    def backends(self) -> list[BackendInfo]:
        """Every backend this provider offers (no network call for configured ones)."""

    @abstractmethod
    def target(self, backend: str) -> Target:
        """The device's ``Target``."""

    @abstractmethod
    def submit(self, backend: str, request: ExecuteRequest, *, idempotency_key: str) -> str:
        """Submit all PUBs of ``request`` as one provider job; returns its id."""

    @abstractmethod
    def status(self, provider_job_id: str) -> ProviderJobStatus:
        """The job's state and queue position."""

    @abstractmethod
    def result(self, provider_job_id: str) -> PrimitiveResult:
        """The finished job's results as a Qiskit ``PrimitiveResult``."""

    @abstractmethod
    def cancel(self, provider_job_id: str) -> None:
        """Cancel a queued or running job (no error if it already ended)."""

    def take_notes(self, idempotency_key: str) -> list[str]:
        """What the submission under ``idempotency_key`` made the provider decide that the
        job should hear (an execution mode the service refused and what ran instead), once:
        the notes are gone after this call. Default: none."""
        del idempotency_key
        return []

    def close_group(self, group: str) -> dict[str, float | None]:
        """Close what ``group`` (a qlayer job) holds open on the service: sessions and
        batches (IBM). Called when the job ends; queued jobs still run. Providers with no
        such thing close nothing.

        Returns:
            Each closed session's id and the QPU seconds the service bills for it (a
            session's usage counts the time the device was held, not only its jobs'), or
            None where the service does not say.
        """
        del group
        return {}
