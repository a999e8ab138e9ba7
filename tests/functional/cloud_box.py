"""Cloud in a box: the synthesized QlayerStack, run by moto 5 in this process.

:func:`synthesize` builds the real CDK app (``QlayerStack``, the context of
infra/cdk.json) and returns its CloudFormation template. :class:`CloudBox` reads that
template and creates, in moto, what the state machine touches: the artifacts bucket
(with the template's inbox notification), both DynamoDB tables (keys and indexes copied
from the template), the dispatch queue and its DLQ, one Lambda function per handler
(``QLAYER_FUNCTION``), the Batch queues and job definitions, the providers secret, and
the job state machine, whose definition is extracted from the template with
``qlayer_infra.extract.state_machine_definition`` (never hand-written) with every
reference resolved to the moto resource made here. The stack's outputs are resolved the
same way into a moto CloudFormation stack, so ``Client.aws(stack=...)`` finds them as it
would in an account.

In-process execution (tests/functional/moto_patches.py):

* every Lambda invoke (Step Functions tasks, S3 notifications, the harness) calls the
  real ``functions/<name>/app.py:lambda_handler``;
* a Batch job runs its job definition's command (``python -m qlayer.aws.batch_entry``
  with the ``Ref::`` parameters substituted) in-process; exit status 0 = SUCCEEDED;
* "Wait for QPU" messages: moto's interpreter runs each execution in a background
  thread, so a pump thread here drains the dispatch queue and invokes the dispatcher
  with the SQS batch, as the event source mapping would, deleting the messages it did
  not report as failed. ``CloudBox.pump_paused()`` stops it (QPU timeout, cancel).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account, and extract.DEFAULT_PSEUDO's
STACK_NAME = "Qlayer"

MOTO_CONFIG = {
    "stepfunctions": {"execute_state_machine": True},
    "lambda": {"use_docker": False},
    "batch": {"use_docker": False},
}
#: Variables that name the function itself (differ per function; no configuration).
PER_FUNCTION_VARS = {"QLAYER_FUNCTION", "POWERTOOLS_SERVICE_NAME"}


def _infra_on_path() -> None:
    """qlayer_infra (as infra/app.py imports it) and functions/ (as Lambda's task root)."""
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    if str(INFRA) not in sys.path:
        sys.path.insert(0, str(INFRA))
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))


def synthesize(outdir: Path, **props: Any) -> dict[str, Any]:
    """Synthesize ``QlayerStack(app, "Qlayer", **props)`` as `cdk synth` would; the template."""
    _infra_on_path()
    import aws_cdk as cdk
    from qlayer_infra.stack import QlayerStack

    context = json.loads((INFRA / "cdk.json").read_text())["context"]
    app = cdk.App(outdir=str(outdir), context=context)
    QlayerStack(app, STACK_NAME, **props)
    assembly = app.synth()
    return json.loads((Path(assembly.directory) / f"{STACK_NAME}.template.json").read_text())


def _of_type(template: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == rtype}


def handler_module(name: str) -> Any:
    return importlib.import_module(f"functions.{name}.app")


