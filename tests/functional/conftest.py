"""Fixtures of the functional tests (the moto-backed ones live in aws_fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aws_fixtures import aws, aws_env  # noqa: F401


@pytest.fixture(autouse=True)
def _healthy_box(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that used a cloud box fails if the box itself (a pump, a runtime) failed."""
    yield
    if "box" in request.fixturenames:
        problems = request.getfixturevalue("box").problems()
        assert not problems, f"the box itself failed: {problems}"


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The main and "short" syntheses (cloud_box.synthesize_stacks), made once a session:
    each module that runs them gets its own box, deployed from the same cloud assembly
    (read only: the box stages nothing in it)."""
    from cloud_box import synthesize_stacks

    return synthesize_stacks(tmp_path_factory.mktemp("stacks") / "cdk.out")
