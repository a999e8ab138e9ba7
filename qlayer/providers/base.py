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
