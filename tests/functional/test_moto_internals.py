"""The moto internals qlayer/cloudbox/patches.py replaces or calls still exist, with the
signatures the patches expect (fails loudly if a moto upgrade moved them).

No AWS calls: imports and attribute checks only (moto 5.x, pinned moto[server]==5.2.5).
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from qlayer.cloudbox.patches import PATCHED, rename_to_shape, substitute


def _params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


@pytest.mark.parametrize(("module", "cls", "attr"), PATCHED)
def test_patched_attribute_exists(module: str, cls: str, attr: str) -> None:
    owner = importlib.import_module(module)
    if cls:
        owner = getattr(owner, cls)
    assert hasattr(owner, attr), f"moto moved {module}.{cls}.{attr}: update patches.py"


def test_lambda_signatures() -> None:
    from moto.awslambda.models import LambdaBackend, LambdaFunction
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.s3 import notifications

    assert _params(LambdaFunction.invoke) == ["self", "body", "request_headers", "response_headers"]
    simple = ["self", "function_name", "qualifier", "body", "headers", "response_headers"]
    assert _params(LambdaSimpleBackend.invoke) == simple
    assert _params(LambdaBackend.invoke) == simple
    assert _params(LambdaBackend.create_event_source_mapping) == ["self", "spec"]
    assert _params(notifications._invoke_awslambda) == [
        "account_id",
        "event_body",
        "fn_arn",
        "region_name",
    ]
    # the simple backend still only echoes: without the patch no function code runs
    assert "Simple Lambda happy path OK" in inspect.getsource(LambdaSimpleBackend.invoke)


def test_sqs_queues_still_trigger_their_mappings_inline() -> None:
    """What the event source mapping patch detaches: moto's synchronous delivery on send."""
    from moto.sqs.models import Queue

    assert "lambda_event_source_mappings" in inspect.getsource(Queue.__init__)
    assert "lambda_event_source_mappings" in inspect.getsource(Queue.add_message)


def test_batch_signatures_and_job_fields() -> None:
    from moto.batch.models import Job
    from moto.batch_simple.models import BatchSimpleBackend

    assert _params(BatchSimpleBackend._mark_job_as_finished) == [
        "self",
        "include_start_attempt",
        "job",
    ]
    assert _params(Job._mark_stopped) == ["self", "success"]
    source = inspect.getsource(Job.__init__)
    for name in (
        "self.container_overrides",
        "self.parameters",
        "self.timeout",
        "self.exit_code",
        "self.job_stopped_reason",
        "self.stop",
        "self._stream_name",
    ):
        assert name in source, f"moto's batch Job has no {name}: update MotoBatchJob"
    # submit_job still marks the job finished in-line (the patch hands it to the runner)
    assert "_mark_job_as_finished" in inspect.getsource(BatchSimpleBackend.submit_job)


def test_step_functions_stubs_are_still_stubs() -> None:
    """If moto implements the normalisation itself, the patches must go."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service as sts,
    )

    assert _params(sts.StateTaskService._from_boto_response) == [
        "self",
        "response",
        "structure_shape",
    ]
    for name in ("_normalise_parameters", "_normalise_response"):
        source = inspect.getsource(getattr(sts.StateTaskService, name))
        assert source.rstrip().endswith("pass"), f"moto now implements {name}: drop the patch"


def test_rename_follows_botocore_shapes() -> None:
    """SFN's PascalCase Batch parameters become botocore's member names."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("batch")
    shape = model.operation_model("SubmitJob").input_shape
    out = rename_to_shape(
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


def test_batch_parameter_substitution() -> None:
    command = ["python", "-m", "x", "--job-id", "Ref::job_id", "--seq", "Ref::seq"]
    assert substitute(command, {"job_id": "j1", "seq": "3"}) == [
        "python",
        "-m",
        "x",
        "--job-id",
        "j1",
        "--seq",
        "3",
    ]


def test_moto_config_switches() -> None:
    """What the box turns on through /moto-api/config still exists in moto's config."""
    from moto.core.config import default_user_config
    from moto.moto_api._internal.models import MotoAPIBackend

    assert {"stepfunctions", "lambda", "batch"} <= set(default_user_config)
    assert "execute_state_machine" in default_user_config["stepfunctions"]
    assert "stepfunctions" in inspect.getsource(MotoAPIBackend.set_config)