class CloudBox:
    """The stack's resources in moto, for one template (see the module docstring).

    Use as a context manager inside ``mock_aws(config=MOTO_CONFIG)`` with the patches on.
    """

    def __init__(self, template: dict[str, Any], session: Any, *, tag: str = "box") -> None:
        _infra_on_path()
        from qlayer_infra.extract import dummy_resolver

        self.template = template
        self.session = session
        self.tag = tag
        self._dummy = dummy_resolver(template)
        self._values: dict[tuple[str, str], str] = {}
        self.functions: dict[str, str] = {}  # handler name -> moto function name
        self.function_env: dict[str, dict[str, str]] = {}
        self.definition: dict[str, Any] = {}
        self.extra_definitions: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, str] = {}
        self.machine_arn = ""
        self.queue_url = ""
        self.pump_errors: list[BaseException] = []
        self.dispatched: list[dict[str, Any]] = []
        #: batch_fault(job_name) -> a failure reason (the container "dies") or None.
        self.batch_fault: Callable[[str], str | None] = lambda name: None
        self.batch_runs: list[dict[str, Any]] = []
        self._pump_on = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- resolution ------------------------------------------------------------------
    def resolve(self, lid: str, attr: str) -> str:
        value = self._values.get((lid, attr))
        if value is None:
            value = self._dummy(lid, attr)
        return value

    def _set(self, lid: str, **attrs: str) -> None:
        for attr, value in attrs.items():
            self._values[(lid, attr)] = value

    def ev(self, value: Any) -> Any:
        from qlayer_infra.extract import resolve_intrinsics

        return resolve_intrinsics(value, self.resolve)

    # -- building --------------------------------------------------------------------
    def build(self) -> CloudBox:
        s = self.session
        iam = s.client("iam")
        role = iam.create_role(
            RoleName=f"{self.tag}-role",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        self.role = role

        # Names first (the functions' environments and the definition refer to them).
        for lid in _of_type(self.template, "AWS::S3::Bucket"):
            name = f"{self.tag}-{lid.lower()}"[:63]
            self._set(lid, Ref=name, Arn=f"arn:aws:s3:::{name}")
            s.client("s3").create_bucket(Bucket=name)
        for lid, res in _of_type(self.template, "AWS::DynamoDB::Table").items():
            props = res["Properties"]
            name = f"{self.tag}-{lid}"
            kwargs: dict[str, Any] = {
                "TableName": name,
                "KeySchema": props["KeySchema"],
                "AttributeDefinitions": props["AttributeDefinitions"],
                "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
            }
            if props.get("GlobalSecondaryIndexes"):
                kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
            arn = s.client("dynamodb").create_table(**kwargs)["TableDescription"]["TableArn"]
            ttl = props.get("TimeToLiveSpecification")
            if ttl:
                s.client("dynamodb").update_time_to_live(
                    TableName=name, TimeToLiveSpecification=ttl
                )
            self._set(lid, Ref=name, Arn=arn)
        sqs = s.client("sqs")
        queues = _of_type(self.template, "AWS::SQS::Queue")
        # dead-letter queues first (a RedrivePolicy refers to one)
        for lid in sorted(queues, key=lambda q: "RedrivePolicy" in queues[q]["Properties"]):
            props = queues[lid]["Properties"]
            attrs = {
                k: str(self.ev(props[k]))
                for k in ("VisibilityTimeout", "MessageRetentionPeriod")
                if k in props
            }
            if "RedrivePolicy" in props:
                attrs["RedrivePolicy"] = json.dumps(self.ev(props["RedrivePolicy"]))
            name = f"{self.tag}-{lid}"
            url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            self._set(lid, Ref=url, Arn=arn, QueueUrl=url, QueueName=name)
        for lid in _of_type(self.template, "AWS::SecretsManager::Secret"):
            arn = s.client("secretsmanager").create_secret(
                Name=f"{self.tag}-{lid}", SecretString="{}"
            )["ARN"]
            self._set(lid, Ref=arn)
        machines = _of_type(self.template, "AWS::StepFunctions::StateMachine")
        ((machine_lid, machine_res),) = machines.items()
        machine_name = machine_res["Properties"]["StateMachineName"]
        self.machine_arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{machine_name}"
        self._set(machine_lid, Ref=self.machine_arn, Name=machine_name)

        self._build_functions()
        self._build_batch()
        self._build_notifications()

        from qlayer_infra.extract import state_machine_definition

        self.definition = state_machine_definition(self.template, self.resolve)
        created = s.client("stepfunctions").create_state_machine(
            name=machine_name,
            definition=json.dumps(self.definition),
            roleArn=role,
            type=machine_res["Properties"].get("StateMachineType", "STANDARD"),
        )["stateMachineArn"]
        assert created == self.machine_arn, (created, self.machine_arn)

        self.outputs = {k: str(self.ev(v["Value"])) for k, v in self.template["Outputs"].items()}
        self.queue_url = self.outputs["DispatchQueueUrl"]
        return self

    def add_machine(self, template: dict[str, Any]) -> str:
        """Create the state machine of another synthesis of the stack (other props, other
        env_name) over this box's resources: same logical ids, so the same resolver."""
        from qlayer_infra.extract import state_machine_definition

        ((lid, res),) = _of_type(template, "AWS::StepFunctions::StateMachine").items()
        name = res["Properties"]["StateMachineName"]
        arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}"

        def resolve(ref: str, attr: str) -> str:
            return arn if ref == lid and attr == "Ref" else self.resolve(ref, attr)

        definition = state_machine_definition(template, resolve)
        created = self.session.client("stepfunctions").create_state_machine(
            name=name, definition=json.dumps(definition), roleArn=self.role
        )["stateMachineArn"]
        assert created == arn, (created, arn)
        self.extra_definitions[arn] = definition
        return arn

    def _build_functions(self) -> None:
        from qlayer_infra.extract import functions_by_name

        lam = self.session.client("lambda")
        for name, lid in functions_by_name(self.template).items():
            props = self.template["Resources"][lid]["Properties"]
            env = {k: str(v) for k, v in self.ev(props["Environment"]["Variables"]).items()}
            fn_name = f"{self.tag}-{name}"
            arn = lam.create_function(
                FunctionName=fn_name,
                Runtime="python3.11",
                Role=self.role,
                Handler="app.lambda_handler",
                Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18},
                Environment={"Variables": env},
                Timeout=int(props.get("Timeout", 60)),
                MemorySize=int(props.get("MemorySize", 512)),
            )["FunctionArn"]
            self._set(lid, Ref=fn_name, Arn=arn)
            self.functions[name] = fn_name
            self.function_env[name] = env

    def _build_batch(self) -> None:
        batch = self.session.client("batch")
        ce = batch.create_compute_environment(
            computeEnvironmentName=f"{self.tag}-ce",
            type="UNMANAGED",
            state="ENABLED",
            serviceRole=self.role,
        )["computeEnvironmentArn"]
        for lid in _of_type(self.template, "AWS::Batch::ComputeEnvironment"):
            self._set(lid, Ref=ce, ComputeEnvironmentArn=ce)
        for lid, res in _of_type(self.template, "AWS::Batch::JobQueue").items():
            props = res["Properties"]
            name = props["JobQueueName"]
            arn = batch.create_job_queue(
                jobQueueName=name,
                state="ENABLED",
                priority=int(props.get("Priority", 1)),
                computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}],
            )["jobQueueArn"]
            self._set(lid, Ref=arn, JobQueueArn=arn, JobQueueName=name)
        for lid, res in _of_type(self.template, "AWS::Batch::JobDefinition").items():
            props = res["Properties"]
            container = self.ev(props["ContainerProperties"])
            arn = batch.register_job_definition(
                jobDefinitionName=props["JobDefinitionName"],
                type="container",
                parameters=props.get("Parameters", {}),
                containerProperties={
                    "image": container["Image"],
                    "command": container["Command"],
                    "environment": [
                        {"name": e["Name"], "value": str(e["Value"])}
                        for e in container.get("Environment", [])
                    ],
                    "resourceRequirements": [
                        {"type": r["Type"], "value": str(r["Value"])}
                        for r in container.get("ResourceRequirements", [])
                    ],
                },
            )["jobDefinitionArn"]
            self._set(lid, Ref=arn, JobDefinitionArn=arn)

    def _build_notifications(self) -> None:
        s3 = self.session.client("s3")
        for res in _of_type(self.template, "Custom::S3BucketNotifications").values():
            props = self.ev({k: v for k, v in res["Properties"].items() if k != "ServiceToken"})
            s3.put_bucket_notification_configuration(
                Bucket=props["BucketName"],
                NotificationConfiguration=props["NotificationConfiguration"],
            )

    # -- running -------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        """The union of the functions' environments (they agree on every shared name)."""
        env: dict[str, str] = {}
        for name, variables in self.function_env.items():
            for key, value in variables.items():
                if key in PER_FUNCTION_VARS:
                    continue
                assert env.get(key, value) == value, f"{name}: {key} differs between functions"
                env[key] = value
        return env

    def handler_for(self, function_name: str) -> Callable[[Any, Any], Any] | None:
        for name, fn_name in self.functions.items():
            if fn_name == function_name:
                return handler_module(name).lambda_handler  # type: ignore[no-any-return]
        return None

    def run_batch_job(self, job: Any) -> tuple[bool, str | None]:
        """Run a Batch job's container command in this process: (succeeded, reason)."""
        command = job._add_parameters_to_command(job.job_definition.container_properties["command"])
        record = {"name": job.job_name, "command": command}
        self.batch_runs.append(record)
        fault = self.batch_fault(job.job_name)
        if fault:
            record["fault"] = fault
            return False, fault
        assert command[:3] == ["python", "-m", "qlayer.aws.batch_entry"], command
        import logging

        from qlayer.aws import batch_entry

        logging.getLogger("qiskit").setLevel(logging.WARNING)  # batch_entry logs at INFO
        try:
            code = batch_entry.main(command[3:])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # the container would exit 1 with a traceback
            record["error"] = repr(exc)
            return False, f"Essential container in task exited: {type(exc).__name__}: {exc}"
        return code == 0, None if code == 0 else f"exit status {code}"

    def _pump(self) -> None:
        sqs = self.session.client("sqs")
        lam = self.session.client("lambda")
        while not self._stop.is_set():
            if not self._pump_on.is_set():
                time.sleep(0.05)
                continue
            try:
                got = sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=10,
                    AttributeNames=["All"],
                    WaitTimeSeconds=0,
                ).get("Messages", [])
                if not got:
                    time.sleep(0.05)
                    continue
                queue_arn = self.resolve_queue_arn()
                records = [
                    {
                        "messageId": m["MessageId"],
                        "receiptHandle": m["ReceiptHandle"],
                        "body": m["Body"],
                        "attributes": m.get("Attributes", {}),
                        "messageAttributes": {},
                        "md5OfBody": m["MD5OfBody"],
                        "eventSource": "aws:sqs",
                        "eventSourceARN": queue_arn,
                        "awsRegion": REGION,
                    }
                    for m in got
                ]
                self.dispatched.extend(json.loads(m["Body"]) for m in got)
                out = lam.invoke(
                    FunctionName=self.functions["dispatcher"],
                    Payload=json.dumps({"Records": records}).encode(),
                )
                response = json.loads(out["Payload"].read() or b"{}")
                if out.get("FunctionError"):
                    raise RuntimeError(f"dispatcher failed: {response}")
                failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
                for m in got:
                    if m["MessageId"] not in failed:
                        sqs.delete_message(
                            QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"]
                        )
            except Exception as exc:  # surfaced by the tests through pump_errors
                self.pump_errors.append(exc)
                time.sleep(0.2)

    def resolve_queue_arn(self) -> str:
        for (lid, attr), value in self._values.items():
            if attr == "QueueUrl" and value == self.queue_url:
                return self._values[(lid, "Arn")]
        raise KeyError(self.queue_url)

    @contextmanager
    def pump_paused(self) -> Iterator[None]:
        self._pump_on.clear()
        time.sleep(0.1)  # let a batch in flight finish
        try:
            yield
        finally:
            self._pump_on.set()

    def start_pump(self) -> None:
        self._pump_on.set()
        self._thread = threading.Thread(target=self._pump, name=f"{self.tag}-sqs-pump", daemon=True)
        self._thread.start()

    def stop_pump(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- waiting -------------------------------------------------------------------------
    def execution_arn(self, job_id: str, machine_arn: str | None = None) -> str:
        machine = machine_arn or self.machine_arn
        return machine.replace(":stateMachine:", ":execution:") + ":" + job_id

    def wait_execution(
        self, job_id: str, timeout: float = 120, machine_arn: str | None = None
    ) -> dict[str, Any]:
        """Wait for the job's execution to end; its describe_execution."""
        sfn = self.session.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while True:
            desc = sfn.describe_execution(executionArn=self.execution_arn(job_id, machine_arn))
            if desc["status"] != "RUNNING":
                return desc  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {job_id} still RUNNING after {timeout} s")
            time.sleep(0.05)

    def history(self, job_id: str, machine_arn: str | None = None) -> list[dict[str, Any]]:
        sfn = self.session.client("stepfunctions")
        arn = self.execution_arn(job_id, machine_arn)
        return sfn.get_execution_history(executionArn=arn)["events"]  # type: ignore[no-any-return]

    def entered_states(self, job_id: str, machine_arn: str | None = None) -> list[str]:
        return [
            e["stateEnteredEventDetails"]["name"]
            for e in self.history(job_id, machine_arn)
            if "stateEnteredEventDetails" in e
        ]


def create_output_stack(session: Any, name: str, outputs: dict[str, str]) -> None:
    """A moto CloudFormation stack carrying the synthesized stack's (resolved) outputs."""
    body = {
        "Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {k: {"Value": v} for k, v in outputs.items()},
    }
    session.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(body))


