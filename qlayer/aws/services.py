"""What a handler works with: the stack's stores and clients, built once per process.

``functions/<name>/app.py`` calls one handler body (:mod:`qlayer.aws.steps`,
:mod:`~qlayer.aws.fanout`, :mod:`~qlayer.aws.failures`, :mod:`~qlayer.aws.inbox`,
:mod:`~qlayer.aws.dispatcher`, :mod:`~qlayer.aws.poller`) with :func:`services`, built from
the function's environment (:class:`~qlayer.aws.config.AwsConfig`). The providers are
configured here too, with the stack's secret and Braket bucket
(:func:`qlayer.providers.registry.configure`): credentials are injected by the builder.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlayer.aws.config import AwsConfig
from qlayer.aws.jobstore import DynamoJobStore
from qlayer.aws.ledger import DynamoLedger
from qlayer.aws.store import S3Store
from qlayer.core.ports import Ports
from qlayer.interpreter import Decision

log = logging.getLogger("qlayer.aws")

#: Token errors that mean the state already moved on (a duplicate delivery): ignored.
STALE_TOKEN = {"TaskDoesNotExist", "InvalidToken", "TaskTimedOut"}


@dataclass
class Services:
    """The stack's stores and clients for one process (a Lambda, a Batch container, a client).

    Attributes:
        config: Where the stack's resources are.
        store: The artifacts bucket.
        jobs: The jobs table.
        ledger: The QPU tasks table (dispatcher and poller only).
        sfn: A Step Functions client.
        sqs: An SQS client (where the function sends to the dispatch queue).
        scratch: Where program bundles are unpacked.
        envs_root: Where program environments are unpacked (:class:`qlayer.aws.envs.EnvCache`).
        retry_attempts: Tries per provider call (``with_retries``); a Lambda must finish
            within its timeout, so few.
        retry_base_s: The first backoff delay.
        sleep: How to wait between tries (tests pass their own).
    """

    config: AwsConfig
    store: S3Store
    jobs: DynamoJobStore
    ledger: DynamoLedger | None = None
    sfn: Any = None
    sqs: Any = None
    scratch: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "qlayer-programs")
    retry_attempts: int = 4
    retry_base_s: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    envs_root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "qlayer-envs")
    _limiter: Any = None
    _programs: Any = None
    _envs: Any = None

    @classmethod
    def create(cls, config: AwsConfig, session: Any = None, **overrides: Any) -> Services:
        """Services with boto3 clients from ``session`` (default: a new boto3 Session)."""
        import boto3
        from botocore.config import Config

        session = session or boto3.Session(region_name=config.region)
        retries = Config(retries={"mode": "standard", "max_attempts": 5})
        dynamodb = session.client("dynamodb", config=retries)
        values: dict[str, Any] = {
            "config": config,
            "store": S3Store(config.bucket, session.client("s3", config=retries)),
            "jobs": DynamoJobStore(config.jobs_table, dynamodb),
            "sfn": session.client("stepfunctions", config=retries),
            "sqs": session.client("sqs", config=retries) if config.dispatch_queue_url else None,
        }
        if config.tasks_table:
            values["ledger"] = DynamoLedger(config.tasks_table, dynamodb)
        values.update(overrides)
        return cls(**values)

    def programs(self) -> Any:
        from qlayer.program import ProgramCache

        if self._programs is None:
            self._programs = ProgramCache(self.store, self.scratch)
        return self._programs

    def envs(self) -> Any:
        """The process's unpacked environments (:class:`qlayer.aws.envs.EnvCache`)."""
        from qlayer.aws.envs import EnvCache

        if self._envs is None:
            self._envs = EnvCache(self.store, self.envs_root)
        return self._envs

    def ports(self) -> Ports:
        """The engine's ports over this stack (:mod:`qlayer.core.transitions`)."""
        from qlayer.aws.orchestrator import AwsOrchestrator

        return Ports(self.jobs, self.store, AwsOrchestrator(self))

    def rate_limiter(self) -> Any:
        """The process's :class:`qlayer.dispatch.RateLimiter`: submission-rate buckets are per
        process; in-flight slots are counted in the tasks table, across every dispatcher."""
        if self._limiter is None:
            from qlayer.dispatch import RateLimiter
            from qlayer.providers.registry import configured_limits

            self._limiter = RateLimiter(configured_limits())
        return self._limiter

    def retry(self, fn: Callable[[], Any]) -> Any:
        """``fn`` with retries of retryable provider errors (throttling, transient network)."""
        from qlayer.dispatch import with_retries

        return with_retries(fn, self.retry_attempts, self.retry_base_s, sleep=self.sleep)

    def send_token(self, method: str, **kwargs: Any) -> bool:
        """Call a task-token API; a stale token (the state moved on) is not an error."""
        from botocore.exceptions import ClientError

        try:
            getattr(self.sfn, method)(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in STALE_TOKEN:
                log.warning("%s: token no longer valid (%s)", method, exc.response["Error"]["Code"])
                return False
            raise
        return True


def configure_providers(config: AwsConfig, secrets_client: Any = None) -> None:
    """Hand the providers the stack's credentials: the secret (IBM) and the Braket bucket."""
    from qlayer.aws.secrets import ibm_credentials
    from qlayer.providers.registry import ProviderSettings, configure

    secret, bucket = config.providers_secret_arn, config.braket_bucket
    configure(
        ProviderSettings(
            ibm_credentials=ibm_credentials(secret, secrets_client) if secret else None,
            braket_s3_folder=(bucket, "qlayer") if bucket else None,
        )
    )


@functools.lru_cache(maxsize=1)
def services() -> Services:
    """The process's services from its environment (cached across warm invocations)."""
    config = AwsConfig.from_env()
    configure_providers(config)
    return Services.create(config)


def batch_compute(svc: Services, decision: Decision) -> Decision:
    """Give an execute decision bound for Batch the ``compute`` its Batch state reads:
    what the deployment's CPU or GPU jobs may ask for (``QLAYER_RESOURCES``)."""
    plan = decision.plan or {}
    tier = plan.get("tier")
    if decision.kind != "execute" or tier not in ("batch", "batch-gpu") or decision.compute:
        return decision
    resources = svc.config.resources()
    need = max(2048, int(plan.get("memory_mb") or 0) + 512)
    if tier == "batch":
        vcpus = min(resources.batch_vcpus, 4)
        memory = min(need, resources.batch_memory_mb)
    else:
        vcpus, memory = resources.gpu_vcpus, resources.gpu_job_memory_mb
    decision.compute = {
        "kind": tier,
        "vcpus": vcpus,
        "memory_mb": memory,
        "gpus": 1 if tier == "batch-gpu" else 0,
        "timeout_s": 12 * 3600,
    }
    return decision
