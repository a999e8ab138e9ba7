"""$QLAYER_HOME is private to its user."""

from __future__ import annotations

import stat

from qlayer.local.paths import Home


def test_a_new_home_is_private(tmp_path):
    home = Home.resolve(tmp_path / "new" / "home")
    assert stat.S_IMODE(home.root.stat().st_mode) == 0o700


def test_an_existing_home_open_to_others_is_made_private(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    Home.resolve(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
