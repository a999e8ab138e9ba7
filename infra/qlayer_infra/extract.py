"""Read the job state machine's definition (ASL) out of a synthesized CloudFormation template.

The template holds the definition as ``DefinitionString``: a plain string, or a
``Fn::Join`` of strings and intrinsics (``Ref``, ``Fn::GetAtt``, pseudo
parameters) where Lambda ARNs, queue URLs and Batch queues go. This module turns
it into real JSON, asking a caller-provided ``resolve(logical_id, attr)`` for each
resource reference, so that the definition can run elsewhere (moto's Step
Functions, asl-validator) against resources the caller made.

No aws-cdk-lib import: usable from any test harness. Example::

    import json
    from qlayer_infra.extract import functions_by_name, state_machine_definition

    template = json.load(open("infra/cdk.out/Qlayer.template.json"))
    fn_ids = functions_by_name(template)          # {"loader": "ComputeLoader6ED79955", ...}
    arn_of = {fn_ids[name]: arn for name, arn in my_moto_functions.items()}
    asl = state_machine_definition(template, lambda lid, attr: arn_of.get(lid) or dummy(lid, attr))
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

#: resolve(logical_id, attr) -> the value; attr is "Ref" for {"Ref": id}, else the GetAtt name.
Resolver = Callable[[str, str], str]

DEFAULT_PSEUDO: dict[str, str] = {
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "Qlayer",
    "AWS::StackId": (
        "arn:aws:cloudformation:us-east-1:123456789012:stack/Qlayer/"
        "00000000-0000-0000-0000-000000000000"
    ),
    "AWS::NoValue": "",
}

STATE_MACHINE_TYPE = "AWS::StepFunctions::StateMachine"
_SUB_VAR = re.compile(r"\$\{([^}!][^}]*)\}")


class ExtractError(ValueError):
    """No (or no single) state machine, or an intrinsic this module cannot resolve."""


def find_state_machines(template: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """All ``AWS::StepFunctions::StateMachine`` resources, by logical id."""
    return {
        lid: res
        for lid, res in template.get("Resources", {}).items()
        if res.get("Type") == STATE_MACHINE_TYPE
    }


def functions_by_name(template: Mapping[str, Any]) -> dict[str, str]:
    """Handler name (``loader``, ``stage_runner``, ...) -> the logical id of its Lambda function.

    Read from each function's ``QLAYER_FUNCTION`` environment variable.
    """
    out: dict[str, str] = {}
    for lid, res in template.get("Resources", {}).items():
        if res.get("Type") != "AWS::Lambda::Function":
            continue
        env = res.get("Properties", {}).get("Environment", {}).get("Variables", {})
        name = env.get("QLAYER_FUNCTION")
        if isinstance(name, str):
            out[name] = lid
    return out


def dummy_resolver(
    template: Mapping[str, Any], pseudo: Mapping[str, str] | None = None
) -> Resolver:
    """A resolver that invents plausible names and ARNs from each resource's type and logical id."""
    p = {**DEFAULT_PSEUDO, **(pseudo or {})}
    part, region, account = p["AWS::Partition"], p["AWS::Region"], p["AWS::AccountId"]
    resources = template.get("Resources", {})

    def resolve(lid: str, attr: str) -> str:
        rtype = resources.get(lid, {}).get("Type", "")
        name = lid.lower() if rtype == "AWS::S3::Bucket" else lid
        arns = {
            "AWS::Lambda::Function": f"arn:{part}:lambda:{region}:{account}:function:{lid}",
            "AWS::SQS::Queue": f"arn:{part}:sqs:{region}:{account}:{lid}",
            "AWS::Batch::JobQueue": f"arn:{part}:batch:{region}:{account}:job-queue/{lid}",
            "AWS::Batch::JobDefinition": (
                f"arn:{part}:batch:{region}:{account}:job-definition/{lid}:1"
            ),
            "AWS::S3::Bucket": f"arn:{part}:s3:::{name}",
            "AWS::DynamoDB::Table": f"arn:{part}:dynamodb:{region}:{account}:table/{lid}",
            "AWS::StepFunctions::StateMachine": (
                f"arn:{part}:states:{region}:{account}:stateMachine:{lid}"
            ),
            "AWS::SNS::Topic": f"arn:{part}:sns:{region}:{account}:{lid}",
            "AWS::IAM::Role": f"arn:{part}:iam::{account}:role/{lid}",
        }
        arn = arns.get(rtype, f"arn:{part}:{_service(rtype)}:{region}:{account}:{lid}")
        if attr == "Ref":
            if rtype == "AWS::SQS::Queue":
                return f"https://sqs.{region}.{p['AWS::URLSuffix']}/{account}/{lid}"
            if rtype in {
                "AWS::Batch::JobQueue",
                "AWS::Batch::JobDefinition",
                "AWS::SNS::Topic",
                "AWS::StepFunctions::StateMachine",
            }:
                return arn  # Ref of these is their ARN
            return name
        if attr in {"Arn", "QueueArn", "JobQueueArn", "JobDefinitionArn", "TopicArn"}:
            return arn
        if attr == "QueueUrl":
            return f"https://sqs.{region}.{p['AWS::URLSuffix']}/{account}/{lid}"
        if attr in {"Name", "QueueName", "TopicName"}:
            return name
        return f"{lid}.{attr}"

    return resolve


