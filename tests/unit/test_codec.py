"""The safe codec round-trips what stages pass on, and refuses what it cannot hold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.primitives import BitArray, DataBin, PrimitiveResult, SamplerPubResult
from qiskit.quantum_info import Pauli, SparsePauliOp
from qiskit_aer.primitives import EstimatorV2, SamplerV2

from qlayer import codec
from qlayer.errors import CodecError


def roundtrip(value):
    text = codec.dumps(value)
    json.loads(text)  # always plain JSON
    return codec.loads(text)


def test_json_values_roundtrip_unchanged():
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": -3}}
    assert roundtrip(value) == value


def test_python_extras_roundtrip():
    value = {"t": (1, (2, 3)), "z": 1 + 2j, 5: "int key", (1, 2): "tuple key", "inf": float("inf")}
    back = roundtrip(value)
    assert back["t"] == (1, (2, 3))
    assert back["z"] == 1 + 2j
    assert back[5] == "int key"
    assert back[(1, 2)] == "tuple key"
    assert back["inf"] == float("inf")


def test_user_dict_with_tag_key_is_not_mistaken_for_a_tagged_object():
    value = {"$q": "circuit", "qpy": "not base64"}
    assert roundtrip(value) == value


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.array(2.5),
        np.zeros((0, 3)),
        np.eye(3).T,
        np.array([1 + 1j, 2 - 1j]),
        np.array([True, False]),
    ],
)
def test_numpy_arrays_keep_dtype_shape_and_values(array):
    back = roundtrip(array)
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_numpy_scalars_become_python_numbers():
    assert roundtrip(np.float64(1.5)) == 1.5
    assert roundtrip(np.int32(7)) == 7


def test_object_arrays_are_refused():
    with pytest.raises(CodecError, match="dtype object"):
        codec.dumps(np.array([object()]))


def test_circuit_roundtrip_keeps_parameters_and_layout():
    theta = Parameter("θ")
    circuit = QuantumCircuit(2, name="ansatz")
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    circuit.measure_all()
    back = roundtrip(circuit)
    assert back == circuit
    assert [p.name for p in back.parameters] == ["θ"]


def test_transpiled_circuit_keeps_layout():
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    circuit = QuantumCircuit(3)
    circuit.h(0)
    circuit.cx(0, 2)
    isa = generate_preset_pass_manager(1, backend=FakeManilaV2(), seed_transpiler=1).run(circuit)
    back = roundtrip(isa)
    assert back.layout is not None
    assert back.layout.final_index_layout() == isa.layout.final_index_layout()


def test_pauli_operators_roundtrip():
    op = SparsePauliOp(["ZZ", "XI", "IY"], [1.0, -0.5 + 0.25j, 2])
    assert roundtrip(op) == op
    assert roundtrip(Pauli("XYZ")) == Pauli("XYZ")


def test_sampler_result_roundtrip():
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    result = SamplerV2(seed=3).run([circuit], shots=64).result()
    back = roundtrip(result)
    assert isinstance(back, PrimitiveResult)
    assert isinstance(back[0], SamplerPubResult)
    assert back[0].data.meas.get_counts() == result[0].data.meas.get_counts()
    assert back[0].metadata["shots"] == 64


def test_estimator_result_roundtrip_keeps_shapes():
    theta = Parameter("t")
    circuit = QuantumCircuit(1)
    circuit.ry(theta, 0)
    values = np.linspace(0, np.pi, 5).reshape(5, 1)
    result = EstimatorV2().run([(circuit, SparsePauliOp("Z"), values)]).result()
    back = roundtrip(result)
    np.testing.assert_allclose(back[0].data.evs, result[0].data.evs)
    assert back[0].data.evs.shape == (5,)
    assert back[0].data.shape == result[0].data.shape


def test_bitarray_and_databin_roundtrip():
    bits = BitArray(np.array([[1], [0], [3]], dtype=np.uint8), 2)
    data = DataBin(c=bits, shape=())
    back = roundtrip(data)
    assert back.c.get_counts() == bits.get_counts()


def test_unsupported_object_names_type_path_and_place():
    class Opaque:
        pass

    with pytest.raises(CodecError) as info:
        codec.dumps({"energies": [1.0, Opaque()]}, where="the output of stage 'update'")
    message = str(info.value)
    assert "Opaque" in message
    assert "stage 'update'" in message
    assert "$.energies[1]" in message


def test_corrupted_payloads_raise_codec_errors():
    with pytest.raises(CodecError, match="not valid JSON"):
        codec.loads("{broken")
    with pytest.raises(CodecError, match="unknown encoded type"):
        codec.loads('{"$q": "pickle", "data": "x"}')
    with pytest.raises(CodecError):
        codec.loads('{"$q": "ndarray", "dtype": "<f8", "shape": [3], "b64": "AAAA"}')
