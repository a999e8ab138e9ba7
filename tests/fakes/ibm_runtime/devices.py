"""The devices the fake serves, and how it runs a job on one.

A device ``ibm_<name>`` is the fake backend ``Fake<Name>`` that qiskit-ibm-runtime
ships (``ibm_brisbane`` is ``FakeBrisbane``): its configuration and properties
snapshots are served as the service would serve them, so the client builds a real
``Target`` from them. Jobs run on qiskit-aer's V2 primitives, by default with the
device's noise model (``NoiseModel.from_backend``), or ideal when a test asks for it.
Parameters come in, and results go out, in the client's own wire encoding
(``RuntimeDecoder`` / ``RuntimeEncoder``).
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

#: Devices listed by ``GET /backends`` unless the server is told otherwise.
DEFAULT_BACKENDS = (
    "ibm_brisbane",
    "ibm_sherbrooke",
    "ibm_kyiv",
    "ibm_torino",
    "ibm_fez",
    "ibm_marrakesh",
    "ibm_kingston",
)

#: What the service uses when a PUB carries no shots / precision of its own.
DEFAULT_SHOTS = 4096
DEFAULT_PRECISION = 0.015625

#: Wider executor programs run as ideal matrix product states (noisy MPS samples shot by
#: shot: minutes for the client-side estimator's 127 measured qubits).
WIDE_QUBITS = 28

#: IBM's code for a job that failed while it ran.
FAILED_CODE = 1517


class JobInputError(ValueError):
    """The job's parameters cannot be run (the job ends Failed with this message)."""


@cache
def fake_class(name: str) -> Any:
    """The fake backend class for device ``name`` (None when qiskit-ibm-runtime has none)."""
    if not name.startswith("ibm_"):
        return None
    from qiskit_ibm_runtime import fake_provider

    cls = getattr(fake_provider, "Fake" + name[4:].capitalize(), None)
    if cls is None or not getattr(cls, "conf_filename", None):
        return None
    with open(os.path.join(cls.dirname, cls.conf_filename)) as handle:
        if json.load(handle).get("backend_name") != name:
            return None
    return cls


@cache
def _snapshot(name: str, which: str) -> str:
    cls = fake_class(name)
    filename = cls.conf_filename if which == "conf" else cls.props_filename
    with open(os.path.join(cls.dirname, filename)) as handle:
        return handle.read()


def configuration(name: str) -> dict[str, Any]:
    """The device's configuration, as ``GET /backends/<name>/configuration`` answers."""
    return json.loads(_snapshot(name, "conf"))


def properties(name: str) -> dict[str, Any]:
    """The device's calibration, as ``GET /backends/<name>/properties`` answers."""
    return json.loads(_snapshot(name, "props"))


@cache
def noise_model(name: str) -> Any:
    """The device's noise model (built once per process: it takes about a second)."""
    from qiskit_aer.noise import NoiseModel

    return NoiseModel.from_backend(fake_class(name)())


def run(program_id: str, backend: str, params_text: str, *, noisy: bool) -> str:
    """Run a job's PUBs on Aer; the ``PrimitiveResult`` in the client's wire encoding.

    ``executor`` jobs (the client-side Sampler/Estimator) carry a ``QuantumProgram`` in
    the runtime's schema instead: see :func:`_execute`.

    Raises:
        JobInputError: The parameters are not a sampler/estimator input this fake runs.
    """
    from qiskit.primitives import PrimitiveResult
    from qiskit_ibm_runtime import RuntimeDecoder, RuntimeEncoder

    if program_id == "executor":
        return _execute(params_text, backend, noisy=noisy)
    try:
        params = json.loads(params_text, cls=RuntimeDecoder)
    except Exception as exc:
        raise JobInputError(f"the job's params could not be decoded: {exc}") from exc
    if not isinstance(params, dict) or not isinstance(params.get("pubs"), list):
        raise JobInputError("the job's params carry no 'pubs' list")
    options = params.get("options") or {}
    seed = (options.get("simulator") or {}).get("seed_simulator")
    backend_options = {"noise_model": noise_model(backend)} if noisy else {}
    try:
        if program_id == "sampler":
            shots = options.get("default_shots") or DEFAULT_SHOTS
            results = _sample(params["pubs"], backend_options, seed, shots)
        elif program_id == "estimator":
            precision = options.get("default_precision") or DEFAULT_PRECISION
            results = _estimate(params["pubs"], backend_options, seed, precision)
        else:
            raise JobInputError(f"program {program_id!r} is not served by this fake")
    except JobInputError:
        raise
    except Exception as exc:
        raise JobInputError(f"{type(exc).__name__}: {exc}") from exc
    result = PrimitiveResult(results, metadata={"version": 2})
    return json.dumps(result, cls=RuntimeEncoder)