def resolve_intrinsics(
    value: Any, resolve: Resolver, pseudo: Mapping[str, str] | None = None
) -> Any:
    """Evaluate CloudFormation intrinsics in ``value`` (Ref, GetAtt, Join, Sub, Select, Split)."""
    p = {**DEFAULT_PSEUDO, **(pseudo or {})}

    def ev(v: Any) -> Any:
        if isinstance(v, list):
            return [ev(x) for x in v]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            ((fn, arg),) = v.items()
            if fn == "Ref":
                return p[arg] if arg in p else resolve(arg, "Ref")
            if fn == "Fn::GetAtt":
                lid, attr = arg.split(".", 1) if isinstance(arg, str) else (arg[0], ev(arg[1]))
                return resolve(lid, attr)
            if fn == "Fn::Join":
                sep, parts = arg
                return ev(sep).join(str(ev(x)) for x in ev(parts))
            if fn == "Fn::Select":
                index, items = arg
                return ev(items)[int(ev(index))]
            if fn == "Fn::Split":
                sep, text = arg
                return ev(text).split(ev(sep))
            if fn == "Fn::Sub":
                text, local = (arg, {}) if isinstance(arg, str) else (arg[0], ev(arg[1]))
                return _sub(text, local, resolve, p)
            if fn.startswith("Fn::") or fn == "Condition":
                raise ExtractError(f"cannot resolve intrinsic {fn} in the definition")
        return {k: ev(x) for k, x in v.items()}

    return ev(value)


def state_machine_definition(
    template: Mapping[str, Any],
    resolve: Resolver | None = None,
    *,
    logical_id: str | None = None,
    pseudo: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ASL definition of the template's state machine, as real JSON.

    Args:
        template: A synthesized CloudFormation template (parsed JSON).
        resolve: ``resolve(logical_id, attr) -> str`` for every resource reference in the
            definition; ``attr`` is ``"Ref"`` for ``{"Ref": id}`` and the attribute name for
            ``Fn::GetAtt`` (``"Arn"``, ``"JobQueueArn"``, ...). Default: :func:`dummy_resolver`.
        logical_id: Which state machine, when the template has more than one.
        pseudo: Values of pseudo parameters (``AWS::Region``, ``AWS::AccountId``, ...),
            over :data:`DEFAULT_PSEUDO`.

    Raises:
        ExtractError: No such state machine, or a definition this module cannot resolve.
    """
    machines = find_state_machines(template)
    if logical_id is None:
        if len(machines) != 1:
            raise ExtractError(
                f"the template has {len(machines)} state machines "
                f"({', '.join(machines) or 'none'}); "
                "pass logical_id="
            )
        logical_id = next(iter(machines))
    if logical_id not in machines:
        raise ExtractError(
            f"no state machine {logical_id!r}; the template has: {', '.join(machines)}"
        )
    props = machines[logical_id].get("Properties", {})
    resolve = resolve or dummy_resolver(template, pseudo)

    if "Definition" in props:
        definition = resolve_intrinsics(props["Definition"], resolve, pseudo)
    elif "DefinitionString" in props:
        text = resolve_intrinsics(props["DefinitionString"], resolve, pseudo)
        subs = resolve_intrinsics(props.get("DefinitionSubstitutions", {}), resolve, pseudo)
        for key, val in subs.items():
            text = text.replace("${" + key + "}", str(val))
        definition = json.loads(text)
    else:
        raise ExtractError(
            f"state machine {logical_id!r} has no inline definition (DefinitionS3Location?)"
        )
    return definition


def all_states(definition: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every state by name, including those inside Map/Parallel states."""
    found: dict[str, Mapping[str, Any]] = {}

    def walk(states: Mapping[str, Any]) -> None:
        for name, state in states.items():
            found[name] = state
            for key in ("ItemProcessor", "Iterator"):
                if key in state:
                    walk(state[key]["States"])
            for branch in state.get("Branches", []):
                walk(branch["States"])

    walk(definition["States"])
    return found


def _sub(text: str, local: Mapping[str, Any], resolve: Resolver, pseudo: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in local:
            return str(local[name])
        if name in pseudo:
            return pseudo[name]
        lid, _, attr = name.partition(".")
        return resolve(lid, attr or "Ref")

    return _SUB_VAR.sub(one, text)


def _service(resource_type: str) -> str:
    parts = resource_type.split("::")
    return parts[1].lower() if len(parts) > 1 else "unknown"
