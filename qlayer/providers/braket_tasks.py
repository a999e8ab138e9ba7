"""Braket tasks from qlayer PUBs, and their measurements back into a ``PrimitiveResult``.

A sampler PUB with parameter values of shape S runs ``prod(S)`` bound circuits; an
estimator PUB runs, for each (parameter, observable) element, one circuit per group of
qubit-wise commuting Pauli terms (basis rotation + measurement), with
``ceil(1 / precision**2)`` shots. :func:`expand` says what to run and keeps a JSON recipe;
:func:`assemble` rebuilds the result from the measurements with that recipe: a ``BitArray``
per classical register for the sampler, ``evs``/``stds`` for the estimator.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qiskit.primitives import PrimitiveResult

    from qlayer.request import ExecuteRequest

DEFAULT_SHOTS = 1024
DEFAULT_PRECISION = 0.015625  # qiskit's estimator default -> 4096 shots


def expand(request: ExecuteRequest) -> tuple[list[Any], list[int], dict[str, Any]]:
    """The circuits to run (Qiskit, bound, measured), their shots, and the JSON recipe
    that turns their measurements back into a ``PrimitiveResult``."""
    import numpy as np

    circuits: list[Any] = []
    shots: list[int] = []
    pubs_recipe: list[dict[str, Any]] = []
    if request.primitive == "sampler":
        from qiskit.primitives.containers.sampler_pub import SamplerPub

        for pub in request.pubs:
            sp = SamplerPub.coerce(pub, request.shots or DEFAULT_SHOTS)
            bound = np.asarray(sp.parameter_values.bind_all(sp.circuit), dtype=object)
            start = len(circuits)
            for idx in np.ndindex(sp.shape):
                circuits.append(bound[idx])
                shots.append(int(sp.shots))
            pubs_recipe.append(
                {
                    "shape": list(sp.shape),
                    "start": start,
                    "shots": int(sp.shots),
                    "registers": _registers(sp.circuit),
                }
            )
        return circuits, shots, {"primitive": "sampler", "pubs": pubs_recipe}

    from qiskit.primitives.containers.estimator_pub import EstimatorPub
    from qiskit.quantum_info import SparsePauliOp

    for pub in request.pubs:
        ep = EstimatorPub.coerce(pub, request.precision or DEFAULT_PRECISION)
        n_shots = math.ceil(1.0 / float(ep.precision) ** 2)
        bound = np.asarray(ep.parameter_values.bind_all(ep.circuit), dtype=object).reshape(-1)
        param_index = np.broadcast_to(
            np.arange(max(1, bound.size)).reshape(ep.parameter_values.shape), ep.shape
        )
        obs_index = np.broadcast_to(
            np.arange(int(np.prod(ep.observables.shape))).reshape(ep.observables.shape), ep.shape
        )
        obs_flat = np.asarray(ep.observables.tolist(), dtype=object).reshape(-1)
        elements = []
        for idx in np.ndindex(ep.shape):
            circuit = bound[int(param_index[idx])]
            observable = SparsePauliOp.from_list(list(obs_flat[int(obs_index[idx])].items()))
            groups = []
            constant = 0.0
            for group in observable.group_commuting(qubit_wise=True):
                terms = [
                    (p.to_label(), float(np.real(c)))
                    for p, c in zip(group.paulis, group.coeffs, strict=True)
                ]
                support = sorted(
                    {q for label, _ in terms for q, ch in enumerate(reversed(label)) if ch != "I"}
                )
                if not support:
                    constant += sum(c for _, c in terms)
                    continue
                circuits.append(_measure_basis(circuit, terms, support))
                shots.append(n_shots)
                groups.append({"run": len(circuits) - 1, "qubits": support, "terms": terms})
            elements.append({"constant": constant, "groups": groups})
        pubs_recipe.append(
            {
                "shape": list(ep.shape),
                "shots": n_shots,
                "precision": float(ep.precision),
                "elements": elements,
            }
        )
    return circuits, shots, {"primitive": "estimator", "pubs": pubs_recipe}


def _registers(circuit: Any) -> list[dict[str, Any]]:
    """Each classical register and, per bit, the qubit measured into it (-1: none)."""
    registers = {creg.name: [-1] * creg.size for creg in circuit.cregs}
    for instruction in circuit.data:
        if instruction.operation.name != "measure":
            continue
        qubit = circuit.find_bit(instruction.qubits[0]).index
        for register, bit in circuit.find_bit(instruction.clbits[0]).registers:
            registers[register.name][bit] = qubit
    return [{"name": creg.name, "qubits": registers[creg.name]} for creg in circuit.cregs]


def _measure_basis(circuit: Any, terms: list[tuple[str, float]], support: list[int]) -> Any:
    from qiskit import ClassicalRegister

    measured = circuit.remove_final_measurements(inplace=False)
    basis: dict[int, str] = {}
    for label, _ in terms:
        for q, ch in enumerate(reversed(label)):
            if ch != "I":
                basis[q] = ch
    for q in support:
        if basis[q] == "X":
            measured.h(q)
        elif basis[q] == "Y":
            measured.sdg(q)
            measured.h(q)
    creg = ClassicalRegister(len(support), "basis")
    measured.add_register(creg)
    for i, q in enumerate(support):
        measured.measure(q, creg[i])
    return measured


def assemble(recipe: dict[str, Any], runs: list[tuple[list[int], Any]]) -> PrimitiveResult:
    """Rebuild the ``PrimitiveResult`` from each run's ``(measured_qubits, measurements)``."""
    import numpy as np
    from qiskit.primitives import DataBin, PrimitiveResult, PubResult, SamplerPubResult
    from qiskit.primitives.containers import BitArray

    pub_results: list[Any] = []
    if recipe["primitive"] == "sampler":
        for pub in recipe["pubs"]:
            shape = tuple(pub["shape"])
            count = int(np.prod(shape)) if shape else 1
            data = {}
            for register in pub["registers"]:
                arrays = []
                for k in range(count):
                    measured_qubits, measurements = runs[pub["start"] + k]
                    columns = list(measured_qubits)
                    m = np.asarray(measurements, dtype=bool).reshape(-1, len(columns))
                    bits = np.zeros((m.shape[0], len(register["qubits"])), dtype=bool)
                    for j, qubit in enumerate(register["qubits"]):
                        if qubit >= 0:
                            bits[:, j] = m[:, columns.index(qubit)]
                    arrays.append(bits)
                stacked = np.stack(arrays).reshape(shape + arrays[0].shape)
                data[register["name"]] = BitArray.from_bool_array(stacked, order="little")
            pub_results.append(
                SamplerPubResult(DataBin(**data, shape=shape), metadata={"shots": pub["shots"]})
            )
        return PrimitiveResult(pub_results, metadata={"version": 2, "provider": "braket"})

    for pub in recipe["pubs"]:
        shape = tuple(pub["shape"])
        evs = np.zeros(shape)
        stds = np.zeros(shape)
        for flat, element in enumerate(pub["elements"]):
            idx = np.unravel_index(flat, shape) if shape else ()
            value = element["constant"]
            variance = 0.0
            for group in element["groups"]:
                measured_qubits, measurements = runs[group["run"]]
                columns = list(measured_qubits)
                m = np.asarray(measurements, dtype=np.int8).reshape(-1, len(columns))
                per_shot = np.zeros(m.shape[0])
                for label, coeff in group["terms"]:
                    cols = [columns.index(q) for q, ch in enumerate(reversed(label)) if ch != "I"]
                    parity = m[:, cols].sum(axis=1) % 2 if cols else np.zeros(m.shape[0])
                    per_shot += coeff * (1 - 2 * parity)
                value += float(per_shot.mean())
                variance += float(per_shot.var()) / m.shape[0]
            evs[idx] = value
            stds[idx] = math.sqrt(variance)
        pub_results.append(
            PubResult(
                DataBin(evs=evs, stds=stds, shape=shape),
                metadata={"target_precision": pub["precision"], "shots": pub["shots"]},
            )
        )
    return PrimitiveResult(pub_results, metadata={"version": 2, "provider": "braket"})


