"""Statevector simulation on a GPU (qiskit-aer-gpu) against the CPU, in one run.

For each qubit count (28 to 33 by default) one layered circuit (H, CZ ladder, RZ and
RX on every qubit, ``--depth`` layers) is simulated with Aer's ``statevector`` method,
once on the CPU and once on the GPU, each in a fresh process, so that the peak memory
of a row is that row's own:

* CPU peak: the child's ``ru_maxrss``;
* GPU peak: the child's largest ``used_memory`` seen by ``nvidia-smi`` (polled every
  50 ms while it runs).

A row is run only where it fits: the planner's estimate (``qlayer.planner.memory_mb``)
against this machine's memory for the CPU and against the GPU's memory for the GPU.
The last columns say which of the deployed GPU types (``infra/qlayer_infra/instances.py``:
A10G and L4 24 GiB, A100 40 or 80 GiB, H100 80 GiB) the planner lets the row onto.

Where there is no GPU, or qiskit-aer is the CPU build (``AerSimulator().available_devices()``
lacks ``GPU``), the script says so, runs the CPU rows that fit, and exits 0
(``--require-gpu``: exits 1 instead). Run::

    .venv/bin/python bench/gpu.py                 # 28..33 qubits
    .venv/bin/python bench/gpu.py --qubits 20 24  # a quick look on a small machine

Install the GPU build with ``pip install qiskit-aer-gpu`` (CUDA 12, Linux x86_64) in place
of ``qiskit-aer``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qlayer.planner import Resources, memory_mb

#: The GPU memory of the types the stack deploys (GiB per GPU), as the planner sees them.
DEPLOYED_GPUS = {"A10G/L4 24 GiB": 24, "A100 40 GiB": 40, "A100/H100 80 GiB": 80}

CHILD = r"""
import json, resource, sys, time
from qiskit import QuantumCircuit
from qiskit_aer import AerSimulator

qubits, depth, device, precision = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
circuit = QuantumCircuit(qubits)
circuit.h(range(qubits))
for layer in range(depth):
    for q in range(layer % 2, qubits - 1, 2):
        circuit.cz(q, q + 1)
    for q in range(qubits):
        circuit.rz(0.1 * (q + 1), q)
        circuit.rx(0.2 * (layer + 1), q)
circuit.save_state()
sim = AerSimulator(method="statevector", device=device, precision=precision)
start = time.perf_counter()
result = sim.run(circuit, shots=1).result()
elapsed = time.perf_counter() - start
if not result.success:
    raise SystemExit(result.status)
rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "rss_mib": rss_kib / 1024}))
"""


@dataclass
class Row:
    """One measured (or skipped) simulation."""

    qubits: int
    device: str
    seconds: float | None = None
    peak_mib: float | None = None
    note: str = ""


def gpu_status() -> tuple[bool, str, int | None]:
    """Whether Aer can use a GPU here, why not, and the GPU's memory (MiB)."""
    if shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU here (nvidia-smi not found)", None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        total = int(out.split()[0])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        return False, f"nvidia-smi failed: {exc}", None
    try:
        from qiskit_aer import AerSimulator
    except ImportError:
        return False, "qiskit-aer is not installed", total
    if "GPU" not in AerSimulator().available_devices():
        return False, "qiskit-aer is the CPU build: pip install qiskit-aer-gpu", total
    return True, "", total


def _gpu_used_mib(pid: int) -> float | None:
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-compute-apps=pid,used_memory",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except subprocess.SubprocessError:
        return None
    for line in out.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return float(parts[1])
    return None


def measure(qubits: int, depth: int, device: str, precision: str, timeout: float) -> Row:
    """Run one row in a fresh process; its time and peak memory."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(qubits), str(depth), device, precision],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.05):
            used = _gpu_used_mib(child.pid)
            if used is not None:
                peak.append(used)

    watcher = threading.Thread(target=poll, daemon=True) if device == "GPU" else None
    if watcher is not None:
        watcher.start()
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return Row(qubits, device, note=f"over the {timeout:.0f} s limit")
    finally:
        done.set()
        if watcher is not None:
            watcher.join()
    if child.returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        return Row(qubits, device, note=f"failed ({child.returncode}): {last[:60]}")
    data = json.loads(out.strip().splitlines()[-1])
    if device == "GPU":
        return Row(qubits, device, data["seconds"], max(peak) if peak else None)
    return Row(qubits, device, data["seconds"], data["rss_mib"])


def fits_on(qubits: int) -> str:
    """The deployed GPU types the planner lets a ``qubits`` statevector onto."""
    need = memory_mb("statevector", qubits)
    names = [name for name, gib in DEPLOYED_GPUS.items() if need <= gib * 1024]
    return ", ".join(names) or "none (CPU Batch)"


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width table."""
    lines = [
        f"{'qubits':>6}  {'device':<6}  {'seconds':>9}  {'peak MiB':>9}  "
        f"{'planner estimate':>16}  fits (deployed GPUs) / note"
    ]
    for row in rows:
        secs = f"{row.seconds:9.2f}" if row.seconds is not None else f"{'-':>9}"
        peak = f"{row.peak_mib:9.0f}" if row.peak_mib is not None else f"{'-':>9}"
        estimate = f"{memory_mb('statevector', row.qubits):>12} MiB"
        tail = row.note or fits_on(row.qubits)
        lines.append(f"{row.qubits:>6}  {row.device:<6}  {secs}  {peak}  {estimate}  {tail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=list(range(28, 34)))
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--precision", choices=("double", "single"), default="double")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per row")
    parser.add_argument("--require-gpu", action="store_true", help="exit 1 without a GPU")
    args = parser.parse_args(argv)

    has_gpu, why, gpu_mib = gpu_status()
    host_mib = Resources.for_this_machine().local_memory_mb or 0
    if not has_gpu:
        print(f"GPU rows skipped: {why}. Running the CPU rows that fit {host_mib} MiB.")
    scale = 0.5 if args.precision == "single" else 1.0
    rows: list[Row] = []
    for qubits in args.qubits:
        need = int(memory_mb("statevector", qubits) * scale)
        if need <= host_mib:
            rows.append(measure(qubits, args.depth, "CPU", args.precision, args.timeout))
        else:
            rows.append(Row(qubits, "CPU", note=f"skipped: needs ~{need} MiB of {host_mib}"))
        if has_gpu and gpu_mib is not None:
            if need <= gpu_mib:
                rows.append(measure(qubits, args.depth, "GPU", args.precision, args.timeout))
            else:
                rows.append(Row(qubits, "GPU", note=f"skipped: needs ~{need} MiB of {gpu_mib}"))
        print(table(rows).splitlines()[-1] if rows else "", flush=True)
    print()
    print(f"statevector {args.precision}, depth {args.depth}, host {os.cpu_count()} CPUs")
    print(table(rows))
    if not has_gpu:
        print(f"\nNo GPU rows: {why}.")
        return 1 if args.require_gpu else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
