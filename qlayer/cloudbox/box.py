"""The cloud in a box: the deployed stack, minus AWS.

:class:`CloudBox` puts together the pieces of this package:

1. :class:`~qlayer.cloudbox.server.MotoServer` -- AWS itself, over HTTP on 127.0.0.1;
2. :class:`~qlayer.cloudbox.patches.Patches` -- where moto without Docker runs nothing;
3. :class:`~qlayer.cloudbox.deploy.Deployment` -- the synthesized template's resources;
4. :class:`~qlayer.cloudbox.runtimes.LambdaService` -- each function in its own
   processes, with its own template environment;
5. :class:`~qlayer.cloudbox.batch.BatchRunner` -- Batch jobs as processes;
6. :class:`~qlayer.cloudbox.pumps.SqsPoller` and :class:`~qlayer.cloudbox.pumps.EventBridge`
   -- the SQS event source mapping, the schedules and the execution-status rule;
7. :class:`~qlayer.cloudbox.front.ApiFront` -- each REST API stage on loopback, turning
   requests into its Lambda proxy integration's events (the output ``GatewayUrl``).

While it runs, this process's ``AWS_ENDPOINT_URL`` and credentials point at the box, so
``Client.aws(stack="Qlayer")`` and plain boto3 reach it as they would reach an account.

Example::

    from qlayer.cloudbox import CloudBox, synthesize

    with CloudBox(synthesize(tmp / "cdk.out")) as box:
        job = Client.aws().run("examples/ghz_sampling.py", {"qubits": 3})
        job.result(wait=True)
        print(box.entered_states(job.job_id))
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlayer.cloudbox.batch import BatchRunner
from qlayer.cloudbox.deploy import Deployment, FunctionRecord
from qlayer.cloudbox.front import ApiFront, RestApi
from qlayer.cloudbox.images import Image, image_digest, images_of
from qlayer.cloudbox.patches import Patches
from qlayer.cloudbox.pumps import EventBridge, SqsPoller
from qlayer.cloudbox.runtimes import FunctionPool, FunctionSpec, LambdaService, lambda_environment
from qlayer.cloudbox.server import CREDENTIALS, REGION, MotoServer
from qlayer.cloudbox.synth import Synthesis

#: moto's backends are global to a process: one box at a time per process.
_ACTIVE = threading.Lock()
#: The longest pause between two reads of :meth:`CloudBox.wait_execution`.
WAIT_MAX_S = 1.0

#: The host's TLS trust settings, copied into the box's images when set: a real image has
#: its own system certificates, the box's processes have the host's (a machine behind a
#: TLS-inspecting proxy trusts its CA through these). An environment build reaches the
#: package index with them.
HOST_TRUST_VARIABLES: tuple[str, ...] = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def host_trust() -> dict[str, str]:
    """The host's :data:`HOST_TRUST_VARIABLES` that are set."""
    return {name: os.environ[name] for name in HOST_TRUST_VARIABLES if os.environ.get(name)}


@dataclass(frozen=True)
class BoxOptions:
    """How the box runs the stack; none of it is stack configuration.

    Attributes:
        plugins: Code folders baked into the runner image (every image function and Batch
            job has them on ``PYTHONPATH``), e.g. a provider plugin named by the stack's
            ``provider_plugins``.
        image_env: Variables baked into the runner image (under each function's own),
            e.g. where a provider's fake service keeps its state; passed as given (only
            the Dockerfile's own ``/tmp`` values become each environment's /tmp). The
            host's TLS trust settings (:data:`HOST_TRUST_VARIABLES`) are baked in too.
        max_processes: Runtimes per function at most (more invocations wait their turn).
        batch_slots: Batch jobs running at once (the others stay RUNNABLE).
        sqs_pollers: Concurrent batches per SQS event source mapping.
        schedule_speedup: EventBridge schedules fire this many times faster than written
            (``rate(1 minute)`` every 60/speedup s); nothing else is compressed.
        async_retry_delays_s: Waits before the two retries of a failed asynchronous
            invocation (Lambda: about one and two minutes).
        warm: Start one runtime per function while the box starts.
    """

    plugins: Sequence[str | os.PathLike[str]] = ()
    image_env: Mapping[str, str] = field(default_factory=dict)
    max_processes: int = 2
    batch_slots: int = 2
    sqs_pollers: int = 2
    schedule_speedup: float = 1.0
    async_retry_delays_s: tuple[float, ...] = (60.0, 120.0)
    warm: bool = True


