"""Function environments: provider plugins and dispatch limits reach the right functions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Template
from qlayer_infra.extract import functions_by_name
from qlayer_infra.stack import QlayerStack

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
