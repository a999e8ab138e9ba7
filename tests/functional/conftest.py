"""Fixtures of the functional tests (the moto-backed ones live in aws_fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aws_fixtures import aws, aws_env  # noqa: F401


@pytest.fixture(autouse=True)
def _healthy_box(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that used a cloud box fails if the box itself (a pump, a runtime) failed."""
    yield
    if "box" in request.fixturenames:
        problems = request.getfixturevalue("box").problems()
        assert not problems, f"the box itself failed: {problems}"
