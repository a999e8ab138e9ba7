"""Turn results into plain JSON for people and scripts (``--json`` output).

Unlike :mod:`qlayer.codec` this is one-way and lossy on purpose: arrays become
lists, sampler results become counts, circuits become a short description.
"""

from __future__ import annotations

import math
from typing import Any


def plain(value: Any) -> Any:
    """A JSON-ready view of ``value``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, complex):
        return {"re": value.real, "im": value.imag}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    module = type(value).__module__ or ""
    if module.startswith("numpy"):
        return plain(value.tolist())
    if module.startswith("qiskit"):
        return _plain_qiskit(value)
    return str(value)


def _plain_qiskit(value: Any) -> Any:
    from qiskit import QuantumCircuit
    from qiskit.primitives import BitArray, DataBin, PrimitiveResult, PubResult
    from qiskit.quantum_info import SparsePauliOp

    if isinstance(value, QuantumCircuit):
        return {"circuit": value.name, "num_qubits": value.num_qubits, "depth": value.depth()}
    if isinstance(value, SparsePauliOp):
        return {label: plain(coeff) for label, coeff in value.to_list()}
    if isinstance(value, BitArray):
        return {"counts": value.get_counts(), "num_bits": value.num_bits, "shots": value.num_shots}
    if isinstance(value, DataBin):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, PubResult):
        return {"data": plain(value.data), "metadata": plain(value.metadata)}
    if isinstance(value, PrimitiveResult):
        return [plain(pub) for pub in value]
    return str(value)