@contextmanager
def running(template: dict[str, Any], *, tag: str = "box") -> Iterator[CloudBox]:
    """moto + patches + the box built from ``template``, with the SQS pump running."""
    import boto3
    from moto import mock_aws
    from moto_patches import (
        patch_batch_run,
        patch_lambda_invoke,
        patch_normalise_parameters,
        patch_normalise_response,
    )

    saved = dict(os.environ)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_NAMESPACE": "qlayer",
        }
    )
    box: CloudBox | None = None
    try:
        with ExitStack() as stack:
            stack.enter_context(mock_aws(config=MOTO_CONFIG))  # type: ignore[arg-type]
            session = boto3.Session(region_name=REGION)
            box = CloudBox(template, session, tag=tag)
            stack.enter_context(patch_lambda_invoke(box.handler_for))
            stack.enter_context(patch_normalise_parameters())
            stack.enter_context(patch_normalise_response())
            stack.enter_context(patch_batch_run(box.run_batch_job))
            box.build()
            os.environ.update(box.environment())
            from qlayer.aws import handlers

            handlers.services.cache_clear()
            create_output_stack(session, STACK_NAME, box.outputs)
            box.start_pump()
            try:
                yield box
            finally:
                box.stop_pump()
                handlers.services.cache_clear()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
