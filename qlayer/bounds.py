"""What a decode may allocate: limits, and header checks before bytes reach QPY or numpy.

Artifacts and arguments can come from outside the process — an S3 inbox spec, an
argument file, a result written by another account — and a few crafted header bytes
can make a reader allocate gigabytes (a QPY circuit header claiming 2e8 qubits makes
Qiskit's reader abort the process). So every binary payload is checked here first:

* QPY: the file header (magic, version, number of circuits, the offsets table) and each
  circuit's header (``num_qubits``, ``num_clbits``, ``num_instructions``, the sizes of
  its name, phase, metadata and registers) against :class:`Limits` and against the
  bytes actually present;
* ``.npy``: the header (dtype, shape, order) is parsed, the dtype must be a plain
  numeric/string one, and the shape must account for exactly the bytes present.

Limits are configurable per process: ``QLAYER_DECODE_MAX_BYTES`` (default 1 GiB) bounds
one payload (a JSON artifact, an array, a QPY file) and ``QLAYER_DECODE_MAX_QUBITS``
(default 100000) bounds the qubits and the classical bits of one decoded circuit or
Pauli operator. Every failure raises :class:`~qlayer.errors.CodecError`.
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

from qlayer.errors import CodecError

MAX_BYTES_ENV = "QLAYER_DECODE_MAX_BYTES"
MAX_QUBITS_ENV = "QLAYER_DECODE_MAX_QUBITS"
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_QUBITS = 100_000
#: The most dimensions a decoded array may have (numpy's own limit is 64).
MAX_NDIM = 32
#: dtype kinds a decoded array may have: bool, ints, floats, complex, bytes, str, times.
_ARRAY_KINDS = frozenset("biufcSUmM")


@dataclass(frozen=True)
class Limits:
    """What one decode may allocate.

    Args:
        max_bytes: The largest payload (JSON text, array data, QPY file) decoded at once.
        max_qubits: The most qubits, and the most classical bits, of a decoded circuit or
            Pauli operator.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_qubits: int = DEFAULT_MAX_QUBITS

    @classmethod
    def from_env(cls) -> Limits:
        """The limits of this process: the environment's, else the defaults."""
        return cls(
            max_bytes=_env_int(MAX_BYTES_ENV, DEFAULT_MAX_BYTES),
            max_qubits=_env_int(MAX_QUBITS_ENV, DEFAULT_MAX_QUBITS),
        )


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise CodecError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise CodecError(f"{name}={raw!r} must be at least 1")
    return value


def limits() -> Limits:
    """The limits in force now (read from the environment each time: tests may set it)."""
    return Limits.from_env()


def check_size(size: int, where: str, what: str = "payload") -> None:
    """Refuse a payload larger than ``max_bytes`` before decoding it."""
    cap = limits().max_bytes
    if size > cap:
        raise CodecError(
            f"{where}: the {what} is {size} bytes, more than the {cap} bytes one decode may "
            f"take (set {MAX_BYTES_ENV} to raise it)"
        )


# ----------------------------------------------------------------------------- arrays
def check_dtype(dtype: Any, where: str) -> None:
    """Accept only plain dtypes: no objects, no structured or sub-array dtypes."""
    if dtype.hasobject or dtype.fields is not None or dtype.shape != ():
        raise CodecError(f"{where}: refusing to decode a numpy array of dtype {dtype}")
    if dtype.kind not in _ARRAY_KINDS:
        raise CodecError(f"{where}: refusing to decode a numpy array of dtype {dtype}")


def check_shape(shape: Any, dtype: Any, present: int, where: str) -> tuple[int, ...]:
    """The shape as ints, if it accounts for exactly ``present`` bytes of ``dtype``."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
        raise CodecError(f"{where}: an array shape must be a list of at most {MAX_NDIM} sizes")
    dims: list[int] = []
    for n in shape:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise CodecError(f"{where}: invalid array shape {_short(shape)}")
        dims.append(n)
    needed = math.prod(dims) * dtype.itemsize
    check_size(needed, where, "array")
    if needed != present:
        raise CodecError(
            f"{where}: an array of shape {tuple(dims)} and dtype {dtype} needs {needed} "
            f"bytes, but {present} are present; the payload is truncated or corrupted"
        )
    return tuple(dims)


def npy_bytes(array: Any) -> bytes:
    """``array`` in the ``.npy`` format (no pickles)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_npy(data: bytes, where: str) -> Any:
    """Decode ``.npy`` bytes after checking the header against the bytes present."""
    import numpy as np
    from numpy.lib import format as npy

    check_size(len(data), where, ".npy file")
    stream = io.BytesIO(data)
    try:
        version = npy.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy.read_array_header_2_0(stream)
        else:
            raise CodecError(f"{where}: unsupported .npy version {version}")
    except CodecError:
        raise
    except Exception as exc:  # numpy raises ValueError, SyntaxError, EOFError, ...
        raise CodecError(f"{where}: not a valid .npy file ({type(exc).__name__}: {exc})") from exc
    check_dtype(dtype, where)
    offset = stream.tell()
    dims = check_shape(list(shape), dtype, len(data) - offset, where)
    array = np.frombuffer(data, dtype=dtype, offset=offset)
    return array.reshape(dims, order="F" if fortran else "C").copy()


