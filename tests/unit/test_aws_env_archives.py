"""Unpacking an environment archive (qlayer.aws.envs): bounded, and only files inside.

The archive comes from a role that ran a package installer: it is unpacked only after
every member was checked, and never outside its folder.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from qlayer.aws.env_build import pack
from qlayer.aws.envs import EnvError, EnvInfo, unpack


def archive_of(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_what_a_build_packs_unpacks_the_same(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "pkg" / "sub").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("X = 1\n")
    (site / "pkg" / "sub" / "data.bin").write_bytes(b"\0" * 1000)
    (site / "link").symlink_to(site / "pkg")  # links are left out
    files, total = pack(site, tmp_path / "env.tar.gz")
    assert (files, total) == (2, 1006)
    out = tmp_path / "out"
    assert unpack(tmp_path / "env.tar.gz", out, max_bytes=10_000) == 1006
    assert (out / "pkg" / "__init__.py").read_text() == "X = 1\n"
    assert (out / "pkg" / "sub" / "data.bin").stat().st_size == 1000
    assert not (out / "link").exists()


@pytest.mark.parametrize(
    ("member", "data", "says"),
    [
        (file("../escape.py"), b"x", "outside its folder"),
        (file("/abs.py"), b"x", "outside its folder"),
        (file("pkg/../../escape.py"), b"x", "outside its folder"),
    ],
)
def test_a_member_outside_the_folder_is_refused_before_anything_is_written(
    tmp_path: Path, member: tarfile.TarInfo, data: bytes, says: str
) -> None:
    archive = archive_of(tmp_path / "bad.tar.gz", [(file("ok.py"), b"fine"), (member, data)])
    with pytest.raises(EnvError, match=says):
        unpack(archive, tmp_path / "out", max_bytes=10_000)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape.py").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    link = file("pkg/evil")
    link.type = kind
    link.linkname = "/etc/passwd"
    archive = archive_of(tmp_path / "bad.tar.gz", [(link, None)])
    with pytest.raises(EnvError, match="not a file"):
        unpack(archive, tmp_path / "out", max_bytes=10_000)
    assert not (tmp_path / "out").exists()


def test_sizes_and_member_counts_are_bounded_before_unpacking(tmp_path: Path) -> None:
    members = [(file(f"f{i}.py"), b"x" * 100) for i in range(5)]
    archive = archive_of(tmp_path / "big.tar.gz", members)
    with pytest.raises(EnvError, match="more than 499 bytes"):
        unpack(archive, tmp_path / "out", max_bytes=499)
    with pytest.raises(EnvError, match="more than 4 members"):
        unpack(archive, tmp_path / "out", max_bytes=10_000, max_members=4)
    assert not (tmp_path / "out").exists()
    assert unpack(archive, tmp_path / "out", max_bytes=500, max_members=5) == 500


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(EnvError, match="cannot be unpacked"):
        unpack(tmp_path / "junk.tar.gz", tmp_path / "out", max_bytes=10_000)


def test_what_a_build_records_reads_back() -> None:
    info = EnvInfo("ab" * 16, 1024, 3 * 2**20 + 1, 7, ("pendulum==3.3.0",), 1.5)
    assert EnvInfo.from_json(info.to_json()) == info
    assert info.unpacked_mb == 4
    with pytest.raises(ValueError, match="environment"):
        EnvInfo.from_json({**info.to_json(), "env_hash": "../x"})
