"""Least privilege, read back from the synthesized policies (issue 7 item 10).

The roles that run user code (the stage-runner Lambda and the Batch job role) held
s3:DeleteObject* and PutObject on all of jobs/*, and Scan/PutItem/DeleteItem on the jobs
table (grant_read_write). Nothing in qlayer deletes.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest
from qlayer_infra import access
from qlayer_infra.extract import functions_by_name

from .conftest import resources_of

ALL = [*access.ACCESS]
USER_CODE = ["stage_runner", "batch"]
#: Who may see a built environment (envs/*): what runs stages, and what checks for one.
ENV_READERS = {"stage_runner", "batch", "loader", "read_outcome", "env_build"}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def statements(template_json: dict[str, Any], stack) -> dict[str, list[dict[str, Any]]]:
    """Every identity-policy statement of each function's role, and of the Batch job role."""
    roles = {
        name: template_json["Resources"][lid]["Properties"]["Role"]["Fn::GetAtt"][0]
        for name, lid in functions_by_name(template_json).items()
    }
    roles["batch"] = stack.resolve(stack.compute.batch_job_role.node.default_child.logical_id)
    roles["env_build"] = stack.resolve(stack.compute.env_build_role.node.default_child.logical_id)
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in roles}
    for policy in resources_of(template_json, "AWS::IAM::Policy").values():
        attached = {r["Ref"] for r in policy["Properties"]["Roles"]}
        for name, role in roles.items():
            if role in attached:
                found[name] += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def _grants(statements: list[dict[str, Any]], prefix: str) -> list[tuple[str, str]]:
    """(action, resource as JSON) pairs of the actions starting with ``prefix``."""
    return [
        (action, json.dumps(resource, sort_keys=True))
        for s in statements
        for action in _as_list(s["Action"])
        if action.startswith(prefix)
        for resource in _as_list(s["Resource"])
    ]


def _ref(stack, token: str) -> str:
    return json.dumps(stack.resolve(token), sort_keys=True)


def _is_user_file_delete(statement: dict[str, Any]) -> bool:
    """The gateway's one delete: s3:DeleteObject under serverless/files/ (a user's file)."""
    resources = [json.dumps(r, sort_keys=True) for r in _as_list(statement["Resource"])]
    return _as_list(statement["Action"]) == ["s3:DeleteObject"] and all(
        "/serverless/files/*" in r for r in resources
    )


@pytest.mark.parametrize("name", ALL)
def test_no_role_deletes_or_scans(statements, name: str) -> None:
    """No artifact or row is ever deleted (the dispatcher's SQS DeleteMessage is the event
    source consuming its messages)."""
    kept = (
        [s for s in statements[name] if not _is_user_file_delete(s)]
        if name == "gateway"
        else statements[name]
    )
    actions = {a for s in kept for a in _as_list(s["Action"])}
    data = [a for a in actions if a.startswith(("s3:", "dynamodb:"))]
    assert not [a for a in data if fnmatch.fnmatch(a.split(":")[1], "Delete*")], name
    assert not actions & {"dynamodb:Scan", "s3:*", "dynamodb:*", "s3:Abort*"}, name
    assert not [a for a in actions if a.startswith(("s3:", "dynamodb:")) and "*" in a], name


@pytest.mark.parametrize("name", USER_CODE)
def test_user_code_reads_programs_and_jobs_and_writes_only_jobs(statements, stack, name) -> None:
    bucket = stack.storage.bucket
    s3 = set(_grants(statements[name], "s3:"))
    assert s3 == {
        ("s3:GetObject", _ref(stack, bucket.arn_for_objects("programs/*"))),
        ("s3:GetObject", _ref(stack, bucket.arn_for_objects("jobs/*"))),
        ("s3:GetObject", _ref(stack, bucket.arn_for_objects("envs/*"))),
        ("s3:PutObject", _ref(stack, bucket.arn_for_objects("jobs/*"))),
        ("s3:PutObjectTagging", _ref(stack, bucket.arn_for_objects("jobs/*"))),
        ("s3:ListBucket", _ref(stack, bucket.bucket_arn)),
    }


@pytest.mark.parametrize("name", USER_CODE)
def test_user_code_gets_and_updates_job_rows_only(statements, stack, name) -> None:
    dynamo = set(_grants(statements[name], "dynamodb:"))
    table = _ref(stack, stack.storage.jobs.table_arn)
    assert dynamo == {
        ("dynamodb:GetItem", table),
        ("dynamodb:BatchGetItem", table),
        ("dynamodb:UpdateItem", table),
        ("dynamodb:ConditionCheckItem", table),
    }


@pytest.mark.parametrize("name", ALL)
def test_no_braket_or_batch_action_on_every_resource(statements, name: str) -> None:
    for action, resource in _grants(statements[name], "braket:") + _grants(
        statements[name], "batch:"
    ):
        if (name, action) == ("dispatcher", "braket:SearchQuantumTasks"):
            continue  # a List action without resource types: "*" is the only resource
        assert resource != '"*"', (name, action)


def test_only_the_dispatcher_searches_braket_tasks(statements) -> None:
    """find_job's fallback (tasks tagged with a key) runs where tasks are created."""
    for name in ALL:
        searches = [
            r for a, r in _grants(statements[name], "braket:") if a == "braket:SearchQuantumTasks"
        ]
        assert searches == (['"*"'] if name == "dispatcher" else []), name


