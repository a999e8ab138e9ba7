"""Function environments: each function and Batch container gets exactly its row of
qlayer.aws.config.FUNCTION_ENV, with the values of this stack."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Template
from qlayer_infra.compute import IMAGE_FUNCTIONS, LIGHT_FUNCTIONS
from qlayer_infra.extract import dummy_resolver, functions_by_name, resolve_intrinsics
from qlayer_infra.stack import QlayerStack

from qlayer.aws.config import FUNCTION_ENV, OPTIONAL_ENV
from qlayer.planner import Resources

from .conftest import make_app, resources_of

PLUGINS = "myqpu=my_company.qlayer_plugin:MyQpu,other=/opt/plugins/other.py:make"
LIMITS = {"ibm": {"max_in_flight": 3, "submits_per_s": 0.08}, "myqpu": {"max_in_flight": 1}}
#: Where QLAYER_PROVIDERS / QLAYER_RATE_LIMITS go: everything that resolves backend names.
PROVIDER_FUNCTIONS = {"stage_runner", "simulator", "dispatcher", "poller"}


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = make_app(tmp_path_factory.mktemp("configured"))
    stack = QlayerStack(app, "QlayerPlugins", provider_plugins=PLUGINS, rate_limits=LIMITS)
    return Template.from_stack(stack).to_json()


def _function_env(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    resources = template["Resources"]
    return {
        name: resources[lid]["Properties"]["Environment"]["Variables"]
        for name, lid in functions_by_name(template).items()
    }


def _job_definition_env(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {e["Name"]: e["Value"] for e in jd["Properties"]["ContainerProperties"]["Environment"]}
        for jd in resources_of(template, "AWS::Batch::JobDefinition").values()
    ]


def test_provider_plugins_and_limits_reach_the_functions_that_resolve_backends(
    configured: dict[str, Any],
) -> None:
    for name, env in _function_env(configured).items():
        if name in PROVIDER_FUNCTIONS:
            assert env["QLAYER_PROVIDERS"] == PLUGINS, name
            assert json.loads(env["QLAYER_RATE_LIMITS"]) == LIMITS, name
        else:
            assert "QLAYER_PROVIDERS" not in env and "QLAYER_RATE_LIMITS" not in env, name
    for env in _job_definition_env(configured):
        if env["QLAYER_FUNCTION"] == "env_build":  # installs packages, resolves no backend
            assert "QLAYER_PROVIDERS" not in env and "QLAYER_RATE_LIMITS" not in env
            continue
        assert env["QLAYER_PROVIDERS"] == PLUGINS
        assert json.loads(env["QLAYER_RATE_LIMITS"]) == LIMITS


def test_no_plugins_no_variables(template_json: dict[str, Any]) -> None:
    for name, env in _function_env(template_json).items():
        assert "QLAYER_PROVIDERS" not in env and "QLAYER_RATE_LIMITS" not in env, name
    for env in _job_definition_env(template_json):
        assert "QLAYER_PROVIDERS" not in env and "QLAYER_RATE_LIMITS" not in env


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"provider_plugins": "my_company.plugin"}, "provider_plugins"),
        ({"provider_plugins": "a=x:y,,b=z:w"}, "provider_plugins"),
        ({"provider_plugins": "Bad Prefix=x:y"}, "provider_plugins"),
        ({"rate_limits": {"ibm": {"max_in_flight": -1}}}, "positive"),
        ({"rate_limits": {"ibm": {"max_in_flight": "3"}}}, "positive"),
        ({"rate_limits": {"ibm": 3}}, "rate_limits"),
    ],
)
def test_bad_provider_settings_are_refused(tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        QlayerStack(make_app(tmp_path), "Bad", **kwargs)


def test_the_table_names_every_handler_and_batch() -> None:
    assert set(FUNCTION_ENV) == {*LIGHT_FUNCTIONS, *IMAGE_FUNCTIONS, "batch", "env_build"}


def test_every_function_gets_exactly_its_row(template_json: dict[str, Any]) -> None:
    """No QLAYER_ENV/QLAYER_SUBSTRATE nobody reads, no missing secret ARN in Batch (issue 7)."""
    envs = _function_env(template_json)
    assert set(envs) == {*LIGHT_FUNCTIONS, *IMAGE_FUNCTIONS}
    for name, env in envs.items():
        assert set(env) == FUNCTION_ENV[name] - OPTIONAL_ENV, name
    job_envs = _job_definition_env(template_json)
    assert len(job_envs) == 3
    rows = sorted(FUNCTION_ENV[e["QLAYER_FUNCTION"]] - OPTIONAL_ENV == set(e) for e in job_envs)
    assert rows == [True, True, True]
    assert sorted(e["QLAYER_FUNCTION"] for e in job_envs) == ["batch", "batch", "env_build"]


def test_the_environment_build_gets_the_bucket_and_nothing_else(
    template_json: dict[str, Any],
) -> None:
    """The build runs a package installer: no table, no secret, no queue names."""
    (env,) = [e for e in _job_definition_env(template_json) if e["QLAYER_FUNCTION"] == "env_build"]
    assert {k for k in env if k.startswith("QLAYER_")} == {"QLAYER_BUCKET", "QLAYER_FUNCTION"}


def test_configured_functions_get_their_whole_row(configured: dict[str, Any]) -> None:
    for name, env in _function_env(configured).items():
        assert set(env) == FUNCTION_ENV[name], name
    for env in _job_definition_env(configured):
        assert set(env) == FUNCTION_ENV[env["QLAYER_FUNCTION"]]


def test_the_values_name_this_stack(template_json: dict[str, Any], stack) -> None:
    def resolved(value: Any) -> Any:
        return resolve_intrinsics(value, dummy_resolver(template_json))

    expected = {
        "QLAYER_BUCKET": stack.storage.bucket.bucket_name,
        "QLAYER_JOBS_TABLE": stack.storage.jobs.table_name,
        "QLAYER_TASKS_TABLE": stack.storage.tasks.table_name,
        "QLAYER_DISPATCH_QUEUE_URL": stack.dispatch.queue.queue_url,
        "QLAYER_PROVIDERS_SECRET_ARN": stack.ops.providers_secret.secret_arn,
        "QLAYER_BRAKET_BUCKET": stack.storage.braket_results.bucket_name,
        "QLAYER_STATE_MACHINE_ARN": stack.workflow.state_machine.state_machine_arn,
    }
    machine = stack.resolve(stack.workflow.state_machine.node.default_child.logical_id)
    machine_name = template_json["Resources"][machine]["Properties"]["StateMachineName"]
    for name, env in [
        *_function_env(template_json).items(),
        *((e["QLAYER_FUNCTION"], e) for e in _job_definition_env(template_json)),
    ]:
        for var, value in env.items():
            if var == "QLAYER_STATE_MACHINE_ARN":  # built from the fixed name, not a Ref
                assert resolved(value).endswith(f":stateMachine:{machine_name}"), name
            elif var in expected:
                assert value == stack.resolve(expected[var]), (name, var)
        assert env["QLAYER_FUNCTION"] == name
        assert env["POWERTOOLS_SERVICE_NAME"] == f"qlayer-{name}"
        assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
        if "QLAYER_RESOURCES" in env:
            assert Resources.from_json(env["QLAYER_RESOURCES"]) == stack.compute.resources
