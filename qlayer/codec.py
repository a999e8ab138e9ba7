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

Large arrays and circuits can go to binary *sidecars* instead: given a
:class:`Sidecars` writer, an array of at least :data:`SIDECAR_MIN_BYTES` is written as
a ``.npy`` file and a circuit as a ``.qpy`` file next to the JSON, which holds
``{"$q": "ndarray", "file": "<key>"}`` (``"circuit"`` likewise). Decoding such a value
needs a ``files`` reader (an :class:`~qlayer.store.base.ArtifactStore`); without one a
reference is refused, so a value from outside (an inbox spec, an argument file) cannot
name a file.

Decoding is bounded (see :mod:`qlayer.bounds`): sizes, array shapes and QPY headers are
checked before bytes reach numpy or Qiskit, and every failure is a ``CodecError``.

Qiskit is imported only when a Qiskit object is met, so the codec is cheap to
import in light handlers.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from typing import Any, Protocol

from qlayer import bounds
from qlayer.errors import CodecError

TAG = "$q"
_MAX_DEPTH = 200
#: Arrays and circuits of at least this many bytes go to a sidecar when a writer is given.
SIDECAR_MIN_BYTES = 16 * 1024
#: What a sidecar reference may name: a file under a job's folder.
_SIDECAR_KEY = re.compile(r"^jobs/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*\.(npy|qpy)$")


class Files(Protocol):
    """Where sidecar files are read from (an ArtifactStore is one)."""

    def get_bytes(self, key: str) -> bytes: ...


class Sidecars:
    """Writes the binary sidecars of one JSON artifact next to it.

    Args:
        store: Where to write (an ArtifactStore, or anything with ``put_bytes``).
        key: The JSON artifact's key; sidecars are ``<key without .json>-<n>.<ext>``.
    """

    def __init__(self, store: Any, key: str) -> None:
        self.store = store
        self.stem = key[: -len(".json")] if key.endswith(".json") else key
        self.count = 0

    def put(self, data: bytes, ext: str) -> str:
        """Write one sidecar and return its key."""
        key = f"{self.stem}-{self.count}.{ext}"
        self.count += 1
        self.store.put_bytes(key, data)
        return key


def dumps(value: Any, *, where: str = "value", sidecars: Sidecars | None = None) -> str:
    """Encode ``value`` to a JSON string.

    Args:
        value: What to encode.
        where: Names the value in errors, e.g. ``"output of stage 'build'"``.
        sidecars: Write large arrays and circuits there instead of inline.

    Raises:
        CodecError: The value holds an object qlayer cannot serialise safely; the
            message names its type and where it was found.
    """
    encoded = encode(value, where=where, sidecars=sidecars)
    return json.dumps(encoded, separators=(",", ":"), allow_nan=True)


