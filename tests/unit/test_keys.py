"""File names a job may save: any safe Unicode name, nothing that escapes its folder."""

from __future__ import annotations

import pytest

from qlayer import keys
from qlayer.errors import FileNameError, QlayerError


@pytest.mark.parametrize(
    "name",
    ["grüße ✓.txt", "plots/fig 1.png", "résumé.pdf", "日本語/データ.csv", "a-b_c.d", "x" * 255],
)
def test_safe_names_are_accepted(name):
    assert keys.file_key("job", name) == f"jobs/job/files/{name}"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("./x", "'.'"),
        ("/etc/passwd", "absolute"),
        ("a\nb", "control character"),
        ("a\x00b", "control character"),
        ("tab\there", "control character"),
        ("a\x7f", "control character"),
        ("a\\b", "backslash"),
        ("a//b", "empty segment"),
        ("dir/", "empty segment"),
        ("", "empty"),
        ("x" * 256, "segment is longer"),
        ("/".join(["y" * 200] * 5), "longer than 900"),
    ],
)
def test_unsafe_names_are_refused_with_the_reason(name, why):
    with pytest.raises(FileNameError, match=why) as caught:
        keys.file_key("job", name)
    assert isinstance(caught.value, QlayerError) and isinstance(caught.value, ValueError)
