"""Safe serialisation of what stages pass on: JSON with typed encodings, never pickle.

A value is encoded to plain JSON. Objects JSON cannot hold are tagged dicts
``{"$q": "<tag>", ...}``:

==============  ==========================================================
tag             holds
==============  ==========================================================
``circuit``     a ``QuantumCircuit`` as base64 QPY (layout kept)
``spo``         a ``SparsePauliOp`` as Pauli labels and complex coefficients
``pauli``       a ``Pauli`` label
``ndarray``     a numpy array: dtype, shape, base64 raw bytes (no object dtype)
``complex``     a complex number
``tuple``       a tuple (PUBs are tuples)
``map``         a dict with non-string keys, as pairs
``bitarray``    a ``BitArray``
``databin``     a ``DataBin`` with its shape and fields
``pubresult``   a ``PubResult`` / ``SamplerPubResult``
``primresult``  a ``PrimitiveResult``
``bytes``       raw bytes
``escaped``     a user dict that happens to have a ``$q`` key
==============  ==========================================================

Qiskit is imported only when a Qiskit object is met, so the codec is cheap to
import in light handlers.
"""

from __future__ import annotations

import base64
import io
import json
import math
from typing import Any

from qlayer.errors import CodecError

TAG = "$q"
_MAX_DEPTH = 200


def dumps(value: Any, *, where: str = "value") -> str:
    """Encode ``value`` to a JSON string.

    Args:
        value: What to encode.
        where: Names the value in errors, e.g. ``"output of stage 'build'"``.

    Raises:
        CodecError: The value holds an object qlayer cannot serialise safely; the
            message names its type and where it was found.
    """
    return json.dumps(encode(value, where=where), separators=(",", ":"), allow_nan=True)


def loads(text: str | bytes, *, where: str = "value") -> Any:
    """Decode a JSON string made by :func:`dumps`.

    Raises:
        CodecError: The text is not valid JSON or a tagged object is malformed.
    """
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CodecError(
            f"{where} is not valid JSON ({exc}); the artifact may be corrupted"
        ) from exc
    return decode(raw, where=where)


def encode(value: Any, *, where: str = "value") -> Any:
    """Encode ``value`` to JSON-compatible Python objects (see :func:`dumps`)."""
    return _encode(value, where, "$", 0)


