"""The resource planner: from an execute request, pick a simulation method and a tier.

The estimate is deliberately simple and conservative: it is there to route work
and to refuse at once what cannot run, so that no job waits for a resource that
cannot exist.

Memory (bytes) by method, for ``n`` active qubits:

* statevector: ``16 * 2**n`` (complex128), plus 10% working space;
* density_matrix: ``16 * 4**n``;
* stabilizer: ``n**2 / 4`` (a tableau) — negligible;
* matrix_product_state: ``n * 16 * chi**2`` with bond dimension ``chi`` bounded
  by ``2**min(n/2, 10)`` for circuits we cannot analyse.

Tiers (AWS): ``lambda`` up to 10 GiB memory and 15 minutes; ``batch`` (CPU) up
to ``batch_max_memory_mb``; ``batch-gpu`` statevector up to the memory of the
GPU queue's smallest GPU (24 GiB A10G by default: 30 qubits; 31 need a 40 GiB A100).
QPU backends are routed to ``qpu``. Locally every tier runs on this machine, and
the local limit is the machine's memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from qlayer.errors import PlannerError
from qlayer.providers.base import BackendInfo

MIB = 1024 * 1024
CLIFFORD_GATES = frozenset(
    {
        "h",
        "s",
        "sdg",
        "x",
        "y",
        "z",
        "cx",
        "cz",
        "cy",
        "swap",
        "sx",
        "sxdg",
        "id",
        "ecr",
        "measure",
        "barrier",
        "reset",
        "delay",
    }
)
#: Python, qiskit and Aer themselves (measured ~450 MB RSS in a warm worker).
BASE_MEMORY_MB = 512


#: The environment variable that carries a deployment's resources (JSON of the fields of
#: :class:`Resources`); the AWS stack sets it on the functions that plan and run work.
RESOURCES_ENV = "QLAYER_RESOURCES"


@dataclass(frozen=True)
class Resources:
    """What each compute tier can give a job: memory, vCPUs, time.

    These are *resources* (what a tier has); how hard a provider may be pushed are *rate
    limits* (:mod:`qlayer.dispatch.rates`). The defaults are those of the default AWS
    stack; a deployed stack's own come from ``QLAYER_RESOURCES`` in its functions and its
    ``Resources`` output (:meth:`qlayer.aws.config.AwsConfig.resources`).

    Attributes:
        stage_memory_mb: The most a ``compute="lambda"`` stage may declare (the stage
            runner's memory).
        lambda_memory_mb: The simulator Lambda's memory.
        lambda_seconds: A Lambda's longest run.
        batch_memory_mb: The most memory one CPU Batch job can get.
        batch_vcpus: The most vCPUs one CPU Batch job can get.
        gpu_memory_mb: The memory of one GPU that every instance type of the GPU queue
            has (its smallest GPU's: Batch may place a job on any of them).
        gpu_vcpus: vCPUs a GPU job asks for (it must fit the smallest GPU instance).
        gpu_job_memory_mb: Host memory a GPU job asks for (likewise).
        stage_tmp_mb: The stage-runner Lambda's /tmp (its ephemeral storage), where a
            job's environment is unpacked (see :func:`env_on_lambda`).
        local_memory_mb: Set on the local substrate: the machine's memory for a job.
        local_cpus: Set on the local substrate: the machine's CPU cores.
        local_gpus: Set on the local substrate: the machine's visible NVIDIA GPUs.
    """

    stage_memory_mb: int = 4096
    lambda_memory_mb: int = 10240
    lambda_seconds: int = 900
    batch_memory_mb: int = 245760  # r6i.8xlarge-class CPU nodes
    batch_vcpus: int = 32
    gpu_memory_mb: int = 24576  # the default GPU queue's smallest: A10G 24 GiB (g5)
    gpu_vcpus: int = 4  # g5.xlarge, the smallest default GPU instance, has 4
    gpu_job_memory_mb: int = 15360  # and 16 GiB
    stage_tmp_mb: int = 2048  # the stage runner's ephemeral storage (/tmp)
    local_memory_mb: int | None = None
    local_cpus: int | None = None
    local_gpus: int | None = None

    @classmethod
    def for_this_machine(cls, fraction: float = 0.8) -> Resources:
        """The local machine as a tier: ``fraction`` of its memory, its cores and GPUs."""
        import os

        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
        except (ValueError, OSError):  # pragma: no cover - non-POSIX
            total = 8192
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - non-Linux
            cpus = os.cpu_count() or 1
        return cls(local_memory_mb=int(total * fraction), local_cpus=cpus, local_gpus=_gpus())

    def to_json(self) -> str:
        """A deployment's resources as the stack writes them: compact JSON, sorted keys
        (``local_memory_mb`` is the local substrate's own and never written)."""
        import json

        data = {name: getattr(self, name) for name in _DEPLOYED}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Resources:
        """A deployment's resources from :meth:`to_json`'s form.

        Raises:
            ConfigError: Not a JSON object of exactly those keys, with positive integers.
        """
        import json

        from qlayer.errors import ConfigError

        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{RESOURCES_ENV} is not JSON: {exc.msg}") from exc
        if not isinstance(raw, dict) or set(raw) != set(_DEPLOYED):
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise ConfigError(f"{RESOURCES_ENV} must hold exactly the keys {_DEPLOYED}; got {got}")
        bad = [
            k
            for k in _DEPLOYED
            if not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] <= 0
        ]
        if bad:
            raise ConfigError(f"{RESOURCES_ENV}: {', '.join(bad)} must be positive integers")
        return cls(**raw)


#: The fields of :class:`Resources` a deployment declares.
_DEPLOYED = [name for name in Resources.__dataclass_fields__ if not name.startswith("local_")]


def _gpus() -> int:
    """NVIDIA GPUs this process may use: those the driver lists, narrowed by
    ``CUDA_VISIBLE_DEVICES`` when it is set."""
    import os
    from pathlib import Path

    listed = Path("/proc/driver/nvidia/gpus")
    found = len(list(listed.iterdir())) if listed.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [part for part in visible.split(",") if part.strip() and part.strip() != "-1"]
        found = min(found, len(wanted))
    return found


@dataclass(frozen=True)
class Plan:
    """The planner's choice for one execute request."""

    tier: str  # lambda | batch | batch-gpu | qpu
    method: str
    qubits: int
    depth: int
    memory_mb: int
    seconds: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Workload:
    """What the planner needs to know of a request's circuits."""

    qubits: int  # the most active qubits of any PUB
    depth: int  # depth of the longest PUB (by instruction count)
    gates: int  # two-qubit-equivalent gate count, all PUBs
    clifford: bool  # every gate is Clifford
    executions: int  # circuit executions: PUBs x parameter sets
    shots: int


def summarise(pubs: list[Any], shots: int | None) -> Workload:
    """Measure the circuits of an execute request."""
    import numpy as np

    from qlayer.request import pub_circuits

    qubits = depth = gates = executions = 0
    clifford = True
    deepest: Any = None
    for pub, circuit in zip(pubs, pub_circuits(pubs), strict=True):
        index = {bit: i for i, bit in enumerate(circuit.qubits)}
        active: set[int] = set()
        for inst in circuit.data:
            name = inst.operation.name
            if name == "barrier":
                continue
            active.update(index[q] for q in inst.qubits)
            if clifford and name not in CLIFFORD_GATES:
                clifford = False
        qubits = max(qubits, len(active))
        if deepest is None or len(circuit.data) > len(deepest.data):
            deepest = circuit
        gates += len(circuit.data)
        sets = 1
        if isinstance(pub, (tuple, list)):
            for item in pub[1:]:
                array = np.asarray(item) if not hasattr(item, "num_qubits") else None
                if array is not None and array.dtype.kind == "f" and array.ndim >= 1:
                    sets = max(sets, int(np.prod(array.shape[:-1])) if array.ndim > 1 else 1)
        executions += sets
    if deepest is not None:
        depth = deepest.depth()  # of the longest circuit: depth() is costly on many PUBs
    return Workload(qubits, depth, gates, clifford, max(executions, 1), shots or 1024)


def memory_mb(method: str, qubits: int) -> int:
    """Peak memory estimate of simulating ``qubits`` with ``method``."""
    if method == "stabilizer":
        raw = qubits * qubits / 4
    elif method == "density_matrix":
        raw = 16 * 4.0**qubits
    elif method == "matrix_product_state":
        chi = 2 ** min(qubits / 2, 10)
        raw = qubits * 16 * chi * chi * 4
    else:
        raw = 1.1 * 16 * 2.0**qubits
    return int(raw / MIB) + BASE_MEMORY_MB


def seconds(method: str, load: Workload) -> float:
    """A rough wall-time estimate (order of magnitude, for routing only)."""
    if method == "stabilizer":
        per = 1e-7 * load.qubits * load.qubits
    elif method == "matrix_product_state":
        # A gate on two sites costs about chi**3 (chi: the bond dimension the memory
        # estimate uses), at about 1e9 of those a second.
        chi = 2 ** min(load.qubits / 2, 10)
        per = 1e-6 + 1e-9 * chi**3
    elif method == "density_matrix":
        per = 2e-9 * 4.0**load.qubits
    else:
        per = 2e-9 * 2.0**load.qubits
    return per * max(load.gates, 1) * load.executions


def choose_method(backend: BackendInfo, load: Workload) -> str:
    """The simulation method for a request (see :func:`method_reason` for why)."""
    return _method(backend, load)[0]


def method_reason(backend: BackendInfo, load: Workload) -> str:
    """Why :func:`choose_method` picks the method it does, in a few words."""
    return _method(backend, load)[1]


def _method(backend: BackendInfo, load: Workload) -> tuple[str, str]:
    if backend.method != "automatic":
        return backend.method, f"{backend.name} always uses {backend.method}"
    if load.clifford and not backend.noisy:
        return "stabilizer", "every gate is Clifford and the backend is ideal"
    if backend.noisy:
        # Aer samples noise by trajectories over a statevector
        return "statevector", "noisy backend: noise is sampled over a statevector"
    if load.qubits <= 30:
        return "statevector", f"{load.qubits} qubits fit a statevector (30 or fewer)"
    return "matrix_product_state", f"{load.qubits} qubits are too many for a statevector (> 30)"


def plan(backend: BackendInfo, load: Workload, limits: Resources) -> Plan:
    """Pick a method and a tier for a request, or refuse it.

    Raises:
        PlannerError: No tier can serve the request; the message says what it
            would need and what to change.
    """
    if backend.num_qubits is not None and load.qubits > backend.num_qubits:
        raise PlannerError(
            f"the request uses {load.qubits} qubits but {backend.name} has {backend.num_qubits}"
        )
    method, why = _method(backend, load)
    need = memory_mb(method, load.qubits)
    time = seconds(method, load)

    def made(tier: str, reason: str) -> Plan:
        return Plan(
            tier,
            method,
            load.qubits,
            load.depth,
            need,
            round(time, 3),
            f"{method}: {why}; {reason}",
        )

    if limits.local_memory_mb is not None:
        if need > limits.local_memory_mb:
            raise PlannerError(
                f"simulating {load.qubits} active qubits with {method} on {backend.name} needs "
                f"about {_human(need)}; this machine offers {_human(limits.local_memory_mb)}. "
                + _advice(backend, method)
            )
        tier = "qpu" if backend.kind == "qpu" else "local"
        return made(tier, f"local: {_human(need)} of {_human(limits.local_memory_mb)}")

    if backend.kind == "qpu":
        return made("qpu", f"queued to {backend.provider} device {backend.name}")
    if need <= limits.lambda_memory_mb and time <= limits.lambda_seconds * 0.5:
        return made("lambda", f"fits Lambda: {_human(need)}, ~{time:.0f} s")
    if method == "statevector" and need <= limits.gpu_memory_mb and load.qubits >= 26:
        return made("batch-gpu", f"{load.qubits}-qubit statevector on a GPU")
    if need <= limits.batch_memory_mb:
        return made("batch", f"Batch CPU: {_human(need)}, ~{time:.0f} s")
    raise PlannerError(
        f"simulating {load.qubits} active qubits with {method} needs about {_human(need)}; "
        f"no tier can serve it (Lambda {_human(limits.lambda_memory_mb)}, Batch "
        f"{_human(limits.batch_memory_mb)}, GPU {_human(limits.gpu_memory_mb)}). "
        + _advice(backend, method)
    )


#: What a stage runner's /tmp keeps for itself: program bundles, caches, a stage's scratch.
LAMBDA_TMP_RESERVE_MB = 512


def env_on_lambda(unpacked_mb: int, archive_mb: int, resources: Resources) -> str | None:
    """Whether a program's environment can run on the stage-runner Lambda: None if it can,
    else why not (its ``compute="lambda"`` stages then run on Batch CPU).

    A Lambda stage unpacks the environment into /tmp (the function's ephemeral storage,
    ``stage_tmp_mb``): its archive and its files must fit there at once, beside
    :data:`LAMBDA_TMP_RESERVE_MB` for everything else the runner keeps in /tmp. (The
    runner is a container image, so Lambda's 250 MB limit on unzipped packages does not
    apply; /tmp is the bound.)
    """
    room = resources.stage_tmp_mb - LAMBDA_TMP_RESERVE_MB
    need = unpacked_mb + archive_mb
    if need <= room:
        return None
    return (
        f"its environment needs {need} MB of /tmp to unpack ({unpacked_mb} MB of files, "
        f"{archive_mb} MB archive); the stage runner has {room} MB for it "
        f"(stage_tmp_mb={resources.stage_tmp_mb} less {LAMBDA_TMP_RESERVE_MB}): "
        "its Lambda stages run on Batch CPU"
    )


def _advice(backend: BackendInfo, method: str) -> str:
    if backend.noisy:
        return "Use fewer active qubits, or an ideal simulator such as aer_mps."
    if method == "statevector":
        return "Use fewer qubits, or backend aer_mps for low-entanglement circuits."
    return "Use fewer qubits."


def _human(mb: float) -> str:
    units = ["MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"]
    value = float(mb)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.0f} YiB"  # pragma: no cover


def check_local_stages(workflow: Any, machine: Resources) -> list[str]:
    """Check what a workflow's stages declare against this machine (the local substrate).

    Memory is a hard limit here (the stage's address space is capped at what it
    declares), so a stage that declares more than the machine has is refused. vCPUs
    and GPUs are not: a stage that declares more runs degraded — on fewer cores, or
    on the CPU — and the returned warnings go to the job's status and timeline.

    Returns:
        One warning per stage that will run with less than it declares.

    Raises:
        WorkflowError: A stage declares more memory than the machine offers.
    """
    from qlayer.errors import WorkflowError

    refused, warnings = [], []
    for stage in workflow.stages.values():
        compute = stage.compute
        where = f"stage {stage.name!r} (compute={compute.kind!r})"
        if machine.local_memory_mb is not None and compute.memory_mb > machine.local_memory_mb:
            refused.append(
                f"{where} declares memory_mb={compute.memory_mb}; this machine offers "
                f"{machine.local_memory_mb} MiB"
            )
        if machine.local_cpus is not None and compute.vcpus > machine.local_cpus:
            warnings.append(
                f"{where} declares vcpus={compute.vcpus:g}; this machine has "
                f"{machine.local_cpus}: it runs on those here"
            )
        if machine.local_gpus is not None and compute.gpus > machine.local_gpus:
            have = machine.local_gpus
            warnings.append(
                f"{where} declares gpus={compute.gpus}; this machine has {have}: "
                + (f"it runs on {have} here" if have else "it runs on the CPU here")
            )
    if refused:
        raise WorkflowError(
            "this machine cannot give what these stages declare: "
            + "; ".join(refused)
            + " (lower memory_mb, or run it on AWS)"
        )
    return warnings


def check_stages(workflow: Any, resources: Resources) -> None:
    """Refuse, before anything runs, stages that ask for more than the deployment offers.

    A stage that declares what no tier here can give would otherwise wait for it forever
    (a Batch job no instance can place) or be cut short (a Lambda stage past its memory).

    Raises:
        WorkflowError: Naming every such stage, what it asks for and what is offered.
    """
    from qlayer.errors import WorkflowError

    problems = []
    for stage in workflow.stages.values():
        compute = stage.compute
        where = f"stage {stage.name!r} (compute={compute.kind!r})"
        if compute.kind == "lambda":
            if compute.memory_mb > resources.stage_memory_mb:
                problems.append(
                    f"{where} declares memory_mb={compute.memory_mb}; Lambda stages get "
                    f"{resources.stage_memory_mb} MB here (the stack's stage_memory_mb)"
                )
            if compute.timeout_s > resources.lambda_seconds:
                problems.append(
                    f"{where} declares timeout_s={compute.timeout_s}; a Lambda runs at most "
                    f"{resources.lambda_seconds} s (use compute='batch')"
                )
        elif compute.kind == "batch":
            if compute.memory_mb > resources.batch_memory_mb:
                problems.append(
                    f"{where} declares memory_mb={compute.memory_mb}; one CPU Batch job gets "
                    f"at most {resources.batch_memory_mb} MiB here"
                )
            if compute.vcpus > resources.batch_vcpus:
                problems.append(
                    f"{where} declares vcpus={compute.vcpus:g}; one CPU Batch job gets at "
                    f"most {resources.batch_vcpus} here"
                )
    if problems:
        raise WorkflowError(
            "this deployment cannot give what these stages declare: " + "; ".join(problems)
        )