class CloudBox:
    """The stack of ``synthesis`` deployed into moto's server and run (module docstring).

    Args:
        synthesis: What :func:`qlayer.cloudbox.synth.synthesize` returned.
        workdir: Where runtimes and Batch jobs keep /tmp and logs (default: a new temp dir).
        options: See :class:`BoxOptions`.
    """

    def __init__(
        self,
        synthesis: Synthesis,
        workdir: str | os.PathLike[str] | None = None,
        options: BoxOptions | None = None,
    ) -> None:
        self.synthesis = synthesis
        self.options = options or BoxOptions()
        self._tempdir = None if workdir else tempfile.TemporaryDirectory(prefix="cloudbox-")
        self.workdir = Path(workdir or self._tempdir.name)  # type: ignore[union-attr]
        self.server = MotoServer()
        self.lambdas = LambdaService(retry_delays_s=self.options.async_retry_delays_s)
        self.batch: BatchRunner | None = None
        self.deployment: Deployment | None = None
        self.pollers: list[SqsPoller] = []
        self.events: EventBridge | None = None
        self.fronts: list[ApiFront] = []
        self._lambda_client: Any = None
        self.images: dict[str, Image] = {}
        self._patches: Patches | None = None
        self._saved_env: dict[str, str | None] = {}
        self._xray: socket.socket | None = None
        self._closing = threading.Event()
        self._holds_lock = False

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> CloudBox:
        """Start the box. Only one box runs in a process (moto's state is per process)."""
        if not _ACTIVE.acquire(blocking=False):
            raise RuntimeError("a cloud box already runs in this process; stop it first")
        self._holds_lock = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.server.start()
        for key, value in self.server.client_env().items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        self.server.post(
            "/moto-api/state-manager/set-transition",
            {"model_name": "batch::job", "transition": {"progression": "manual", "times": 10**9}},
        )
        self.images = images_of(
            self.synthesis.assembly,
            self.synthesis.assets().get("dockerImages", {}),
            plugins=[str(p) for p in self.options.plugins],
            extra_env={**host_trust(), **self.options.image_env},
        )
        self.batch = BatchRunner(
            images=self.images,
            service_env={
                **self.server.client_env(),
                "AWS_EXECUTION_ENV": "AWS_ECS_EC2",
            },
            workdir=self.workdir / "batch",
            max_running=self.options.batch_slots,
        )
        self._patches = Patches(self.lambdas, self.batch).install()
        self.deployment = Deployment(
            self.synthesis, self.server.client, api_front=self._start_front
        ).deploy()
        self._xray_sink()
        for record in self.deployment.functions.values():
            pool = FunctionPool(self.function_spec(record), self.options.max_processes)
            self.lambdas.add(pool)
        self.lambdas.start()
        self.batch.start()
        if self.options.warm:
            warmers = [
                threading.Thread(target=pool.warm, daemon=True)
                for pool in self.lambdas.pools.values()
            ]
            for thread in warmers:
                thread.start()
            for thread in warmers:
                thread.join()
        lam = self.server.client("lambda")
        for mapping in lam.list_event_source_mappings()["EventSourceMappings"]:
            if ":sqs:" in mapping["EventSourceArn"]:
                poller = SqsPoller(self.client, mapping["UUID"], pollers=self.options.sqs_pollers)
                poller.start()
                self.pollers.append(poller)
        self.events = EventBridge(self.client, schedule_speedup=self.options.schedule_speedup)
        self.events.start()

    def stop(self) -> None:
        """Stop everything this box started (processes, threads, the server)."""
        self._closing.set()
        for front in self.fronts:
            front.stop()
        self.fronts.clear()
        for poller in self.pollers:
            poller.stop()
        if self.events is not None:
            self.events.stop()
        if self.batch is not None:
            self.batch.close()
        self.lambdas.close()
        if self._patches is not None:
            self._patches.remove()
            self._patches = None
        if self._xray is not None:
            self._xray.close()
            self._xray = None
        self.server.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
        if self._holds_lock:
            self._holds_lock = False
            _ACTIVE.release()

    def __enter__(self) -> CloudBox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API Gateway -------------------------------------------------------------------
    def _start_front(self, api: RestApi) -> str:
        """Serve one REST API stage on loopback; its origin there."""
        lock = threading.Lock()

        def invoke(payload: bytes) -> tuple[bytes, str | None]:
            assert self.deployment is not None
            with lock:
                if self._lambda_client is None:
                    self._lambda_client = self.client("lambda")
            out = self._lambda_client.invoke(
                FunctionName=self.deployment.function_named(api.function_logical_id),
                Payload=payload,
            )
            return out["Payload"].read(), out.get("FunctionError")

        front = ApiFront(api, invoke).start()
        self.fronts.append(front)
        return front.origin

    # -- building runtimes -----------------------------------------------------------
    def _xray_sink(self) -> None:
        """A UDP socket where the functions' X-Ray segments go, read and dropped."""
        self._xray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._xray.bind(("127.0.0.1", 0))
        sink = self._xray

        def drain() -> None:
            while not self._closing.is_set():
                try:
                    sink.recv(65536)
                except OSError:
                    return

        threading.Thread(target=drain, name="cloudbox-xray-sink", daemon=True).start()

    def function_spec(self, record: FunctionRecord) -> FunctionSpec:
        """How the box runs one deployed function (see :mod:`qlayer.cloudbox.runtimes`)."""
        assert self.deployment is not None and self._xray is not None
        props = record.properties
        image: Image | None = None
        if "ImageUri" in props["Code"]:
            uri = str(self.deployment.ev(props["Code"]["ImageUri"]))
            image = self.images[image_digest(uri)]
            handler = props["ImageConfig"]["Command"][0]
            code: tuple[str, ...] = image.python_path()
            runtime = None
        else:
            task_root = self.deployment.code_dir(record)
            layers = [d / "python" for d in self.deployment.layer_dirs(record)]
            handler = props["Handler"]
            code = (str(task_root), *(str(d) for d in layers if d.is_dir()))
            runtime = props.get("Runtime")
        log_group = props.get("LoggingConfig", {}).get("LogGroup")
        host, port = self._xray.getsockname()
        environment = lambda_environment(
            name=record.name,
            handler=handler,
            template_env=record.environment,
            code=code,
            task_root=code[0],
            memory_mb=int(props.get("MemorySize", 128)),
            log_group=str(self.deployment.ev(log_group))
            if log_group
            else f"/aws/lambda/{record.name}",
            runtime=runtime,
            tracing=props.get("TracingConfig", {}).get("Mode") == "Active",
            xray_address=f"{host}:{port}",
            endpoint=self.server.endpoint,
            credentials=CREDENTIALS,
            region=REGION,
        )
        return FunctionSpec(
            name=record.name,
            arn=record.arn,
            handler=handler,
            code=code,
            isolated=image is None,
            environment=environment,
            timeout_s=float(props.get("Timeout", 3)),
            memory_mb=int(props.get("MemorySize", 128)),
            workdir=self.workdir / "lambda" / record.handler_name,
            image=image,
        )

    # -- clients and resources -------------------------------------------------------
    def client(self, service: str) -> Any:
        return self.server.client(service)

    def session(self) -> Any:
        return self.server.session()

    @property
    def outputs(self) -> dict[str, str]:
        assert self.deployment is not None
        return self.deployment.outputs

    @property
    def machine_arn(self) -> str:
        assert self.deployment is not None
        return self.deployment.machine_arn

    @property
    def definition(self) -> dict[str, Any]:
        assert self.deployment is not None
        return self.deployment.definition

    def add_machine(self, synthesis: Synthesis) -> str:
        """The state machine of another synthesis (other props), over these resources."""
        assert self.deployment is not None
        return self.deployment.add_machine(synthesis.template)

    def pool(self, handler_name: str) -> FunctionPool:
        """The runtimes of one function, by its handler name (``loader``, ``dispatcher``)."""
        assert self.deployment is not None
        return self.lambdas.pools[self.deployment.functions[handler_name].name]

    def function_log(self, handler_name: str) -> str:
        """Everything a function's runtimes printed (its CloudWatch log group, here)."""
        spec = self.pool(handler_name).spec
        return "".join(p.read_text(errors="replace") for p in sorted(spec.workdir.glob("*.log")))

    # -- the dispatch queue's event source mapping ------------------------------------
    def event_source_mapping(self) -> dict[str, Any]:
        """The SQS event source mapping as the Lambda API describes it."""
        return self.pollers[0].mapping()

    @contextlib.contextmanager
    def sqs_mapping_disabled(self, timeout: float = 30) -> Iterator[None]:
        """Disable the SQS event source mapping (UpdateEventSourceMapping, as a user would)
        and wait until no poller holds a batch; enable it again on exit."""
        lam = self.client("lambda")
        for poller in self.pollers:
            lam.update_event_source_mapping(UUID=poller.uuid, Enabled=False)
        try:
            deadline = time.monotonic() + timeout
            while not all(p.quiet() for p in self.pollers):
                if time.monotonic() > deadline:
                    raise TimeoutError("the SQS pollers did not stop")
                time.sleep(0.05)
            yield
        finally:
            for poller in self.pollers:
                lam.update_event_source_mapping(UUID=poller.uuid, Enabled=True)

    # -- executions --------------------------------------------------------------------
    def execution_arn(self, name: str, machine_arn: str | None = None) -> str:
        machine = machine_arn or self.machine_arn
        return machine.replace(":stateMachine:", ":execution:") + ":" + name

    def wait_execution(
        self, name: str, timeout: float = 120, machine_arn: str | None = None
    ) -> dict[str, Any]:
        """Wait for an execution to end; its DescribeExecution.

        Reads every 0.1 s at first, then less often (up to every :data:`WAIT_MAX_S`): a
        test waiting on a long execution does not keep the box's one moto server busy.
        """
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            desc = sfn.describe_execution(executionArn=self.execution_arn(name, machine_arn))
            if desc["status"] != "RUNNING":
                return desc  # type: ignore[no-any-return]
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"execution {name} still RUNNING after {timeout} s")
            time.sleep(min(delay, max(0.0, deadline - now) + 0.01))
            delay = min(delay * 1.5, WAIT_MAX_S)

    def history(self, name: str, machine_arn: str | None = None) -> list[dict[str, Any]]:
        sfn = self.client("stepfunctions")
        events: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": self.execution_arn(name, machine_arn)}
        while True:
            page = sfn.get_execution_history(**kwargs)
            events += page["events"]
            if not page.get("nextToken"):
                return events
            kwargs["nextToken"] = page["nextToken"]

    def entered_states(self, name: str, machine_arn: str | None = None) -> list[str]:
        """The states the execution entered, in order (its history's StateEntered events)."""
        return [
            e["stateEnteredEventDetails"]["name"]
            for e in self.history(name, machine_arn)
            if "stateEnteredEventDetails" in e
        ]

    def problems(self) -> list[str]:
        """What went wrong inside the box itself (pollers, EventBridge, dropped events)."""
        found = [f"sqs poller: {e}" for p in self.pollers for e in p.errors]
        if self.events is not None:
            found += [f"eventbridge: {e}" for e in self.events.errors]
        found += [f"async invocation dropped: {d}" for d in self.lambdas.dropped]
        return found
