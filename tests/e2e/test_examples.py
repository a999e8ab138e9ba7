"""The example programs, run end to end on a real local daemon with two workers.

Each test submits ``examples/<name>.py`` through the client, waits for the result and
checks the physics (not just that the job finished), the saved plots and the logs.
"""

from __future__ import annotations

import math
import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlayer import Client
from qlayer.status import JobStatus

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A client with its own home and a two-worker daemon, stopped at teardown."""
    client = Client.local(home=tmp_path_factory.mktemp("home"), workers=2)
    try:
        yield client
    finally:
        client.down()
        client._conn.close()


def assert_png(job, name: str, tmp_path: Path) -> None:
    """The job saved ``name`` and it is a PNG."""
    assert name in job.files(), f"{name} not in {job.files()}"
    data = job.download(name, tmp_path).read_bytes()
    assert data.startswith(PNG_MAGIC), f"{name} is not a PNG: {data[:16]!r}"
    assert len(data) > 5000  # a real plot, not an empty canvas


def test_ghz_sampling_on_noisy_device(client: Client, tmp_path: Path) -> None:
    job = client.run(EXAMPLES / "ghz_sampling.py", {"qubits": 5})
    result = job.result(timeout=240)

    assert job.info()["backend"] == "fake_brisbane"
    assert result["qubits"] == 5
    counts = result["counts"]
    assert sum(counts.values()) == result["shots"] == 2000
    assert all(len(key) == 5 for key in counts)
    # noise: more than the two GHZ outcomes appear, but they dominate with O3 layout
    assert len(counts) > 2
    assert result["p_ghz"] == pytest.approx(
        (counts.get("00000", 0) + counts.get("11111", 0)) / 2000
    )
    assert 0.75 < result["p_ghz"] < 1.0
    assert min(counts.get("00000", 0), counts.get("11111", 0)) > 0.35 * 2000  # both halves
    assert len(result["layout"]) == 5 and max(result["layout"]) < 127
    assert_png(job, "histogram.png", tmp_path)
    logs = job.logs()
    assert "GHZ on 5 qubits for fake_brisbane" in logs
    assert "transpiled at O3" in logs
    assert "P(GHZ) = " in logs
    assert "saved file histogram.png" in logs
    # the simulated device's provider job id is in the logs, as in status
    provider_job = job.info()["provider_job_ids"][0]
    assert f"submitted to fake_brisbane: provider job {provider_job}" in logs
    assert f"provider job {provider_job} done" in logs


def test_qaoa_maxcut_flagship(client: Client, tmp_path: Path) -> None:
    job = client.run(EXAMPLES / "qaoa_maxcut.py", {"nodes": 8})
    result = job.result(timeout=240)

    edges = result["edges"]
    assert result["nodes"] == 8 and len(edges) == 12  # 3-regular
    assert result["iterations"] == 40 == len(result["energy_history"])
    assert result["max_cut"] == 10  # the default seed's graph is not bipartite
    # the most likely bitstring's cut, against the brute-force max cut
    cut = sum(1 for i, j in edges if result["partition"][i] != result["partition"][j])
    assert cut == result["cut"]
    assert result["bitstring"][::-1] == "".join(map(str, result["partition"]))
    assert result["approximation_ratio"] == pytest.approx(cut / 10)
    assert result["approximation_ratio"] >= 0.8
    # the QAOA state itself: clearly better than a random assignment (|E|/2 = 6 -> 0.6)
    assert result["expected_ratio"] >= 0.8
    assert result["p_optimal"] > 0.2
    history = result["energy_history"]
    assert min(history) < history[0] - 0.3  # the optimiser made progress
    assert abs(result["sampled_mean_cut"] - result["expected_cut"]) < 0.15  # ideal sampler
    assert_png(job, "convergence.png", tmp_path)
    assert "graph.json" in job.files()
    logs = job.logs()
    assert "graph: 8 nodes, 12 edges" in logs
    assert "iteration 40: energy" in logs
    assert "SPSA done after 40 iterations" in logs
    assert "max cut 10" in logs


def test_qaoa_loop_is_bounded(client: Client) -> None:
    job = client.run(EXAMPLES / "qaoa_maxcut.py", {"nodes": 6, "maxiter": 3, "p": 1})
    result = job.result(timeout=120)
    assert result["iterations"] == 3
    runs = [e for e in job.timeline() if e["event"] == "started" and e["stage"] == "update"]
    assert len(runs) == 3


def test_parameter_sweep_fans_out(client: Client, tmp_path: Path) -> None:
    points, shots = 61, 2000
    job = client.run(EXAMPLES / "parameter_sweep.py", {"points": points, "shots": shots})
    result = job.result(timeout=240)

    assert result["points"] == points >= 50
    thetas, values = result["thetas"], result["values"]
    assert len(thetas) == len(values) == points
    assert thetas == sorted(thetas) and thetas[0] == 0.0
    assert thetas[-1] == pytest.approx(2 * math.pi)
    errors = [abs(v - math.cos(t)) for t, v in zip(thetas, values, strict=True)]
    assert result["max_abs_error_vs_exact"] == pytest.approx(max(errors))
    # shot noise: sigma <= 1/sqrt(shots) = 0.022; 61 points stay within 5 sigma
    assert max(errors) < 5 / math.sqrt(shots)
    assert result["max_error_in_sigmas"] < 5
    assert result["fit"]["amplitude"] == pytest.approx(1.0, abs=0.02)
    assert result["fit"]["offset"] == pytest.approx(0.0, abs=0.02)

    children = job.children()
    assert len(children) == points
    assert all(child.status() == JobStatus.DONE for child in children)
    for index in (0, points // 2, points - 1):
        child = children[index].result()
        assert child["index"] == index
        assert child["theta"] == pytest.approx(thetas[index])
        assert child["z"] == values[index]
        assert child["shots"] == shots
    assert job.info()["children"] == {"total": points, "done": points}
    assert_png(job, "sweep.png", tmp_path)
    logs = job.logs()
    assert f"sweeping {points} angles" in logs
    assert f"collected {points} points" in logs
    assert "fit: <Z> = " in logs


def test_vqe_h2_reaches_chemical_accuracy(client: Client, tmp_path: Path) -> None:
    import numpy as np

    job = client.run(EXAMPLES / "vqe_h2.py")
    result = job.result(timeout=240)

    # the exact energy, recomputed here from the same Pauli terms
    from qiskit.quantum_info import SparsePauliOp

    namespace = runpy.run_path(str(EXAMPLES / "vqe_h2.py"))
    matrix = SparsePauliOp.from_list(namespace["H2_PAULI_TERMS"]).to_matrix()
    exact = float(np.linalg.eigvalsh(matrix)[0]) + namespace["NUCLEAR_REPULSION"]
    assert exact == pytest.approx(-1.137306, abs=1e-6)  # the literature's FCI/STO-3G value
    assert result["exact_energy"] == pytest.approx(exact, abs=1e-12)

    assert abs(result["energy"] - exact) < 1.6e-3
    assert result["energy"] >= exact - 1e-9  # variational
    assert result["converged"] is True
    assert result["iterations"] < 200
    assert result["hartree_fock_energy"] == pytest.approx(-1.116999, abs=1e-5)
    assert result["energy_history"][-1] == result["energy"]
    assert_png(job, "convergence.png", tmp_path)
    logs = job.logs()
    assert "exact ground energy -1.137306 Ha" in logs
    assert "iteration 1: E = " in logs
    assert "converged after" in logs