@pytest.mark.parametrize("name", ALL)
def test_bucket_prefixes_follow_the_access_table(statements, stack, name: str) -> None:
    bucket = stack.storage.bucket
    declared = access.ACCESS[name]
    grants = set(_grants(statements[name], "s3:"))
    for prefix in ("inbox/", "programs/", "jobs/", "envs/", "serverless/"):
        objects = _ref(stack, bucket.arn_for_objects(f"{prefix}*"))
        assert (("s3:GetObject", objects) in grants) == (prefix in declared.reads), (name, prefix)
        assert (("s3:PutObject", objects) in grants) == (prefix in declared.writes), (name, prefix)


def test_the_environment_build_touches_envs_only(statements, stack) -> None:
    """It runs a package installer (code from the index): it reads locks and writes built
    environments under envs/, and may not read or write any job's data, row or secret."""
    bucket = stack.storage.bucket
    envs = _ref(stack, bucket.arn_for_objects("envs/*"))
    assert set(_grants(statements["env_build"], "")) == {
        ("s3:GetObject", envs),
        ("s3:PutObject", envs),
        ("s3:PutObjectTagging", envs),
        ("s3:ListBucket", _ref(stack, bucket.bucket_arn)),
    }


@pytest.mark.parametrize("name", ALL)
def test_only_what_runs_or_checks_stages_reads_environments_and_only_the_build_writes_them(
    statements, stack, name: str
) -> None:
    envs = _ref(stack, stack.storage.bucket.arn_for_objects("envs/*"))
    grants = set(_grants(statements[name], "s3:"))
    assert (("s3:GetObject", envs) in grants) == (name in ENV_READERS), name
    assert (("s3:PutObject", envs) in grants) == (name == "env_build"), name


@pytest.mark.parametrize("name", ALL)
def test_only_job_starters_create_rows(statements, stack, name: str) -> None:
    table = _ref(stack, stack.storage.jobs.table_arn)
    creates = ("dynamodb:PutItem", table) in set(_grants(statements[name], "dynamodb:"))
    assert creates == (name in {"trigger", "loader", "start_children", "gateway"}), name


def test_only_the_dispatcher_and_poller_touch_the_task_table(statements, stack) -> None:
    tasks = stack.storage.tasks.table_arn
    for name in ALL:
        on_tasks = {
            a
            for a, r in _grants(statements[name], "dynamodb:")
            if r.startswith(_ref(stack, tasks)[:-1]) or "QpuTasks" in r
        }
        if name in ("dispatcher", "poller"):
            assert on_tasks == set(access.TASK_ROWS), name
        else:
            assert not on_tasks, name
    index = _ref(stack, f"{tasks}/index/by_status")
    assert ("dynamodb:Query", index) in set(_grants(statements["poller"], "dynamodb:"))


def test_braket_tasks_are_created_by_the_dispatcher_on_devices_only(statements) -> None:
    for name in ALL:
        grants = _grants(statements[name], "braket:")
        creates = [r for a, r in grants if a == "braket:CreateQuantumTask"]
        if name != "dispatcher":
            assert not creates, name
            continue
        assert creates and all(":device/" in r for r in creates)
        tasks = [r for a, r in grants if a in ("braket:GetQuantumTask", "braket:CancelQuantumTask")]
        assert tasks and all(":quantum-task/*" in r for r in tasks)


def test_fail_job_may_stop_only_job_executions(statements) -> None:
    grants = _grants(statements["fail_job"], "states:")
    assert grants and {a for a, _ in grants} == {"states:StopExecution"}
    assert all(":execution:qlayer-dev-jobs:*" in r for _, r in grants)


def test_braket_regions_extend_devices_and_tasks_and_stay_nag_clean(tmp_path) -> None:
    """Each Braket QPU lives in one region (the provider calls the device's region): a stack
    may name more regions; without them only the stack's region (and the region-less
    on-demand simulators) is allowed."""
    from aws_cdk.assertions import Template
    from cdk_nag import AwsSolutionsChecks
    from qlayer_infra.stack import QlayerStack

    from .conftest import make_app

    stack = QlayerStack(make_app(tmp_path), "Regions", braket_regions=["us-west-1", "eu-north-1"])
    raw = json.dumps(Template.from_stack(stack).to_json())
    for region in ("us-west-1", "eu-north-1"):
        assert f":braket:{region}::device/*" in raw
        assert f":braket:{region}:" in raw and "quantum-task/*" in raw
    report = AwsSolutionsChecks().validate_scope(stack)
    assert report.success, [v.rule_name for v in report.violations]
    with pytest.raises(ValueError, match="braket_regions"):
        QlayerStack(make_app(tmp_path / "b"), "Bad", braket_regions="us-west-1")


def test_without_braket_regions_only_the_stack_region(statements) -> None:
    from qlayer_infra.extract import DEFAULT_PSEUDO, resolve_intrinsics

    arns = {
        resolve_intrinsics(json.loads(r), lambda lid, attr: lid)
        for name in ALL
        for a, r in _grants(statements[name], "braket:")
        if a != "braket:SearchQuantumTasks"
    }
    assert {arn.split(":")[3] for arn in arns} == {DEFAULT_PSEUDO["AWS::Region"], ""}
    assert {arn for arn in arns if arn.split(":")[3] == ""} == {
        "arn:aws:braket:::device/quantum-simulator/*"
    }
