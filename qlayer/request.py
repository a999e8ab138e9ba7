"""Execute requests as stored artifacts: what a stage asked to run, and where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlayer import codec
from qlayer.outcomes import Execute


@dataclass
class ExecuteRequest:
    """A decoded execute request (PUBs are Qiskit objects again)."""

    primitive: str
    pubs: list[Any]
    backend: str
    then: str
    shots: int | None = None
    precision: float | None = None
    seed: int | None = None
    options: dict[str, Any] | None = None
    #: The provider's client-side preparation of the PUBs, done on stage compute (JSON;
    #: IBM: the executor's ``QuantumProgram``), or None.
    prepared: dict[str, Any] | None = None

    @classmethod
    def from_execute(cls, execute: Execute, backend: str) -> ExecuteRequest:
        return cls(
            execute.primitive,
            execute.pubs,
            backend,
            execute.then,
            execute.shots,
            execute.precision,
            execute.seed,
            dict(execute.options),
        )


def encode_request(
    request: ExecuteRequest, state: Any, *, where: str, sidecars: codec.Sidecars | None = None
) -> dict[str, Any]:
    """The request artifact: encoded PUBs plus the state handed to ``then``.

    Args:
        sidecars: Where the state's large arrays and circuits go (the PUBs stay inline:
            every provider path reads them without a store).
    """
    return {
        "primitive": request.primitive,
        "backend": request.backend,
        "then": request.then,
        "shots": request.shots,
        "precision": request.precision,
        "seed": request.seed,
        "options": request.options or {},
        "pubs": codec.encode(request.pubs, where=f"PUBs of {where}"),
        "state": codec.encode(state, where=f"state of {where}", sidecars=sidecars),
        **({"prepared": request.prepared} if request.prepared is not None else {}),
    }


def decode_request(raw: dict[str, Any]) -> ExecuteRequest:
    return ExecuteRequest(
        primitive=raw["primitive"],
        pubs=codec.decode(raw["pubs"], where="execute request PUBs"),
        backend=raw["backend"],
        then=raw["then"],
        shots=raw.get("shots"),
        precision=raw.get("precision"),
        seed=raw.get("seed"),
        options=raw.get("options") or {},
        prepared=raw.get("prepared"),
    )


def pub_circuits(pubs: list[Any]) -> list[Any]:
    """The circuit of each PUB (a bare circuit, or the first item of a tuple)."""
    circuits = []
    for pub in pubs:
        circuit = pub[0] if isinstance(pub, (tuple, list)) else pub
        circuits.append(circuit)
    return circuits