def loads(text: str | bytes, *, where: str = "value", files: Files | None = None) -> Any:
    """Decode a JSON string made by :func:`dumps`, within :mod:`qlayer.bounds`' limits.

    Args:
        text: The JSON text.
        where: Names the value in errors, e.g. ``"artifact jobs/.../result.json"``.
        files: Where sidecar references are read from; None refuses them.

    Raises:
        CodecError: The text is too large or not valid JSON, or a tagged object is
            malformed or claims more than the limits allow.
    """
    bounds.check_size(len(text), where, "JSON text")
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CodecError(f"{where} is corrupted: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise CodecError(f"{where} is nested too deeply to decode") from exc
    return decode(raw, where=where, files=files)


def encode(value: Any, *, where: str = "value", sidecars: Sidecars | None = None) -> Any:
    """Encode ``value`` to JSON-compatible Python objects (see :func:`dumps`)."""
    return _Encoder(where, sidecars).encode(value, "$", 0)


def decode(raw: Any, *, where: str = "value", files: Files | None = None) -> Any:
    """Inverse of :func:`encode`; sidecar references are read from ``files``.

    Raises:
        CodecError: Whatever went wrong, with ``where`` in the message.
    """
    try:
        return _Decoder(where, files).decode(raw, 0)
    except CodecError:
        raise
    except RecursionError as exc:
        raise CodecError(f"{where} is nested too deeply to decode") from exc
    except Exception as exc:  # malformed tagged payloads raise many kinds of errors
        raise CodecError(f"{where} could not be decoded: {type(exc).__name__}: {exc}") from exc


def is_plain_json(value: Any, depth: int = 0) -> bool:
    """True if ``value`` is made of JSON values only (dict with str keys, list, str,
    finite or not float, int, bool, None): what encodes to itself."""
    if depth > _MAX_DEPTH:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return type(value) in (bool, int, float, str) or value is None
    if isinstance(value, list):
        return all(is_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return TAG not in value and all(
            isinstance(k, str) and is_plain_json(v, depth + 1) for k, v in value.items()
        )
    return False


def short_path(path: str, limit: int = 60) -> str:
    """Abbreviate a long value path (``$[0][0]...[0].x``) for a message."""
    if len(path) <= limit:
        return path
    return f"{path[: limit // 2]}...{path[-limit // 3 :]}"


# ----------------------------------------------------------------------------- encode
class _Encoder:
    def __init__(self, where: str, sidecars: Sidecars | None) -> None:
        self.where = where
        self.sidecars = sidecars

    def encode(self, value: Any, path: str, depth: int) -> Any:
        where = self.where
        if depth > _MAX_DEPTH:
            raise CodecError(
                f"{where} is nested deeper than {_MAX_DEPTH} levels at {short_path(path)}"
            )
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
                body = {k: self.encode(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
                return {TAG: "escaped", "v": body} if TAG in value else body
            return {
                TAG: "map",
                "items": [
                    [
                        self.encode(k, f"{path}<key>", depth + 1),
                        self.encode(v, f"{path}[{k!r}]", depth + 1),
                    ]
                    for k, v in value.items()
                ],
            }
        if isinstance(value, list):
            return [self.encode(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {
                TAG: "tuple",
                "v": [self.encode(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)],
            }
        if isinstance(value, (bytes, bytearray)):
            return {TAG: "bytes", "b64": base64.b64encode(bytes(value)).decode()}

        module = type(value).__module__ or ""
        if module.startswith("numpy"):
            return self.numpy(value, path)
        if module.startswith("qiskit"):
            return self.qiskit(value, path, depth)
        raise _unsupported(value, where, path)

    def numpy(self, value: Any, path: str) -> Any:
        import numpy as np

        if isinstance(value, np.generic):
            return self.encode(value.item(), path, 0)
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise CodecError(
                    f"{self.where} holds a numpy array of dtype object at {short_path(path)}; "
                    "use a numeric dtype"
                )
            if self.sidecars is not None and value.nbytes >= SIDECAR_MIN_BYTES:
                key = self.sidecars.put(bounds.npy_bytes(value), "npy")
                return {TAG: "ndarray", "file": key}
            data = np.require(value, requirements="C")  # keeps 0-d arrays 0-d
            return {
                TAG: "ndarray",
                "dtype": data.dtype.str,
                "shape": list(value.shape),
                "b64": base64.b64encode(data.tobytes()).decode(),
            }
        raise _unsupported(value, self.where, path)

    def qiskit(self, value: Any, path: str, depth: int) -> Any:
        from qiskit import QuantumCircuit, qpy
        from qiskit.primitives import BitArray, DataBin, PrimitiveResult, PubResult
        from qiskit.quantum_info import Pauli, SparsePauliOp

        if isinstance(value, QuantumCircuit):
            buffer = io.BytesIO()
            qpy.dump(value, buffer)
            data = buffer.getvalue()
            if self.sidecars is not None and len(data) >= SIDECAR_MIN_BYTES:
                return {TAG: "circuit", "file": self.sidecars.put(data, "qpy")}
            return {TAG: "circuit", "qpy": base64.b64encode(data).decode()}
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
            enc = self.numpy(value.array, path)
            return {TAG: "bitarray", "num_bits": value.num_bits, "array": enc}
        if isinstance(value, DataBin):
            return {
                TAG: "databin",
                "shape": list(value.shape),
                "fields": {k: self.encode(v, f"{path}.{k}", depth + 1) for k, v in value.items()},
            }
        if isinstance(value, PubResult):
            return {
                TAG: "pubresult",
                "sampler": type(value).__name__ == "SamplerPubResult",
                "data": self.encode(value.data, f"{path}.data", depth + 1),
                "metadata": self.encode(
                    _plain_metadata(value.metadata), f"{path}.metadata", depth + 1
                ),
            }
        if isinstance(value, PrimitiveResult):
            return {
                TAG: "primresult",
                "pubs": [self.encode(p, f"{path}[{i}]", depth + 1) for i, p in enumerate(value)],
                "metadata": self.encode(
                    _plain_metadata(value.metadata), f"{path}.metadata", depth + 1
                ),
            }
        raise _unsupported(value, self.where, path)


def _unsupported(value: Any, where: str, path: str) -> CodecError:
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return CodecError(
        f"{where} holds an object of type {kind} at {short_path(path)}, which qlayer cannot "
        "serialise safely. Use JSON values (dict, list, str, int, float, bool, None), numpy "
        "arrays, QuantumCircuit, SparsePauliOp, or Qiskit primitive results — convert it to "
        "one of these."
    )


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
class _Decoder:
    def __init__(self, where: str, files: Files | None) -> None:
        self.where = where
        self.files = files

    def decode(self, raw: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH + 5:
            raise CodecError(f"{self.where} is nested deeper than {_MAX_DEPTH} levels")
        if isinstance(raw, list):
            return [self.decode(v, depth + 1) for v in raw]
        if not isinstance(raw, dict):
            return raw
        tag = raw.get(TAG)
        if tag is None:
            return {k: self.decode(v, depth + 1) for k, v in raw.items()}
        method = getattr(self, f"d_{tag}", None) if isinstance(tag, str) else None
        if method is None:
            raise CodecError(
                f"{self.where}: unknown encoded type {_short(tag)}; "
                "was it written by a newer qlayer?"
            )
        return method(raw, depth)

    def sidecar(self, key: Any) -> bytes:
        """The bytes of a sidecar reference, if this decode may read files."""
        if self.files is None:
            raise CodecError(
                f"{self.where} refers to a file ({_short(key)}); references are accepted only "
                "in qlayer's own artifacts, not in values given from outside"
            )
        if not isinstance(key, str) or not _SIDECAR_KEY.match(key) or ".." in key.split("/"):
            raise CodecError(f"{self.where} refers to an invalid sidecar key {_short(key)}")
        return self.files.get_bytes(key)

    def d_escaped(self, raw: dict[str, Any], depth: int) -> Any:
        return {k: self.decode(v, depth + 1) for k, v in raw["v"].items()}

    def d_float(self, raw: dict[str, Any], depth: int) -> Any:
        return float(raw["v"])

    def d_complex(self, raw: dict[str, Any], depth: int) -> Any:
        return complex(raw["re"], raw["im"])

    def d_tuple(self, raw: dict[str, Any], depth: int) -> Any:
        return tuple(self.decode(v, depth + 1) for v in raw["v"])

    def d_map(self, raw: dict[str, Any], depth: int) -> Any:
        return {
            _hashable(self.decode(k, depth + 1)): self.decode(v, depth + 1) for k, v in raw["items"]
        }

    def d_bytes(self, raw: dict[str, Any], depth: int) -> Any:
        return base64.b64decode(raw["b64"], validate=True)

    def d_ndarray(self, raw: dict[str, Any], depth: int) -> Any:
        import numpy as np

        if "file" in raw:
            return bounds.load_npy(self.sidecar(raw["file"]), f"{self.where} ({raw['file']})")
        dtype = np.dtype(raw["dtype"])
        bounds.check_dtype(dtype, self.where)
        data = base64.b64decode(raw["b64"], validate=True)
        shape = bounds.check_shape(raw["shape"], dtype, len(data), self.where)
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()

    def d_circuit(self, raw: dict[str, Any], depth: int) -> Any:
        if "file" in raw:
            data = self.sidecar(raw["file"])
        else:
            data = base64.b64decode(raw["qpy"], validate=True)
        circuits = load_qpy(data, self.where, max_circuits=1)
        return circuits[0]

    def d_spo(self, raw: dict[str, Any], depth: int) -> Any:
        from qiskit.quantum_info import SparsePauliOp

        labels = raw["labels"]
        _check_labels(labels, self.where)
        coeffs = [complex(r, i) for r, i in zip(raw["re"], raw["im"], strict=True)]
        return SparsePauliOp(labels, coeffs)

    def d_pauli(self, raw: dict[str, Any], depth: int) -> Any:
        from qiskit.quantum_info import Pauli

        _check_labels([raw["label"]], self.where)
        return Pauli(raw["label"])

    def d_bitarray(self, raw: dict[str, Any], depth: int) -> Any:
        import numpy as np
        from qiskit.primitives import BitArray

        array = self.d_ndarray(raw["array"], depth)
        return BitArray(np.asarray(array, dtype=np.uint8), int(raw["num_bits"]))

    def d_databin(self, raw: dict[str, Any], depth: int) -> Any:
        from qiskit.primitives import DataBin

        fields = {k: self.decode(v, depth + 1) for k, v in raw["fields"].items()}
        return DataBin(shape=tuple(raw["shape"]), **fields)

    def d_pubresult(self, raw: dict[str, Any], depth: int) -> Any:
        from qiskit.primitives import PubResult, SamplerPubResult

        cls = SamplerPubResult if raw.get("sampler") else PubResult
        return cls(self.decode(raw["data"], depth + 1), self.decode(raw["metadata"], depth + 1))

    def d_primresult(self, raw: dict[str, Any], depth: int) -> Any:
        from qiskit.primitives import PrimitiveResult

        pubs = [self.decode(p, depth + 1) for p in raw["pubs"]]
        return PrimitiveResult(pubs, self.decode(raw["metadata"], depth + 1))


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _check_labels(labels: Any, where: str) -> None:
    cap = bounds.limits().max_qubits
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise CodecError(f"{where}: Pauli labels must be a list of strings")
    for label in labels:
        if len(label) > cap + 2:  # a phase prefix such as "-i"
            raise CodecError(
                f"{where}: a Pauli label of {len(label)} qubits, more than the {cap} a decoded "
                f"operator may have (set {bounds.MAX_QUBITS_ENV} to raise it)"
            )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- files
def load_qpy(data: bytes, where: str, *, max_circuits: int | None = None) -> list[Any]:
    """Decode QPY bytes to circuits, after :func:`qlayer.bounds.check_qpy`.

    Raises:
        CodecError: The headers fail the checks, or Qiskit's reader fails.
    """
    from qiskit import qpy

    bounds.check_qpy(data, where, max_circuits=max_circuits)
    try:
        circuits = qpy.load(io.BytesIO(data))
    except Exception as exc:  # QpyError, struct.error, ValueError, ...
        raise CodecError(f"{where}: not a valid QPY payload ({type(exc).__name__}: {exc})") from exc
    if max_circuits is not None and len(circuits) > max_circuits:
        raise CodecError(f"{where}: a circuit payload held {len(circuits)} circuits")
    return list(circuits)


def load_npy(data: bytes, where: str) -> Any:
    """Decode ``.npy`` bytes to an array (bounded; see :func:`qlayer.bounds.load_npy`)."""
    return bounds.load_npy(data, where)