# ----------------------------------------------------------------------------- QPY
_FILE_HEADER = "!6sBBBBQ"  # magic, qpy version, qiskit major/minor/patch, num programs
_CIRCUIT_HEADER_V12 = "!H1cHIIQIQI"
_CIRCUIT_HEADER_V2 = "!H1cHIIQIQ"
_REGISTER_V4 = "!1c?IH?"  # type, standalone, size, name size, in circuit; then size x u64
#: From QPY 18 a register also says whether its bits are one contiguous range (then one
#: u32 start index follows its name, else ``size`` u32 indices).
_REGISTER_V18 = "!1c?IH??"
_VAR_DECLARATION = 19  # uuid (16), usage (1), name size (2)
_MIN_INSTRUCTION = 8  # far below any instruction record; bounds the count by the bytes
#: The QPY versions whose headers this module knows (10: symbolic encoding byte;
#: 16: the offsets table; the reader of this Qiskit refuses newer ones).
MIN_QPY_VERSION = 10


def check_qpy(data: bytes, where: str, *, max_circuits: int | None = None) -> int:
    """Check a QPY payload's headers before :func:`qiskit.qpy.load` sees it.

    Args:
        data: The QPY bytes.
        where: Names the payload in errors.
        max_circuits: The most circuits the payload may hold (None: as many as fit).

    Returns:
        The number of circuits the payload holds.

    Raises:
        CodecError: A header is malformed, claims more than :class:`Limits` allow, or
            claims more than the bytes present can hold.
    """
    check_size(len(data), where, "QPY payload")
    reader = _Reader(data, where)
    magic, version, _major, _minor, _patch, count = reader.unpack(_FILE_HEADER)
    if magic != b"QISKIT":
        raise CodecError(f"{where}: not a QPY payload (no QISKIT header)")
    if version < MIN_QPY_VERSION:
        raise CodecError(
            f"{where}: QPY version {version} is older than {MIN_QPY_VERSION}, the oldest "
            "qlayer accepts; save the circuit again with qiskit.qpy.dump"
        )
    reader.skip(1)  # symbolic encoding
    reader.skip(1)  # the program type key
    if count < 1 or (max_circuits is not None and count > max_circuits):
        expected = f"1 to {max_circuits}" if max_circuits is not None else "at least 1"
        raise CodecError(f"{where}: the QPY payload claims {count} circuits; expected {expected}")
    if version >= 16:
        if count * 8 > reader.left:
            raise CodecError(f"{where}: the QPY payload claims {count} circuits; it is truncated")
        offsets = [reader.unpack("!Q")[0] for _ in range(count)]
        for offset in offsets:
            _check_circuit(_Reader(data, where, offset), version)
    else:
        if count != 1:
            raise CodecError(
                f"{where}: a QPY payload of version {version} with {count} circuits; save "
                "them again with this Qiskit (or one circuit per file)"
            )
        _check_circuit(reader, version)
    return int(count)


def _check_circuit(reader: _Reader, version: int) -> None:
    where = reader.where
    cap = limits().max_qubits
    fmt = _CIRCUIT_HEADER_V12 if version >= 12 else _CIRCUIT_HEADER_V2
    fields = reader.unpack(fmt)
    name_size, _phase_type, phase_size, qubits, clbits, meta_size, registers, instructions = fields[
        :8
    ]
    variables = fields[8] if version >= 12 else 0
    for what, value in (("qubits", qubits), ("classical bits", clbits)):
        if value > cap:
            raise CodecError(
                f"{where}: a circuit header claims {value} {what}, more than the {cap} a "
                f"decoded circuit may have (set {MAX_QUBITS_ENV} to raise it)"
            )
    reader.skip(name_size, "circuit name")
    reader.skip(phase_size, "global phase")
    reader.skip(meta_size, "circuit metadata")
    register_fmt = _REGISTER_V18 if version >= 18 else _REGISTER_V4
    if registers * struct.calcsize(register_fmt) > reader.left:
        raise CodecError(f"{where}: a circuit header claims {registers} registers; truncated")
    for _ in range(registers):
        fields = reader.unpack(register_fmt)
        size, reg_name_size = fields[2], fields[3]
        if size > cap:
            raise CodecError(
                f"{where}: a register of {size} bits, more than the {cap} a decoded circuit "
                f"may have (set {MAX_QUBITS_ENV} to raise it)"
            )
        reader.skip(reg_name_size, "register name")
        if version >= 18:
            reader.skip(4 if fields[5] else size * 4, "register bits")
        else:
            reader.skip(size * 8, "register bits")
    if variables * _VAR_DECLARATION > reader.left:
        raise CodecError(f"{where}: a circuit header claims {variables} variables; truncated")
    if instructions * _MIN_INSTRUCTION > reader.left:
        raise CodecError(
            f"{where}: a circuit header claims {instructions} instructions, more than its "
            f"{reader.left} remaining bytes can hold; the payload is truncated or corrupted"
        )


class _Reader:
    """Reads big-endian fields, refusing to read past the end."""

    def __init__(self, data: bytes, where: str, offset: int = 0) -> None:
        self.data = data
        self.where = where
        self.pos = offset

    @property
    def left(self) -> int:
        return max(len(self.data) - self.pos, 0)

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if size > self.left:
            raise CodecError(f"{self.where}: the QPY payload is truncated")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def skip(self, size: int, what: str = "header") -> None:
        if size > self.left:
            raise CodecError(
                f"{self.where}: the QPY payload is truncated (its {what} claims {size} bytes)"
            )
        self.pos += size


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