def decode(raw: Any, *, where: str = "value") -> Any:
    """Inverse of :func:`encode`."""
    try:
        return _decode(raw, 0)
    except CodecError:
        raise
    except Exception as exc:  # malformed tagged payloads raise many kinds of errors
        raise CodecError(f"{where} could not be decoded: {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- encode
def _encode(value: Any, where: str, path: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise CodecError(f"{where} is nested deeper than {_MAX_DEPTH} levels at {path}")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}
    if isinstance(value, complex):
        return {TAG: "complex", "re": value.real, "im": value.imag}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            body = {k: _encode(v, where, f"{path}.{k}", depth + 1) for k, v in value.items()}
            return {TAG: "escaped", "v": body} if TAG in value else body
        return {
            TAG: "map",
            "items": [
                [
                    _encode(k, where, f"{path}<key>", depth + 1),
                    _encode(v, where, f"{path}[{k!r}]", depth + 1),
                ]
                for k, v in value.items()
            ],
        }
    if isinstance(value, list):
        return [_encode(v, where, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {
            TAG: "tuple",
            "v": [_encode(v, where, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)],
        }
    if isinstance(value, (bytes, bytearray)):
        return {TAG: "bytes", "b64": base64.b64encode(bytes(value)).decode()}

    module = type(value).__module__ or ""
    if module.startswith("numpy"):
        return _encode_numpy(value, where, path)
    if module.startswith("qiskit"):
        return _encode_qiskit(value, where, path, depth)
    raise _unsupported(value, where, path)


def _unsupported(value: Any, where: str, path: str) -> CodecError:
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return CodecError(
        f"{where} holds an object of type {kind} at {path}, which qlayer cannot serialise "
        "safely. Return JSON values (dict, list, str, int, float, bool, None), numpy arrays, "
        "QuantumCircuit, SparsePauliOp, or Qiskit primitive results — convert it to one of these."
    )


def _encode_numpy(value: Any, where: str, path: str) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return _encode(value.item(), where, path, 0)
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise CodecError(
                f"{where} holds a numpy array of dtype object at {path}; use a numeric dtype"
            )
        data = np.require(value, requirements="C")  # keeps 0-d arrays 0-d
        return {
            TAG: "ndarray",
            "dtype": data.dtype.str,
            "shape": list(value.shape),
            "b64": base64.b64encode(data.tobytes()).decode(),
        }
    raise _unsupported(value, where, path)


def _encode_qiskit(value: Any, where: str, path: str, depth: int) -> Any:
    from qiskit import QuantumCircuit, qpy
    from qiskit.primitives import BitArray, DataBin, PrimitiveResult, PubResult
    from qiskit.quantum_info import Pauli, SparsePauliOp

    if isinstance(value, QuantumCircuit):
        buffer = io.BytesIO()
        qpy.dump(value, buffer)
        return {TAG: "circuit", "qpy": base64.b64encode(buffer.getvalue()).decode()}
    if isinstance(value, SparsePauliOp):
        labels = value.paulis.to_labels()
        coeffs = value.coeffs
        return {
            TAG: "spo",
            "labels": labels,
            "re": [float(c.real) for c in coeffs],
            "im": [float(c.imag) for c in coeffs],
        }
    if isinstance(value, Pauli):
        return {TAG: "pauli", "label": value.to_label()}
    if isinstance(value, BitArray):
        enc = _encode_numpy(value.array, where, path)
        return {TAG: "bitarray", "num_bits": value.num_bits, "array": enc}
    if isinstance(value, DataBin):
        return {
            TAG: "databin",
            "shape": list(value.shape),
            "fields": {k: _encode(v, where, f"{path}.{k}", depth + 1) for k, v in value.items()},
        }
    if isinstance(value, PubResult):
        return {
            TAG: "pubresult",
            "sampler": type(value).__name__ == "SamplerPubResult",
            "data": _encode(value.data, where, f"{path}.data", depth + 1),
            "metadata": _encode(
                _plain_metadata(value.metadata), where, f"{path}.metadata", depth + 1
            ),
        }
    if isinstance(value, PrimitiveResult):
        return {
            TAG: "primresult",
            "pubs": [_encode(p, where, f"{path}[{i}]", depth + 1) for i, p in enumerate(value)],
            "metadata": _encode(
                _plain_metadata(value.metadata), where, f"{path}.metadata", depth + 1
            ),
        }
    raise _unsupported(value, where, path)


def _plain_metadata(meta: Any) -> Any:
    """Metadata from simulators holds odd objects; keep what JSON can say."""
    if isinstance(meta, dict):
        return {str(k): _plain_metadata(v) for k, v in meta.items()}
    if isinstance(meta, (list, tuple)):
        return [_plain_metadata(v) for v in meta]
    if meta is None or isinstance(meta, (bool, int, float, str)):
        return meta
    try:
        import numpy as np

        if isinstance(meta, np.generic):
            return meta.item()
        if isinstance(meta, np.ndarray) and not meta.dtype.hasobject:
            return meta
    except ImportError:  # pragma: no cover
        pass
    return str(meta)


# ----------------------------------------------------------------------------- decode
def _decode(raw: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH + 5:
        raise CodecError(f"encoded value is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(raw, list):
        return [_decode(v, depth + 1) for v in raw]
    if not isinstance(raw, dict):
        return raw
    tag = raw.get(TAG)
    if tag is None:
        return {k: _decode(v, depth + 1) for k, v in raw.items()}
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise CodecError(f"unknown encoded type {tag!r}; was it written by a newer qlayer?")
    return decoder(raw, depth)


def _d_escaped(raw: dict[str, Any], depth: int) -> Any:
    return {k: _decode(v, depth + 1) for k, v in raw["v"].items()}


def _d_float(raw: dict[str, Any], depth: int) -> Any:
    return float(raw["v"])


def _d_complex(raw: dict[str, Any], depth: int) -> Any:
    return complex(raw["re"], raw["im"])


def _d_tuple(raw: dict[str, Any], depth: int) -> Any:
    return tuple(_decode(v, depth + 1) for v in raw["v"])


def _d_map(raw: dict[str, Any], depth: int) -> Any:
    return {_hashable(_decode(k, depth + 1)): _decode(v, depth + 1) for k, v in raw["items"]}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _d_bytes(raw: dict[str, Any], depth: int) -> Any:
    return base64.b64decode(raw["b64"], validate=True)


def _d_ndarray(raw: dict[str, Any], depth: int) -> Any:
    import numpy as np

    dtype = np.dtype(raw["dtype"])
    if dtype.hasobject:
        raise CodecError("refusing to decode a numpy array of dtype object")
    data = base64.b64decode(raw["b64"], validate=True)
    shape = tuple(int(n) for n in raw["shape"])
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _d_circuit(raw: dict[str, Any], depth: int) -> Any:
    from qiskit import qpy

    circuits = qpy.load(io.BytesIO(base64.b64decode(raw["qpy"], validate=True)))
    if len(circuits) != 1:
        raise CodecError(f"a circuit payload held {len(circuits)} circuits")
    return circuits[0]


def _d_spo(raw: dict[str, Any], depth: int) -> Any:
    from qiskit.quantum_info import SparsePauliOp

    coeffs = [complex(r, i) for r, i in zip(raw["re"], raw["im"], strict=True)]
    return SparsePauliOp(raw["labels"], coeffs)


def _d_pauli(raw: dict[str, Any], depth: int) -> Any:
    from qiskit.quantum_info import Pauli

    return Pauli(raw["label"])


def _d_bitarray(raw: dict[str, Any], depth: int) -> Any:
    import numpy as np
    from qiskit.primitives import BitArray

    array = _d_ndarray(raw["array"], depth)
    return BitArray(np.asarray(array, dtype=np.uint8), int(raw["num_bits"]))


def _d_databin(raw: dict[str, Any], depth: int) -> Any:
    from qiskit.primitives import DataBin

    fields = {k: _decode(v, depth + 1) for k, v in raw["fields"].items()}
    return DataBin(shape=tuple(raw["shape"]), **fields)


def _d_pubresult(raw: dict[str, Any], depth: int) -> Any:
    from qiskit.primitives import PubResult, SamplerPubResult

    cls = SamplerPubResult if raw.get("sampler") else PubResult
    return cls(_decode(raw["data"], depth + 1), _decode(raw["metadata"], depth + 1))


def _d_primresult(raw: dict[str, Any], depth: int) -> Any:
    from qiskit.primitives import PrimitiveResult

    pubs = [_decode(p, depth + 1) for p in raw["pubs"]]
    return PrimitiveResult(pubs, _decode(raw["metadata"], depth + 1))


_DECODERS = {
    "escaped": _d_escaped,
    "float": _d_float,
    "complex": _d_complex,
    "tuple": _d_tuple,
    "map": _d_map,
    "bytes": _d_bytes,
    "ndarray": _d_ndarray,
    "circuit": _d_circuit,
    "spo": _d_spo,
    "pauli": _d_pauli,
    "bitarray": _d_bitarray,
    "databin": _d_databin,
    "pubresult": _d_pubresult,
    "primresult": _d_primresult,
}
