"""Which stored requests may share a device run, and splitting the merged result."""

from __future__ import annotations

import pytest
from qiskit import QuantumCircuit
from qiskit_aer.primitives import SamplerV2

from qlayer import codec
from qlayer.dispatch import coalesce


def raw(pubs=1, **fields):
    circuit = QuantumCircuit(1)
    circuit.measure_all()
    base = {
        "backend": "fake_x",
        "primitive": "sampler",
        "shots": 100,
        "precision": None,
        "seed": None,
        "options": {"method": "automatic"},
        "pubs": codec.encode([circuit] * pubs),
    }
    return {**base, **fields}


def test_only_unseeded_small_requests_with_equal_settings_merge():
    assert coalesce.compat_key(raw()) == coalesce.compat_key(raw(pubs=3))
    assert coalesce.compat_key(raw(seed=7)) is None  # a seeded result must not depend on neighbours
    assert coalesce.compat_key(raw(pubs=coalesce.SMALL_PUBS + 1)) is None
    assert coalesce.compat_key(raw(shots=200)) != coalesce.compat_key(raw())
    assert coalesce.compat_key(raw(primitive="estimator")) != coalesce.compat_key(raw())
    assert coalesce.compat_key(raw(options={"method": "stabilizer"})) != coalesce.compat_key(raw())


def test_split_gives_each_member_its_own_pub_results():
    circuits = []
    for k in range(3):
        qc = QuantumCircuit(2)
        if k & 1:
            qc.x(0)
        if k & 2:
            qc.x(1)
        qc.measure_all()
        circuits.append(qc)
    merged = SamplerV2(seed=1).run(circuits, shots=10).result()
    parts = coalesce.split(merged, [1, 2])
    assert [len(p) for p in parts] == [1, 2]
    assert parts[0][0].data.meas.get_counts() == {"00": 10}
    assert [p.data.meas.get_counts() for p in parts[1]] == [{"01": 10}, {"10": 10}]
    assert parts[1].metadata["coalesced"] == 2
    with pytest.raises(ValueError, match="members asked for 4"):
        coalesce.split(merged, [2, 2])
