"""Amazon Braket: on-demand simulators and QPUs (AWS), and the offline LocalSimulator.

One qlayer execute request becomes one Braket quantum task per circuit to run:
a sampler PUB with parameter values of shape S runs ``prod(S)`` bound circuits; an
estimator PUB runs, for each (parameter, observable) element, one circuit per group
of qubit-wise commuting Pauli terms (basis rotation + measurement), with
``ceil(1 / precision**2)`` shots. Results are put back together as a Qiskit
``PrimitiveResult``: a ``BitArray`` per classical register for the sampler,
``evs``/``stds`` for the estimator (expectations of each Pauli term from the
parities of the measured bits; ``stds`` the standard error of the mean). Circuits
are converted with qiskit-braket-provider's ``to_braket``.

Only terminal measurements are supported (Braket measures at the end of a circuit).
A Braket Direct reservation (``options["braket"]["reservation_arn"]``, or the provider's
``reservation_arn``) is passed on with every task.

Idempotency (AWS): every task gets a client token derived from the qlayer key and
the task's index (``sha256(key#i)``), so a repeated ``CreateQuantumTask`` returns the
same task instead of a second one, and tags ``qlayer-key`` / ``qlayer-run``. The
request's manifest (task ARNs plus the recipe to rebuild the result) is written to
S3 at a location derived from the key; ``find_job`` looks there first, then for the
device's recent tasks carrying the key's tags (a crash before the manifest), and the
provider job id is that manifest's ``s3://`` URI, so any process (another Lambda)
can poll and collect from the id alone.

Local (``braket_local``): :class:`BraketLocalProvider` runs Braket's offline
LocalSimulator on our own compute, like Aer (a worker, a Lambda, a Batch job): it has no
queue of its own, so it is a simulator, not a service to submit to. A request of several
circuits with the same shots runs there as one program set (``ProgramSet``: the
simulator lists ``braket.ir.openqasm.program_set``); on AWS devices each circuit is still
its own task.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC
from typing import TYPE_CHECKING, Any

from qlayer.errors import BackendError
from qlayer.providers.base import (
    AsyncProvider,
    BackendInfo,
    ProviderError,
    ProviderJobState,
    ProviderJobStatus,
    SyncProvider,
)
from qlayer.providers.braket_tasks import as_program_set, assemble, expand, program_set_runs

if TYPE_CHECKING:
    from qiskit.primitives import PrimitiveResult
    from qiskit.transpiler import Target

    from qlayer.request import ExecuteRequest

LOCAL = "braket_local"

#: qlayer names of Braket devices: (device ARN, qubits, kind).
BRAKET_DEVICES: dict[str, tuple[str | None, int | None, str]] = {
    LOCAL: (None, None, "simulator"),
    "braket_sv1": ("arn:aws:braket:::device/quantum-simulator/amazon/sv1", 34, "simulator"),
    "braket_dm1": ("arn:aws:braket:::device/quantum-simulator/amazon/dm1", 17, "simulator"),
    "braket_tn1": ("arn:aws:braket:::device/quantum-simulator/amazon/tn1", 50, "simulator"),
    "braket_ionq_aria": ("arn:aws:braket:us-east-1::device/qpu/ionq/Aria-1", 25, "qpu"),
    "braket_ionq_forte": ("arn:aws:braket:us-east-1::device/qpu/ionq/Forte-1", 36, "qpu"),
    "braket_iqm_garnet": ("arn:aws:braket:eu-north-1::device/qpu/iqm/Garnet", 20, "qpu"),
    "braket_rigetti_ankaa3": ("arn:aws:braket:us-west-1::device/qpu/rigetti/Ankaa-3", 84, "qpu"),
}

_STATE_MAP: dict[str, ProviderJobState] = {
    "CREATED": "QUEUED",
    "QUEUED": "QUEUED",
    "RUNNING": "RUNNING",
    "COMPLETED": "DONE",
    "FAILED": "ERROR",
    "CANCELLING": "CANCELLED",
    "CANCELLED": "CANCELLED",
}

_RETRYABLE_CODES = {
    "ThrottlingException",
    "TooManyRequestsException",
    "ServiceQuotaExceededException",
    "InternalServiceException",
    "InternalServerError",
    "ServiceUnavailable",
    "RequestTimeout",
    "DeviceOfflineException",
}


def device_arn(backend: str) -> str | None:
    """The device ARN of a qlayer Braket name (or the ARN itself); None for the local simulator."""
    if backend.startswith("arn:aws:braket"):
        return backend
    if backend not in BRAKET_DEVICES:
        raise BackendError(
            f"unknown Braket backend {backend!r}; known: {', '.join(BRAKET_DEVICES)}, or an ARN"
        )
    return BRAKET_DEVICES[backend][0]


def classify(exc: BaseException, doing: str) -> ProviderError:
    """A boto/Braket exception as a ``ProviderError``: throttling, 5xx and connection
    faults are retryable; validation, access and not-found errors are not."""
    if isinstance(exc, ProviderError):
        return exc
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = str(error.get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = f"Amazon Braket: {doing} failed: {code}: {error.get('Message', exc)}"
        retryable = code in _RETRYABLE_CODES or (isinstance(status, int) and status >= 500)
        return ProviderError(message, retryable=retryable or status == 429)
    message = f"Amazon Braket: {doing} failed: {type(exc).__name__}: {exc}"
    names = {cls.__name__ for cls in type(exc).__mro__}
    transient = {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ConnectionError",
        "TimeoutError",
    }
    return ProviderError(message, retryable=bool(names & transient))


def _digest(text: str, size: int = 64) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def braket_programs(request: ExecuteRequest) -> tuple[list[Any], list[int], dict[str, Any]]:
    """The request's circuits as Braket programs, their shots, and the result's recipe.

    Raises:
        ProviderError: A circuit cannot be converted (not retryable).
    """
    from qiskit_braket_provider import to_braket

    try:
        circuits, shots, recipe = expand(request)
        return [to_braket(circuit) for circuit in circuits], shots, recipe
    except Exception as exc:
        raise ProviderError(
            f"Amazon Braket: cannot convert the request: {exc}", retryable=False
        ) from exc


# ----------------------------------------------------------------------------- provider


class BraketProvider(AsyncProvider):
    """Amazon Braket devices (``braket_*`` names or device ARNs) and ``braket_local``.

    Args:
        braket_client: A boto3 ``braket`` client (None: created on first AWS call).
        s3_client: A boto3 ``s3`` client (None: created on first AWS call).
        s3_folder: ``(bucket, prefix)`` for task results and manifests (None:
            ``$QLAYER_BRAKET_S3`` as ``s3://bucket/prefix``).
        region: AWS region for the clients (None: the device ARN's, else the default).
        reservation_arn: A Braket Direct reservation every task joins (a request's
            ``options["braket"]["reservation_arn"]`` wins); None: on-demand.
        lookup_window_s: How far back ``find_job`` looks for tasks tagged with a key.
        lookup_pages: At most this many pages (100 tasks each) of that look-up.
    """

    name = "braket"

    def __init__(
        self,
        *,
        braket_client: Any = None,
        s3_client: Any = None,
        s3_folder: tuple[str, str] | None = None,
        region: str | None = None,
        reservation_arn: str | None = None,
        lookup_window_s: float = 86400.0,
        lookup_pages: int = 5,
    ) -> None:
        self._braket = braket_client
        self._s3 = s3_client
        self._s3_folder = s3_folder
        self.region = region
        self.reservation_arn = reservation_arn
        self.lookup_window_s = lookup_window_s
        self.lookup_pages = lookup_pages
        self._manifests: dict[str, dict[str, Any]] = {}
        self._found_tasks: dict[str, dict[int, str]] = {}  # key -> tasks found by tag

    # ------------------------------------------------------------------ clients

    def _clients(self, backend: str | None = None) -> tuple[Any, Any]:
        if self._braket is None or self._s3 is None:
            import boto3

            region = self.region
            arn = device_arn(backend) if backend else None
            if region is None and arn and arn.split(":")[3]:
                region = arn.split(":")[3]
            session = boto3.Session(region_name=region)
            self._braket = self._braket or session.client("braket")
            self._s3 = self._s3 or session.client("s3")
        return self._braket, self._s3

    def s3_folder(self) -> tuple[str, str]:
        if self._s3_folder is None:
            uri = os.environ.get("QLAYER_BRAKET_S3", "")
            if not uri.startswith("s3://"):
                raise ProviderError(
                    "Amazon Braket needs an S3 folder for results: set QLAYER_BRAKET_S3="
                    "s3://<bucket>/<prefix> (or pass s3_folder=)",
                    retryable=False,
                )
            bucket, _, prefix = uri[5:].partition("/")
            self._s3_folder = (bucket, prefix.rstrip("/") or "qlayer")
        return self._s3_folder

    def _manifest_uri(self, key: str) -> str:
        bucket, prefix = self.s3_folder()
        return f"s3://{bucket}/{prefix}/manifests/{_digest(key, 40)}.json"

    # ------------------------------------------------------------------ port

    def backends(self) -> list[BackendInfo]:
        return [self.info(name) for name in BRAKET_DEVICES]

    @staticmethod
    def info(name: str) -> BackendInfo:
        from qlayer.dispatch import RateLimiter

        if name.startswith("arn:aws:braket"):
            kind = "simulator" if "quantum-simulator" in name else "qpu"
            qubits = None
        elif name in BRAKET_DEVICES:
            _, qubits, kind = BRAKET_DEVICES[name]
        else:
            raise BackendError(
                f"unknown Braket backend {name!r}; known: {', '.join(BRAKET_DEVICES)}"
            )
        limits = RateLimiter().limits_for(name)
        what = (
            "offline LocalSimulator (amazon-braket-sdk)"
            if name == LOCAL
            else f"Amazon Braket {name}"
        )
        return BackendInfo(
            name,
            "braket",
            "simulator" if kind == "simulator" else "qpu",
            qubits,
            noisy=kind == "qpu",
            max_concurrency=limits.max_in_flight,
            description=what,
        )

    def target(self, backend: str) -> Target:
        if backend == LOCAL:
            from qiskit_braket_provider import BraketLocalBackend

            return BraketLocalBackend().target
        from braket.aws import AwsDevice
        from qiskit_braket_provider import BraketAwsBackend

        try:
            return BraketAwsBackend(device=AwsDevice(device_arn(backend))).target
        except Exception as exc:
            raise classify(exc, f"getting device {backend}") from exc

    def _submitted(self, key: str) -> str | None:
        uri = self._manifest_uri(key)
        return uri if self._read_manifest(uri, missing_ok=True) is not None else None

    def find_job(self, backend: str, idempotency_key: str) -> str | None:
        """The job already submitted under ``idempotency_key``, or None.

        The manifest first; without one (the submitter died between creating the tasks and
        writing it), the device's recent tasks tagged ``qlayer-key`` = the key: those are
        kept for :meth:`submit`, which creates only the missing ones and writes the
        manifest (it needs the request's recipe), so None is returned.
        """
        found = self._submitted(idempotency_key)
        if found is None and backend != LOCAL:
            tagged = self._tagged_tasks(backend, idempotency_key)
            if tagged:
                self._found_tasks[idempotency_key] = tagged
        return found

    def _tagged_tasks(self, backend: str, key: str) -> dict[int, str]:
        """Run index -> task ARN of the device's recent tasks tagged with ``key``."""
        from datetime import datetime, timedelta

        braket, _ = self._clients(backend)
        since = datetime.now(UTC) - timedelta(seconds=self.lookup_window_s)
        filters = [
            {"name": "deviceArn", "operator": "EQUAL", "values": [device_arn(backend)]},
            {"name": "createdAt", "operator": "GTE", "values": [since.isoformat()]},
        ]
        found: dict[int, str] = {}
        token = None
        for _ in range(self.lookup_pages):
            kwargs: dict[str, Any] = {"filters": filters, "maxResults": 100}
            if token:
                kwargs["nextToken"] = token
            try:
                page = braket.search_quantum_tasks(**kwargs)
            except Exception as exc:
                raise classify(exc, f"looking up tasks tagged {key}") from exc
            for summary in page.get("quantumTasks", []):
                tags = summary.get("tags") or {}
                run = str(tags.get("qlayer-run", ""))
                if tags.get("qlayer-key") == key[:256] and run.isdigit():
                    found[int(run)] = summary["quantumTaskArn"]
            token = page.get("nextToken")
            if not token:
                break
        return found

    def submit(self, backend: str, request: ExecuteRequest, *, idempotency_key: str) -> str:
        found = self._submitted(idempotency_key)
        if found is not None:
            return found
        if backend == LOCAL:
            raise BackendError(f"{LOCAL} runs on our own compute: use BraketLocalProvider.run")
        programs, shots, recipe = braket_programs(request)
        options = dict((request.options or {}).get("braket") or {})
        return self._submit_aws(
            backend,
            idempotency_key,
            programs,
            shots,
            recipe,
            reservation_arn=options.get("reservation_arn") or self.reservation_arn,
        )

    def _submit_aws(
        self,
        backend: str,
        key: str,
        programs: list[Any],
        shots: list[int],
        recipe: dict[str, Any],
        *,
        reservation_arn: str | None = None,
    ) -> str:
        from braket.circuits.serialization import IRType

        braket, _ = self._clients(backend)
        bucket, prefix = self.s3_folder()
        arn = device_arn(backend)
        existing = self._found_tasks.pop(key, {})
        extra: dict[str, Any] = {}
        if reservation_arn:  # a Braket Direct reservation: the tasks run in its window
            extra["associations"] = [
                {"arn": reservation_arn, "type": "RESERVATION_TIME_WINDOW_ARN"}
            ]
        arns = []
        for index, (program, n) in enumerate(zip(programs, shots, strict=True)):
            if index in existing:  # created before a crash, found by its tags
                arns.append(existing[index])
                continue
            try:
                response = braket.create_quantum_task(
                    action=program.to_ir(ir_type=IRType.OPENQASM).json(),
                    clientToken=_digest(f"{key}#{index}"),
                    deviceArn=arn,
                    outputS3Bucket=bucket,
                    outputS3KeyPrefix=f"{prefix}/tasks",
                    shots=n,
                    tags={"qlayer-key": key[:256], "qlayer-run": str(index)},
                    **extra,
                )
            except Exception as exc:
                raise classify(exc, f"creating task {index} on {backend}") from exc
            arns.append(response["quantumTaskArn"])
        uri = self._manifest_uri(key)
        manifest = {
            "key": key,
            "backend": backend,
            "device_arn": arn,
            "tasks": arns,
            "recipe": recipe,
        }
        self._write_manifest(uri, manifest)
        return uri

    def _write_manifest(self, uri: str, manifest: dict[str, Any]) -> None:
        _, s3 = self._clients(manifest["backend"])
        bucket, _, key = uri[5:].partition("/")
        try:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=json.dumps(manifest).encode(),
                ContentType="application/json",
            )
        except Exception as exc:
            raise classify(exc, f"writing manifest {uri}") from exc
        self._manifests[uri] = manifest

    def _read_manifest(self, uri: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        if uri in self._manifests:
            return self._manifests[uri]
        if not uri.startswith("s3://"):
            raise ProviderError(f"not a Braket job id of qlayer: {uri!r}", retryable=False)
        _, s3 = self._clients()
        bucket, _, key = uri[5:].partition("/")
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if missing_ok and code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise classify(exc, f"reading manifest {uri}") from exc
        manifest: dict[str, Any] = json.loads(body)
        self._manifests[uri] = manifest
        return manifest

    def _manifest(self, provider_job_id: str) -> dict[str, Any]:
        manifest = self._read_manifest(provider_job_id)
        assert manifest is not None
        return manifest

    def status(self, provider_job_id: str) -> ProviderJobStatus:
        manifest = self._manifest(provider_job_id)
        braket, _ = self._clients(manifest["backend"])
        states: list[ProviderJobState] = []
        position = None
        messages = []
        for arn in manifest["tasks"]:
            try:
                task = braket.get_quantum_task(
                    quantumTaskArn=arn, additionalAttributeNames=["QueueInfo"]
                )
            except Exception as exc:
                raise classify(exc, f"getting task {arn}") from exc
            state = _STATE_MAP.get(str(task["status"]).upper(), "ERROR")
            states.append(state)
            if state == "ERROR" and task.get("failureReason"):
                messages.append(f"{arn}: {task['failureReason']}")
            queue = task.get("queueInfo") or {}
            if state == "QUEUED" and position is None and str(queue.get("position", "")).isdigit():
                position = int(queue["position"])
        if "ERROR" in states:
            return ProviderJobStatus("ERROR", message="; ".join(messages) or "a Braket task failed")
        if "CANCELLED" in states:
            return ProviderJobStatus("CANCELLED")
        if all(state == "DONE" for state in states):
            return ProviderJobStatus("DONE")
        if any(state in ("RUNNING", "DONE") for state in states):
            return ProviderJobStatus("RUNNING")
        return ProviderJobStatus("QUEUED", queue_position=position)

    def result(self, provider_job_id: str) -> PrimitiveResult:
        from braket.tasks import GateModelQuantumTaskResult

        manifest = self._manifest(provider_job_id)
        braket, s3 = self._clients(manifest["backend"])
        runs = []
        for arn in manifest["tasks"]:
            try:
                task = braket.get_quantum_task(quantumTaskArn=arn)
                if task["status"] != "COMPLETED":
                    raise ProviderError(
                        f"task {arn} is {task['status']}, not COMPLETED", retryable=False
                    )
                obj = s3.get_object(
                    Bucket=task["outputS3Bucket"], Key=f"{task['outputS3Directory']}/results.json"
                )
                parsed = GateModelQuantumTaskResult.from_string(obj["Body"].read().decode())
            except Exception as exc:
                raise classify(exc, f"fetching results of {arn}") from exc
            runs.append((list(parsed.measured_qubits), parsed.measurements))
        return assemble(manifest["recipe"], runs)

    def cancel(self, provider_job_id: str) -> None:
        manifest = self._manifest(provider_job_id)
        braket, _ = self._clients(manifest["backend"])
        for arn in manifest["tasks"]:
            try:
                task = braket.get_quantum_task(quantumTaskArn=arn)
                if task["status"] in ("COMPLETED", "FAILED", "CANCELLED", "CANCELLING"):
                    continue
                braket.cancel_quantum_task(quantumTaskArn=arn, clientToken=_digest(f"cancel#{arn}"))
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if code == "ConflictException":
                    continue  # ended between our look and the cancel
                raise classify(exc, f"cancelling task {arn}") from exc


class BraketLocalProvider(SyncProvider):
    """``braket_local``: Braket's offline LocalSimulator, run on our own compute.

    Args:
        simulator: The simulator (None: ``braket.devices.LocalSimulator()`` on first use).
    """

    name = "braket"

    def __init__(self, *, simulator: Any = None) -> None:
        self._simulator = simulator

    def backends(self) -> list[BackendInfo]:
        return [BraketProvider.info(LOCAL)]

    def target(self, backend: str) -> Target:
        from qiskit_braket_provider import BraketLocalBackend

        return BraketLocalBackend().target

    def run(self, backend: str, request: ExecuteRequest) -> PrimitiveResult:
        if backend != LOCAL:
            raise BackendError(f"BraketLocalProvider runs {LOCAL}, not {backend!r}")
        programs, shots, recipe = braket_programs(request)
        if self._simulator is None:
            from braket.devices import LocalSimulator

            self._simulator = LocalSimulator()
        runs = []
        try:
            program_set = as_program_set(programs, shots, self._simulator.properties.action)
            if program_set is not None:  # several circuits as one task
                result = self._simulator.run(program_set, shots=program_set.total_shots).result()
                runs = program_set_runs(result)
            else:
                for program, n in zip(programs, shots, strict=True):
                    result = self._simulator.run(program, shots=n).result()
                    runs.append((list(result.measured_qubits), result.measurements))
        except Exception as exc:
            raise ProviderError(
                f"Amazon Braket LocalSimulator failed: {exc}", retryable=False
            ) from exc
        return assemble(recipe, runs)
