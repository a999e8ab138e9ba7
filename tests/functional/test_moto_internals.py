"""The moto internals that moto_patches.py replaces still exist (fails loudly if moto moved them).

No AWS calls: imports and attribute checks only (moto 5.x, pinned moto==5.2.5).
"""

from __future__ import annotations

import importlib
import inspect

import pytest
from moto_patches import PATCHED, _rename


@pytest.mark.parametrize(("module", "cls", "attr"), PATCHED)
def test_patched_attribute_exists(module, cls, attr):
    owner = getattr(importlib.import_module(module), cls)
    assert callable(getattr(owner, attr)), (
        f"moto moved {module}.{cls}.{attr}: update moto_patches.py"
    )


def test_signatures_are_what_the_patches_expect():
    from moto.awslambda.models import LambdaFunction

    assert list(inspect.signature(LambdaFunction.invoke).parameters)[:4] == [
        "self",
        "body",
        "request_headers",
        "response_headers",
    ]


def test_rename_follows_botocore_shapes():
    """SFN's PascalCase Batch parameters become botocore's member names."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("batch")
    shape = model.operation_model("SubmitJob").input_shape
    out = _rename(
        {
            "JobName": "j",
            "JobQueue": "q",
            "JobDefinition": "d",
            "ContainerOverrides": {"ResourceRequirements": [{"Type": "VCPU", "Value": "1"}]},
        },
        shape,
    )
    assert out == {
        "jobName": "j",
        "jobQueue": "q",
        "jobDefinition": "d",
        "containerOverrides": {"resourceRequirements": [{"type": "VCPU", "value": "1"}]},
    }


def test_signatures_of_the_cloud_box_patches():
    """The Lambda routing, the Batch runner and the response normaliser's expectations."""
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.batch.models import Job
    from moto.batch_simple.models import BatchSimpleBackend
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service as sts,
    )

    assert list(inspect.signature(LambdaSimpleBackend.invoke).parameters) == [
        "self",
        "function_name",
        "qualifier",
        "body",
        "headers",
        "response_headers",
    ]
    assert list(inspect.signature(BatchSimpleBackend._mark_job_as_finished).parameters) == [
        "self",
        "include_start_attempt",
        "job",
    ]
    assert list(inspect.signature(Job._add_parameters_to_command).parameters) == [
        "self",
        "command",
    ]
    assert list(inspect.signature(sts.StateTaskService._from_boto_response).parameters) == [
        "self",
        "response",
        "structure_shape",
    ]
    # the stubs the patches fill in are still stubs (if moto implements them, drop a patch)
    source = inspect.getsource(sts.StateTaskService._normalise_response)
    assert source.rstrip().endswith("pass"), "moto now normalises responses: drop the patch"
