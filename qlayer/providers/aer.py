"""Aer: ideal simulators, and simulated QPUs with a real device's noise and target.

Fake devices come from ``qiskit_ibm_runtime.fake_provider`` (offline snapshots of
IBM devices' calibrations). Building a device's noise model costs seconds, so a
process builds each one once and keeps it.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlayer.errors import BackendError
from qlayer.providers.base import BackendInfo, SyncProvider

if TYPE_CHECKING:
    from qiskit.primitives import PrimitiveResult
    from qiskit.transpiler import Target

    from qlayer.request import ExecuteRequest

IDEAL_METHODS = {
    "aer": "automatic",
    "aer_statevector": "statevector",
    "aer_mps": "matrix_product_state",
    "aer_stabilizer": "stabilizer",
    "aer_density_matrix": "density_matrix",
}

#: Operations a device accepts besides its gates.
_DIRECTIVES = {
    "measure",
    "barrier",
    "delay",
    "reset",
    "store",
    "if_else",
    "for_loop",
    "switch_case",
    "while_loop",
    "box",
}


def fake_name(class_name: str) -> str:
    """``FakeBrisbane`` -> ``fake_brisbane``; ``FakeAlmadenV2`` -> ``fake_almaden_v2``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower().replace("_v_2", "_v2")


@functools.lru_cache(maxsize=1)
def _fake_classes() -> dict[str, Any]:
    from qiskit_ibm_runtime import fake_provider

    classes = {}
    for attr in dir(fake_provider):
        cls = getattr(fake_provider, attr)
        if attr.startswith("Fake") and isinstance(cls, type) and hasattr(cls, "backend_name"):
            if attr.startswith("FakeProvider"):
                continue
            classes[fake_name(attr)] = cls
    return classes


@functools.lru_cache(maxsize=16)
def fake_backend(name: str) -> Any:
    """The fake device ``name`` (cached per process)."""
    classes = _fake_classes()
    if name not in classes:
        raise BackendError(f"unknown fake device {name!r}; known: {', '.join(sorted(classes))}")
    return classes[name]()


@functools.lru_cache(maxsize=8)
def noisy_simulator(name: str) -> Any:
    """``AerSimulator.from_backend`` for a fake device, built once per process."""
    from qiskit_aer import AerSimulator

    return AerSimulator.from_backend(fake_backend(name))


@functools.lru_cache(maxsize=8)
def ideal_simulator(method: str) -> Any:
    from qiskit_aer import AerSimulator

    return AerSimulator(method=method)


class AerProvider(SyncProvider):
    """Ideal Aer simulators and noisy fake devices."""

    name = "aer"

    def __init__(self, *, simulator_concurrency: int = 2, device_concurrency: int = 1) -> None:
        self.simulator_concurrency = simulator_concurrency
        self.device_concurrency = device_concurrency

    def backends(self) -> list[BackendInfo]:
        infos = [
            BackendInfo(
                name,
                "aer",
                "simulator",
                None,
                method=method,
                max_concurrency=self.simulator_concurrency,
                description=f"Aer ideal simulator ({method})",
            )
            for name, method in IDEAL_METHODS.items()
        ]
        infos.extend(self._device_info(name) for name in sorted(_fake_classes()))
        return infos

    def has_backend(self, name: str) -> bool:
        return name in IDEAL_METHODS or (name.startswith("fake_") and name in _fake_classes())

    def info(self, name: str) -> BackendInfo:
        if name in IDEAL_METHODS:
            return BackendInfo(
                name,
                "aer",
                "simulator",
                None,
                method=IDEAL_METHODS[name],
                max_concurrency=self.simulator_concurrency,
                description=f"Aer ideal simulator ({IDEAL_METHODS[name]})",
            )
        if name.startswith("fake_") and name in _fake_classes():
            return self._device_info(name)
        raise BackendError(f"aer has no backend {name!r}")

    def _device_info(self, name: str) -> BackendInfo:
        cls = _fake_classes()[name]
        qubits = _fake_qubits(name)
        return BackendInfo(
            name,
            "aer",
            "qpu",
            qubits,
            method="automatic",
            noisy=True,
            max_concurrency=self.device_concurrency,
            description=f"simulated QPU with the noise and target of IBM {cls.__name__[4:]}",
        )

    def target(self, backend: str) -> Target:
        if backend in IDEAL_METHODS:
            return ideal_simulator(IDEAL_METHODS[backend]).target
        return fake_backend(backend).target

    def run(self, backend: str, request: ExecuteRequest) -> PrimitiveResult:
        from qiskit_aer.primitives import EstimatorV2, SamplerV2

        if backend in IDEAL_METHODS:
            method = IDEAL_METHODS[backend]
            if method == "automatic":  # the planner's pick, when it made one
                method = (request.options or {}).get("method", method)
            simulator = ideal_simulator(method)
        else:
            simulator = noisy_simulator(backend)
            check_isa(backend, request.pubs, fake_backend(backend).target)
        run_options: dict[str, Any] = {}
        if request.seed is not None:
            run_options["seed_simulator"] = request.seed
        if request.primitive == "sampler":
            sampler = SamplerV2.from_backend(
                simulator, default_shots=request.shots or 1024, seed=request.seed
            )
            return sampler.run(request.pubs).result()
        options: dict[str, Any] = {"run_options": run_options}
        if request.precision is not None:
            options["default_precision"] = request.precision
        estimator = EstimatorV2.from_backend(simulator, options=options)
        return estimator.run(request.pubs).result()


def check_isa(backend: str, pubs: list[Any], target: Target) -> None:
    """Refuse circuits a device could not run, as a real device does."""
    from qlayer.request import pub_circuits

    names = set(target.operation_names) | _DIRECTIVES
    for index, circuit in enumerate(pub_circuits(pubs)):
        if circuit.num_qubits > target.num_qubits:
            raise BackendError(
                f"PUB {index} uses {circuit.num_qubits} qubits; {backend} has {target.num_qubits}"
            )
        bad = sorted({inst.operation.name for inst in circuit.data} - names)
        if bad:
            raise BackendError(
                f"PUB {index} is not an ISA circuit for {backend}: it uses {', '.join(bad)}, "
                f"which the device does not run. Transpile it first: "
                f"ctx.pass_manager(optimization_level=2).run(circuit)"
            )


@functools.cache
def _fake_qubits(name: str) -> int | None:
    """A fake device's qubit count, read from its configuration snapshot (no backend built)."""
    cls = _fake_classes().get(name)
    try:
        path = Path(cls.dirname) / cls.conf_filename  # type: ignore[union-attr]
        with open(path, encoding="utf-8") as handle:
            return int(json.load(handle)["n_qubits"])
    except (AttributeError, OSError, KeyError, TypeError, ValueError):
        return None