#: The device action a Braket device lists when it runs program sets.
PROGRAM_SET_ACTION = "braket.ir.openqasm.program_set"


def as_program_set(programs: list[Any], shots: list[int], actions: Any) -> Any | None:
    """One Braket ``ProgramSet`` for several programs, where the device runs them.

    Args:
        programs: Braket circuits.
        shots: Their shots; a program set runs every executable with the same shots.
        actions: The device's ``properties.action`` (keys: action types or their names).

    Returns:
        The ``ProgramSet`` (``shots_per_executable`` set), or None: one program, unequal
        shots, or a device without the program-set action (or past its limits).
    """
    if len(programs) < 2 or len(set(shots)) != 1:
        return None
    found = None
    for name, action in dict(actions or {}).items():
        if str(getattr(name, "value", name)) == PROGRAM_SET_ACTION:
            found = action
    if found is None:
        return None
    limit = getattr(found, "maximumExecutables", None)
    total = getattr(found, "maximumTotalShots", None)
    if (limit is not None and len(programs) > limit) or (
        total is not None and len(programs) * shots[0] > total
    ):
        return None
    from braket.program_sets import ProgramSet

    return ProgramSet(list(programs), shots_per_executable=shots[0])


def program_set_runs(result: Any) -> list[tuple[list[int], Any]]:
    """(measured qubits, measurements) of each program of a program set's result, in order."""
    runs = []
    for entry in result:
        [executable] = list(entry)  # a circuit without inputs is one executable
        runs.append((list(executable.measured_qubits), executable.measurements))
    return runs
