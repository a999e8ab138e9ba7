"""Deploy a synthesized template into moto, as CloudFormation would, through the AWS API.

:class:`Deployment` reads the template and creates what the stack's code touches, each
from its resource's properties (intrinsics resolved to what was created here):

* S3 buckets (versioning, encryption, public access block) and the inbox notification
  of ``Custom::S3BucketNotifications`` (applied as its custom resource would);
* DynamoDB tables (keys, GSIs, TTL); KMS keys; log groups; IAM roles (trust policy only);
* SQS queues with their VisibilityTimeout, MessageRetentionPeriod and RedrivePolicy;
* the Secrets Manager secret with the template's initial value (``SecretString``, or a
  value generated as ``GenerateSecretString`` says: a random password, not JSON);
* every qlayer Lambda function (the one whose environment names ``QLAYER_FUNCTION``):
  its code (zip of the staged asset, or the image URI), handler, environment, timeout,
  memory; its permissions; the SQS event source mapping (BatchSize, batching window,
  FunctionResponseTypes);
* Batch: one UNMANAGED compute environment per template one, the job queues, the job
  definitions (container properties, parameters, retry strategy, timeout);
* the state machine, whose definition is extracted by
  ``qlayer_infra.extract.state_machine_definition`` (never written by hand);
* the EventBridge rules with their targets; a CloudFormation stack with the outputs,
  so ``Client.aws(stack=...)`` finds them as in an account;
* each REST API (CreateRestApi, with its binary media types) and what its stage and
  Lambda proxy integration name (:class:`~qlayer.cloudbox.front.RestApi`): the box
  serves it on loopback (:mod:`qlayer.cloudbox.front`), and an output holding the API's
  ``https://<id>.execute-api...`` origin holds the loopback one instead.

Not created (nothing of ours calls them): the VPC and its endpoints, security groups,
the alarm topic and alarms, IAM policies, the Lambda layer version, the CDK's own
custom-resource function.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlayer.cloudbox.front import RestApi
from qlayer.cloudbox.patches import rename_to_shape
from qlayer.cloudbox.server import ACCOUNT, REGION
from qlayer.cloudbox.synth import Synthesis, infra_on_path

Client = Callable[[str], Any]


def of_type(template: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == rtype}


@dataclass
class FunctionRecord:
    """A qlayer function as deployed: what the runtimes are built from."""

    handler_name: str  # QLAYER_FUNCTION: loader, stage_runner, ...
    logical_id: str
    name: str
    arn: str
    properties: dict[str, Any]
    environment: dict[str, str]


@dataclass
class Deployment:
    """The template's resources in moto (see the module docstring)."""

    synthesis: Synthesis
    client: Client
    values: dict[tuple[str, str], str] = field(default_factory=dict)
    functions: dict[str, FunctionRecord] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    definition: dict[str, Any] = field(default_factory=dict)
    machine_arn: str = ""
    secret_arn: str = ""
    extra_definitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Starts the loopback front of one REST API and returns its origin (the box's).
    api_front: Callable[[RestApi], str] | None = None
    apis: dict[str, RestApi] = field(default_factory=dict)
    api_origins: dict[str, str] = field(default_factory=dict)

    @property
    def template(self) -> dict[str, Any]:
        return self.synthesis.template

    @property
    def stack_name(self) -> str:
        return self.synthesis.stack_name

    # -- resolution ------------------------------------------------------------------
    def resolve(self, lid: str, attr: str) -> str:
        value = self.values.get((lid, attr))
        if value is None:
            infra_on_path()
            from qlayer_infra.extract import dummy_resolver

            value = dummy_resolver(self.template)(lid, attr)
        return value

    def ev(self, value: Any) -> Any:
        infra_on_path()
        from qlayer_infra.extract import resolve_intrinsics

        return resolve_intrinsics(value, self.resolve, self._pseudo())

    def _pseudo(self) -> dict[str, str]:
        return {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": self.stack_name,
            "AWS::URLSuffix": "amazonaws.com",
        }

    def _set(self, lid: str, **attrs: str) -> None:
        for attr, value in attrs.items():
            self.values[(lid, attr)] = value

    def _name(self, lid: str, props: dict[str, Any], key: str, limit: int = 64) -> str:
        """The resource's name property, else one made as CloudFormation does (stack-id)."""
        if key in props:
            return str(self.ev(props[key]))
        return f"{self.stack_name}-{lid}"[:limit]

    # -- deploying -------------------------------------------------------------------
    def deploy(self) -> Deployment:
        self._keys_logs_roles()
        self._buckets()
        self._tables()
        self._queues()
        self._secrets()
        machine_lid, machine = next(
            iter(of_type(self.template, "AWS::StepFunctions::StateMachine").items())
        )
        name = str(self.ev(machine["Properties"]["StateMachineName"]))
        self.machine_arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}"
        self._set(machine_lid, Ref=self.machine_arn, Name=name, Arn=self.machine_arn)
        self._functions()
        self._batch()
        self._event_source_mappings()
        self.definition = self._create_machine(self.template, machine_lid, self.resolve)
        self._rules()
        self._notifications()
        self._apis()
        self.outputs = {
            k: self._served_at(str(self.ev(v["Value"])))
            for k, v in self.template["Outputs"].items()
        }
        self._output_stack()
        return self

    def _keys_logs_roles(self) -> None:
        kms, logs, iam = self.client("kms"), self.client("logs"), self.client("iam")
        for lid, res in of_type(self.template, "AWS::KMS::Key").items():
            meta = kms.create_key(Description=str(res["Properties"].get("Description", lid)))
            self._set(lid, Ref=meta["KeyMetadata"]["KeyId"], Arn=meta["KeyMetadata"]["Arn"])
        for lid, res in of_type(self.template, "AWS::Logs::LogGroup").items():
            name = self._name(lid, res["Properties"], "LogGroupName", 512)
            logs.create_log_group(logGroupName=name)
            arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}:*"
            self._set(lid, Ref=name, Arn=arn)
        for lid, res in of_type(self.template, "AWS::IAM::Role").items():
            props = res["Properties"]
            name = self._name(lid, props, "RoleName")
            arn = iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(self.ev(props["AssumeRolePolicyDocument"])),
            )["Role"]["Arn"]
            self._set(lid, Ref=name, Arn=arn)

    def _buckets(self) -> None:
        s3 = self.client("s3")
        for lid, res in of_type(self.template, "AWS::S3::Bucket").items():
            props = res["Properties"]
            name = self._name(lid, props, "BucketName", 63).lower()
            s3.create_bucket(Bucket=name)
            self._set(lid, Ref=name, Arn=f"arn:aws:s3:::{name}", DomainName=f"{name}.s3")
            if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
            if "BucketEncryption" in props:
                rules = [  # CloudFormation's names of the API's members
                    {
                        "ApplyServerSideEncryptionByDefault": r["ServerSideEncryptionByDefault"],
                        **{k: v for k, v in r.items() if k == "BucketKeyEnabled"},
                    }
                    for r in self.ev(props["BucketEncryption"]["ServerSideEncryptionConfiguration"])
                    if "ServerSideEncryptionByDefault" in r
                ]
                s3.put_bucket_encryption(
                    Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules}
                )
            if "PublicAccessBlockConfiguration" in props:
                s3.put_public_access_block(
                    Bucket=name,
                    PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"],
                )

    def _tables(self) -> None:
        ddb = self.client("dynamodb")
        for lid, res in of_type(self.template, "AWS::DynamoDB::Table").items():
            props = res["Properties"]
            name = self._name(lid, props, "TableName", 255)
            kwargs: dict[str, Any] = {
                "TableName": name,
                "KeySchema": props["KeySchema"],
                "AttributeDefinitions": props["AttributeDefinitions"],
                "BillingMode": props.get("BillingMode", "PROVISIONED"),
            }
            if props.get("GlobalSecondaryIndexes"):
                kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
            if "ProvisionedThroughput" in props:
                kwargs["ProvisionedThroughput"] = props["ProvisionedThroughput"]
            table = ddb.create_table(**kwargs)["TableDescription"]
            if props.get("TimeToLiveSpecification"):
                ddb.update_time_to_live(
                    TableName=name, TimeToLiveSpecification=props["TimeToLiveSpecification"]
                )
            self._set(lid, Ref=name, Arn=table["TableArn"])

    def _queues(self) -> None:
        sqs = self.client("sqs")
        queues = of_type(self.template, "AWS::SQS::Queue")
        # dead-letter queues first: a RedrivePolicy names one
        for lid in sorted(queues, key=lambda q: "RedrivePolicy" in queues[q]["Properties"]):
            props = queues[lid]["Properties"]
            attrs = {
                k: str(self.ev(props[k]))
                for k in (
                    "VisibilityTimeout",
                    "MessageRetentionPeriod",
                    "DelaySeconds",
                    "MaximumMessageSize",
                    "ReceiveMessageWaitTimeSeconds",
                    "KmsMasterKeyId",
                )
                if k in props
            }
            if "RedrivePolicy" in props:
                attrs["RedrivePolicy"] = json.dumps(self.ev(props["RedrivePolicy"]))
            name = self._name(lid, props, "QueueName", 80)
            url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            self._set(lid, Ref=url, Arn=arn, QueueUrl=url, QueueName=name)

    def _secrets(self) -> None:
        sm = self.client("secretsmanager")
        for lid, res in of_type(self.template, "AWS::SecretsManager::Secret").items():
            props = res["Properties"]
            name = self._name(lid, props, "Name", 512)
            if "SecretString" in props:
                value = str(self.ev(props["SecretString"]))
            else:
                value = self._generated_secret(sm, props.get("GenerateSecretString", {}))
            arn = sm.create_secret(
                Name=name, SecretString=value, Description=str(props.get("Description", ""))
            )["ARN"]
            self._set(lid, Ref=arn, Id=arn)
            self.secret_arn = self.secret_arn or arn

    @staticmethod
    def _generated_secret(sm: Any, spec: dict[str, Any]) -> str:
        """What Secrets Manager stores for ``GenerateSecretString`` (``{}``: a password)."""
        options = {
            k: spec[k]
            for k in (
                "PasswordLength",
                "ExcludeCharacters",
                "ExcludeNumbers",
                "ExcludePunctuation",
                "ExcludeUppercase",
                "ExcludeLowercase",
                "IncludeSpace",
                "RequireEachIncludedType",
            )
            if k in spec
        }
        password = sm.get_random_password(**options)["RandomPassword"]
        if "SecretStringTemplate" in spec and "GenerateStringKey" in spec:
            body = json.loads(spec["SecretStringTemplate"])
            body[spec["GenerateStringKey"]] = password
            return json.dumps(body)
        return str(password)

    def _functions(self) -> None:
        lam = self.client("lambda")
        resources = of_type(self.template, "AWS::Lambda::Function")
        for lid, res in resources.items():
            props = res["Properties"]
            variables = props.get("Environment", {}).get("Variables", {})
            handler_name = variables.get("QLAYER_FUNCTION")
            if not isinstance(handler_name, str):
                continue  # the CDK's own custom-resource handler: deployment-time only
            name = self._name(lid, props, "FunctionName")
            arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
            self._set(lid, Ref=name, Arn=arn)
            self.functions[handler_name] = FunctionRecord(handler_name, lid, name, arn, props, {})
        for record in self.functions.values():
            props = record.properties
            record.environment = {
                k: str(v) for k, v in self.ev(props["Environment"]["Variables"]).items()
            }
            kwargs: dict[str, Any] = {
                "FunctionName": record.name,
                "Role": self.ev(props["Role"]),
                "Environment": {"Variables": record.environment},
                "Timeout": int(props.get("Timeout", 3)),
                "MemorySize": int(props.get("MemorySize", 128)),
                "Description": str(props.get("Description", "")),
                "Architectures": props.get("Architectures", ["x86_64"]),
            }
            if "TracingConfig" in props:
                kwargs["TracingConfig"] = props["TracingConfig"]
            if "ImageUri" in props["Code"]:
                kwargs["PackageType"] = "Image"
                kwargs["Code"] = {"ImageUri": self.ev(props["Code"]["ImageUri"])}
                kwargs["ImageConfig"] = props.get("ImageConfig", {})
            else:
                kwargs["Runtime"] = props["Runtime"]
                kwargs["Handler"] = props["Handler"]
                kwargs["Code"] = {"ZipFile": _zip(self.code_dir(record))}
            lam.create_function(**kwargs)
        for lid, res in of_type(self.template, "AWS::Lambda::Permission").items():
            props = self.ev(res["Properties"])
            if props["FunctionName"] not in {f.arn for f in self.functions.values()}:
                continue
            extra = {k: props[k] for k in ("SourceArn", "SourceAccount") if k in props}
            lam.add_permission(
                FunctionName=props["FunctionName"],
                StatementId=lid[:100],
                Action=props["Action"],
                Principal=props["Principal"],
                **extra,
            )

    def code_dir(self, record: FunctionRecord) -> Path:
        """The staged asset of a zip function: what its zip holds."""
        key = str(record.properties["Code"].get("S3Key", ""))
        found = self.synthesis.file_asset(key.removesuffix(".zip"))
        if found is None:
            raise FileNotFoundError(f"no staged asset for {record.name} ({key})")
        return found

    def layer_dirs(self, record: FunctionRecord) -> list[Path]:
        """The staged layers of a zip function, in order (each extracted under /opt)."""
        out = []
        for ref in record.properties.get("Layers", []):
            lid = ref.get("Ref") if isinstance(ref, dict) else None
            res = self.template["Resources"].get(lid or "", {})
            key = str(res.get("Properties", {}).get("Content", {}).get("S3Key", ""))
            found = self.synthesis.file_asset(key.removesuffix(".zip"))
            if found is None:
                raise FileNotFoundError(f"no staged layer for {record.name} ({ref})")
            out.append(found)
        return out

    def _batch(self) -> None:
        import botocore.session

        batch = self.client("batch")
        model = botocore.session.get_session().get_service_model("batch")
        role = next(iter(v for (k, a), v in self.values.items() if a == "Arn" and ":role/" in v))
        for lid in of_type(self.template, "AWS::Batch::ComputeEnvironment"):
            arn = batch.create_compute_environment(
                computeEnvironmentName=f"{self.stack_name}-{lid}"[:128],
                type="UNMANAGED",
                state="ENABLED",
                serviceRole=role,
            )["computeEnvironmentArn"]
            self._set(lid, Ref=arn, ComputeEnvironmentArn=arn)
        for lid, res in of_type(self.template, "AWS::Batch::JobQueue").items():
            props = self.ev(res["Properties"])
            name = props.get("JobQueueName") or f"{self.stack_name}-{lid}"[:128]
            arn = batch.create_job_queue(
                jobQueueName=name,
                state=props.get("State", "ENABLED"),
                priority=int(props.get("Priority", 1)),
                computeEnvironmentOrder=rename_to_shape(
                    props["ComputeEnvironmentOrder"],
                    model.operation_model("CreateJobQueue").input_shape.members[
                        "computeEnvironmentOrder"
                    ],
                ),
            )["jobQueueArn"]
            self._set(lid, Ref=arn, JobQueueArn=arn, JobQueueName=name)
        shape = model.operation_model("RegisterJobDefinition").input_shape
        for lid, res in of_type(self.template, "AWS::Batch::JobDefinition").items():
            props = self.ev(res["Properties"])
            props.setdefault("JobDefinitionName", f"{self.stack_name}-{lid}"[:128])
            props["Type"] = str(props.get("Type", "container")).lower()
            kwargs = rename_to_shape(props, shape)
            kwargs.pop("propagateTags", None)
            arn = batch.register_job_definition(**kwargs)["jobDefinitionArn"]
            self._set(lid, Ref=arn, JobDefinitionArn=arn)

    def _event_source_mappings(self) -> None:
        lam = self.client("lambda")
        keys = (
            "BatchSize",
            "MaximumBatchingWindowInSeconds",
            "FunctionResponseTypes",
            "Enabled",
            "ScalingConfig",
        )
        for res in of_type(self.template, "AWS::Lambda::EventSourceMapping").values():
            props = self.ev(res["Properties"])
            lam.create_event_source_mapping(
                EventSourceArn=props["EventSourceArn"],
                FunctionName=props["FunctionName"],
                **{k: props[k] for k in keys if k in props},
            )

    def _create_machine(self, template: dict[str, Any], lid: str, resolve: Any) -> dict[str, Any]:
        infra_on_path()
        from qlayer_infra.extract import state_machine_definition

        props = template["Resources"][lid]["Properties"]
        definition = state_machine_definition(
            template, resolve, logical_id=lid, pseudo=self._pseudo()
        )
        name = str(self.ev(props["StateMachineName"]))
        created = self.client("stepfunctions").create_state_machine(
            name=name,
            definition=json.dumps(definition),
            roleArn=self.ev(props["RoleArn"]),
            type=props.get("StateMachineType", "STANDARD"),
        )["stateMachineArn"]
        expected = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}"
        if created != expected:
            raise RuntimeError(f"moto named the state machine {created}, not {expected}")
        return definition  # type: ignore[no-any-return]

    def add_machine(self, template: dict[str, Any]) -> str:
        """Create the state machine of another synthesis of the stack (other props) over
        this deployment's resources (same logical ids, so the same resolution)."""
        ((lid, res),) = of_type(template, "AWS::StepFunctions::StateMachine").items()
        name = str(self.ev(res["Properties"]["StateMachineName"]))
        arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}"

        def resolve(ref: str, attr: str) -> str:
            return arn if ref == lid and attr in ("Ref", "Arn") else self.resolve(ref, attr)

        self.extra_definitions[arn] = self._create_machine(template, lid, resolve)
        return arn

    def _rules(self) -> None:
        events = self.client("events")
        for lid, res in of_type(self.template, "AWS::Events::Rule").items():
            props = self.ev(res["Properties"])
            name = props.get("Name") or f"{self.stack_name}-{lid}"[:64]
            kwargs: dict[str, Any] = {
                "Name": name,
                "State": props.get("State", "ENABLED"),
                "Description": props.get("Description", ""),
            }
            if "ScheduleExpression" in props:
                kwargs["ScheduleExpression"] = props["ScheduleExpression"]
            if "EventPattern" in props:
                kwargs["EventPattern"] = json.dumps(props["EventPattern"])
            arn = events.put_rule(**kwargs)["RuleArn"]
            self._set(lid, Ref=name, Arn=arn)
            events.put_targets(Rule=name, Targets=props.get("Targets", []))

    def _notifications(self) -> None:
        s3 = self.client("s3")
        for res in of_type(self.template, "Custom::S3BucketNotifications").values():
            props = self.ev({k: v for k, v in res["Properties"].items() if k != "ServiceToken"})
            s3.put_bucket_notification_configuration(
                Bucket=props["BucketName"],
                NotificationConfiguration=props["NotificationConfiguration"],
            )

    def _apis(self) -> None:
        """Each REST API: created in moto, its stage and proxy function found, its front
        started (by :attr:`api_front`)."""
        apigateway = self.client("apigateway")
        stages = of_type(self.template, "AWS::ApiGateway::Stage")
        methods = of_type(self.template, "AWS::ApiGateway::Method")
        for lid, res in of_type(self.template, "AWS::ApiGateway::RestApi").items():
            props = self.ev(res["Properties"])
            types = tuple(props.get("BinaryMediaTypes") or ())
            created = apigateway.create_rest_api(
                name=props.get("Name", lid),
                description=props.get("Description", ""),
                binaryMediaTypes=list(types),
                endpointConfiguration={
                    "types": props.get("EndpointConfiguration", {}).get("Types", ["EDGE"])
                },
            )
            stage_lid, stage = next(
                (k, str(self.ev(s["Properties"]["StageName"])))
                for k, s in stages.items()
                if s["Properties"].get("RestApiId") == {"Ref": lid}
            )
            self._set(stage_lid, Ref=stage)
            functions = {
                _function_of(m["Properties"].get("Integration", {}))
                for m in methods.values()
                if m["Properties"].get("RestApiId") == {"Ref": lid}
                and m["Properties"].get("Integration", {}).get("Type") == "AWS_PROXY"
            } - {None}
            if len(functions) != 1:
                raise RuntimeError(f"REST API {lid}: one Lambda proxy function, not {functions}")
            api = RestApi(lid, created["id"], stage, str(functions.pop()), types)
            self._set(lid, Ref=api.api_id, RootResourceId=created["rootResourceId"])
            self.apis[lid] = api
            if self.api_front is not None:
                self.api_origins[api.origin] = self.api_front(api)

    def _served_at(self, value: str) -> str:
        """An output naming a REST API's execute-api origin names its loopback front."""
        for origin, served in self.api_origins.items():
            if value == origin or value.startswith(origin + "/"):
                return served + value[len(origin) :]
        return value

    def function_named(self, logical_id: str) -> str:
        """The deployed name of the function with this logical id."""
        found = [f.name for f in self.functions.values() if f.logical_id == logical_id]
        if not found:
            raise KeyError(f"no qlayer function {logical_id}")
        return found[0]

    def _output_stack(self) -> None:
        """A CloudFormation stack of the stack's name holding only the resolved outputs."""
        warnings.filterwarnings(
            "ignore", message="Tried to parse AWS::CloudFormation::WaitConditionHandle"
        )
        body = {
            "Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
            "Outputs": {k: {"Value": v} for k, v in self.outputs.items()},
        }
        self.client("cloudformation").create_stack(
            StackName=self.stack_name, TemplateBody=json.dumps(body)
        )

    # -- reading back ------------------------------------------------------------------
    def queue_url(self, lid_prefix: str) -> str:
        for (lid, attr), value in self.values.items():
            if attr == "QueueUrl" and lid.startswith(lid_prefix):
                return value
        raise KeyError(lid_prefix)


def _function_of(integration: dict[str, Any]) -> str | None:
    """The logical id of the function a Lambda proxy integration's URI invokes."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            attr = value.get("Fn::GetAtt")
            if isinstance(attr, list) and len(attr) == 2 and attr[1] == "Arn":
                found.append(str(attr[0]))
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(integration.get("Uri"))
    return found[0] if found else None


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()