def _values(circuit: Any, values: Any) -> Any:
    """Parameter values as sent (an array over ``circuit.parameters``), or None."""
    if not circuit.num_parameters:
        return None
    from qiskit.primitives.containers.bindings_array import BindingsArray

    return BindingsArray({tuple(circuit.parameters): values})


def _sample(
    pubs: list[Any], backend_options: dict[str, Any], seed: int | None, shots: int
) -> list[Any]:
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit_aer.primitives import SamplerV2

    coerced = []
    for pub in pubs:
        if not isinstance(pub, (list, tuple)) or len(pub) != 3:
            raise JobInputError("a sampler PUB must be [circuit, parameter values, shots]")
        circuit, values, pub_shots = pub
        coerced.append(SamplerPub.coerce((circuit, _values(circuit, values), pub_shots or shots)))
    sampler = SamplerV2(
        default_shots=shots, seed=seed, options={"backend_options": backend_options}
    )
    return list(sampler.run(coerced).result())


def _estimate(
    pubs: list[Any], backend_options: dict[str, Any], seed: int | None, precision: float
) -> list[Any]:
    from qiskit.primitives.containers.estimator_pub import EstimatorPub
    from qiskit_aer.primitives import EstimatorV2

    coerced = []
    for pub in pubs:
        if not isinstance(pub, (list, tuple)) or len(pub) != 4:
            raise JobInputError(
                "an estimator PUB must be [circuit, observables, parameter values, precision]"
            )
        circuit, observables, values, pub_precision = pub
        coerced.append(
            EstimatorPub.coerce(
                (circuit, observables, _values(circuit, values)),
                pub_precision if pub_precision is not None else precision,
            )
        )
    run_options = {"seed_simulator": seed} if seed is not None else {}
    estimator = EstimatorV2(
        options={
            "backend_options": backend_options,
            "run_options": run_options,
            "default_precision": precision,
        }
    )
    return list(estimator.run(coerced).result())


def _execute(params_text: str, backend: str, *, noisy: bool) -> str:
    """Run an ``executor`` job: its ``QuantumProgram`` (schema v2.0) on Aer.

    The program is decoded with the client's own converter and run by the client's local
    runner (what ``QiskitRuntimeLocalService`` runs offline); the result goes back as the
    service's ``QuantumProgramResultModel``, which the client post-processes into a
    ``PrimitiveResult``.
    """
    from ibm_quantum_schemas.executor.version_2_0 import models
    from qiskit_aer import AerSimulator
    from qiskit_ibm_runtime.fake_provider.executor.run_quantum_program import (
        run_quantum_program,
    )
    from qiskit_ibm_runtime.options_models.simulator import SimulatorOptions
    from qiskit_ibm_runtime.quantum_program.converters.converters_2_0 import (
        passthrough_data_to_2_0,
    )
    from qiskit_ibm_runtime.quantum_program.params_converters import (
        QUANTUM_PROGRAM_PARAMS_CONVERTERS,
    )

    try:
        params = json.loads(params_text)
        version = params.get("schema_version")
        if version != "v2.0":
            raise JobInputError(f"executor schema {version!r} is not served by this fake")
        converter = QUANTUM_PROGRAM_PARAMS_CONVERTERS[version]
        program, _options = converter.decoder(converter.model.model_validate(params))
    except JobInputError:
        raise
    except Exception as exc:
        raise JobInputError(f"the executor's params could not be decoded: {exc}") from exc
    # The client-side estimator measures every qubit of the ISA circuit (127 on Brisbane):
    # too wide for a statevector, so wide programs run as matrix product states.
    wide = any(item.circuit.num_qubits > WIDE_QUBITS for item in program.items)
    method = "matrix_product_state" if wide else "automatic"
    options: dict[str, Any] = {"noise_model": noise_model(backend)} if noisy and not wide else {}
    simulator = AerSimulator(method=method, **options)
    try:
        for item in program.items:
            samplex = getattr(item, "samplex", None)
            if samplex is not None:
                samplex.finalize()  # as the service does with a samplex it received
        result = run_quantum_program(simulator, program, SimulatorOptions())
    except Exception as exc:
        raise JobInputError(f"{type(exc).__name__}: {exc}") from exc
    model = models.QuantumProgramResultModel(
        data=[
            models.QuantumProgramResultItemModel(
                results={
                    name: models.CompressedTensorModel.from_numpy(value)
                    for name, value in item.items()
                },
                metadata=models.ItemMetadataModel(),
            )
            for item in result
        ],
        metadata=models.MetadataModel(chunk_timing=[]),
        passthrough_data=passthrough_data_to_2_0(result.passthrough_data),
        semantic_role=result._semantic_role,
    )
    return model.model_dump_json()
