"""Decoding untrusted bytes (issue 9.5): bounded before QPY or numpy sees them, and every
failure a CodecError — never an abort, a MemoryError or a raw exception."""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from qiskit import QuantumCircuit, qpy

from qlayer import bounds, codec
from qlayer.errors import CodecError

ROOT = Path(__file__).resolve().parents[2]


def bell_qpy() -> bytes:
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return buffer.getvalue()


def patched_qubits(data: bytes, qubits: int) -> bytes:
    """The QPY bytes with the first circuit header's num_qubits replaced."""
    (offset,) = struct.unpack_from("!Q", data, 20)  # the offsets table (QPY >= 16)
    at = offset + 5  # name_size (H), global_phase_type (c), global_phase_size (H)
    return data[:at] + struct.pack("!I", qubits) + data[at + 4 :]


def tagged(data: bytes) -> str:
    return json.dumps({"$q": "circuit", "qpy": base64.b64encode(data).decode()})


def test_a_qpy_header_claiming_2e8_qubits_is_refused_without_allocating():
    """In a subprocess with a 2 GiB address-space cap, so a failure to guard cannot take
    pytest down: without the header check Qiskit's reader tries to allocate gigabytes
    (uncapped, it aborts the process). The refusal must come from the check, by name."""
    payload = base64.b64encode(tagged(patched_qubits(bell_qpy(), 200_000_000)).encode())
    script = textwrap.dedent(
        f"""
        import base64, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from qlayer import codec
        from qlayer.errors import CodecError
        text = base64.b64decode({payload!r})
        try:
            codec.loads(text, where="artifact x")
        except CodecError as exc:
            print("CodecError:", exc)
            sys.exit(0)
        print("decoded")
        sys.exit(3)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "200000000 qubits" in done.stdout
    assert "QLAYER_DECODE_MAX_QUBITS" in done.stdout


def test_the_qubit_limit_is_configurable(monkeypatch):
    data = patched_qubits(bell_qpy(), 3)  # a header that claims 3 qubits
    monkeypatch.setenv(bounds.MAX_QUBITS_ENV, "2")
    with pytest.raises(CodecError, match="claims 3 qubits"):
        bounds.check_qpy(data, "x")
    monkeypatch.setenv(bounds.MAX_QUBITS_ENV, "3")
    assert bounds.check_qpy(data, "x") == 1


def test_a_valid_circuit_still_decodes():
    back = codec.loads(tagged(bell_qpy()))
    assert isinstance(back, QuantumCircuit) and back.num_qubits == 2


@pytest.mark.parametrize("cut", [10, 25, 40, 60, -20, -1])
def test_truncated_qpy_is_a_codec_error(cut):
    data = bell_qpy()
    with pytest.raises(CodecError):
        codec.loads(tagged(data[:cut]), where="artifact x")


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00" * 64, b"QISKIT", b"QISKIT\x12" + b"\xff" * 60, bytes(range(256)) * 4],
)
def test_garbage_qpy_bytes_are_a_codec_error(garbage):
    with pytest.raises(CodecError):
        codec.loads(tagged(garbage), where="artifact x")


def test_a_qpy_payload_claiming_huge_counts_is_refused():
    data = bell_qpy()
    (offset,) = struct.unpack_from("!Q", data, 20)
    # num_instructions is the Q after name_size H, type c, phase size H, qubits I, clbits I,
    # metadata size Q, registers I
    at = offset + 2 + 1 + 2 + 4 + 4 + 8 + 4
    crafted = data[:at] + struct.pack("!Q", 10**15) + data[at + 8 :]
    with pytest.raises(CodecError, match="instructions"):
        codec.loads(tagged(crafted))
    many = data[:10] + struct.pack("!Q", 10**12) + data[18:]  # num_programs
    with pytest.raises(CodecError, match="circuits"):
        codec.loads(tagged(many))


def npy(array: np.ndarray) -> bytes:
    return bounds.npy_bytes(array)


def test_a_huge_npy_header_shape_is_refused():
    data = npy(np.zeros(4))
    header_end = data.index(b"\n") + 1
    header = data[10:header_end].decode("latin1").replace("(4,)", "(100000, 100000, 100000)")
    header = header.rstrip("\n").ljust(header_end - 10 - 1) + "\n"
    crafted = data[:10] + header.encode("latin1") + data[header_end:]
    with pytest.raises(CodecError, match="bytes"):
        codec.load_npy(crafted, "argument 'x'")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00\xff\xff" + b"x" * 32, b"not an npy file at all"],
)
def test_garbage_npy_is_a_codec_error(data):
    with pytest.raises(CodecError):
        codec.load_npy(data, "argument 'x'")


def test_an_object_dtype_npy_is_refused():
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header = header.ljust(117) + "\n"
    crafted = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"x" * 8
    with pytest.raises(CodecError, match="dtype"):
        codec.load_npy(crafted, "argument 'x'")


def test_an_inline_array_whose_shape_lies_is_refused():
    raw = {"$q": "ndarray", "dtype": "<f8", "shape": [10**9, 10**9], "b64": ""}
    with pytest.raises(CodecError, match="bytes"):
        codec.decode(raw)
    structured = {"$q": "ndarray", "dtype": "(1000000000,)f8", "shape": [1], "b64": ""}
    with pytest.raises(CodecError):
        codec.decode(structured)


def test_deep_json_nesting_is_a_codec_error():
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(CodecError, match="nested"):
        codec.loads(text, where="argument file x.json")


def test_a_payload_over_the_byte_limit_is_refused_before_parsing(monkeypatch):
    monkeypatch.setenv(bounds.MAX_BYTES_ENV, "100")
    with pytest.raises(CodecError, match="QLAYER_DECODE_MAX_BYTES"):
        codec.loads(json.dumps(list(range(100))), where="artifact x")


def test_values_from_outside_cannot_refer_to_files():
    raw = {"$q": "ndarray", "file": "jobs/other/input-0.npy"}
    with pytest.raises(CodecError, match="refers to a file"):
        codec.decode(raw, where="the job spec's arguments")


def test_a_sidecar_reference_outside_a_job_folder_is_refused(tmp_path):
    from qlayer.store.local import FolderStore

    store = FolderStore(tmp_path)
    for key in ["programs/p/src/main.npy", "jobs/../secret.npy", "jobs/j/x.json"]:
        with pytest.raises(CodecError, match="invalid sidecar key"):
            codec.decode({"$q": "ndarray", "file": key}, files=store)
