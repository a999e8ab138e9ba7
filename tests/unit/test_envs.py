"""The substrate-free environment model: declaring, checking, locking, identifying."""

from __future__ import annotations

import pytest

from qlayer import keys
from qlayer.envs import (
    Base,
    Lock,
    check_requirement,
    check_requirements,
    conflicts,
    folder_requirements,
    load_lock,
    lock_for,
    program_requirements,
    resolve,
    spec_hash,
)
from qlayer.envs.uv import _from_pip_config, without_constraints
from qlayer.errors import RequirementError, WorkflowError
from qlayer.store.local import FolderStore
from qlayer.workflow import Workflow

BASE = Base(
    python="3.11",
    platform="linux-x86_64",
    packages={"qiskit": "2.6.2", "qlayer": "0.1.0", "numpy": "2.4.6", "six": "1.17.0"},
)


# -- declaring ---------------------------------------------------------------------------
def test_requirements_are_normalised():
    assert check_requirement("Pendulum >= 3") == "pendulum>=3"
    assert check_requirement("Foo_Bar[Extra_B,a]==1.0") == "foo-bar[a,extra-b]==1.0"
    assert (
        check_requirement("tabulate==0.9.0 ; python_version >= '3.8'")
        == 'tabulate==0.9.0; python_version >= "3.8"'
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("--index-url https://example.org/simple", "installer option"),
        ("-e .", "installer option"),
        ("-r other.txt", "installer option"),
        ("./vendor/pkg", "path or URL"),
        ("/abs/pkg.whl", "path or URL"),
        ("https://example.org/pkg.whl", "path or URL"),
        ("pkg @ https://example.org/pkg.whl", "direct reference"),
        ("pendulum>=>3", "not a valid requirement"),
        ("", "empty requirement"),
        ("x" * 600, "longer than"),
    ],
)
def test_bad_requirements_are_refused_with_the_reason(text, says):
    with pytest.raises(RequirementError, match=says):
        check_requirement(text, "here")


def test_a_requirement_list_is_a_list():
    with pytest.raises(RequirementError, match="not a single string"):
        check_requirements("pendulum")
    with pytest.raises(RequirementError, match="a requirement is a string"):
        check_requirements([3])
    assert check_requirements(["a==1", "A==1", "b"]) == ("a==1", "b")


def test_workflow_declares_requirements_checked_at_construction():
    wf = Workflow("needs", requirements=["Pendulum>=3"])
    assert wf.requirements == ("pendulum>=3",)
    assert wf.describe()["requirements"] == ["pendulum>=3"]
    assert Workflow("plain").requirements == ()
    with pytest.raises(WorkflowError, match=r"requirements\[0\].*installer option"):
        Workflow("bad", requirements=["--extra-index-url x"])


def test_folder_requirements_from_requirements_txt_and_pyproject():
    files = {
        "main.py": b"",
        "requirements.txt": b"# pins\n\ntabulate==0.9.0  # tables\npendulum>=3\n",
        "pyproject.toml": b'[project]\nname = "p"\ndependencies = ["humanize>=4", "pendulum>=3"]\n',
        "sub/requirements.txt": b"ignored==1\n",
    }
    assert folder_requirements(files) == ("tabulate==0.9.0", "pendulum>=3", "humanize>=4")
    wf = Workflow("both", requirements=["six"])
    assert program_requirements(wf, files) == (
        "six",
        "tabulate==0.9.0",
        "pendulum>=3",
        "humanize>=4",
    )
    assert folder_requirements({"main.py": b""}) == ()
    assert folder_requirements({"pyproject.toml": b"[tool.x]\n"}) == ()


def test_folder_requirement_errors_name_the_file_and_line():
    with pytest.raises(RequirementError, match=r"requirements.txt, line 2"):
        folder_requirements({"requirements.txt": b"ok==1\n--find-links /tmp\n"})
    with pytest.raises(RequirementError, match="not valid TOML"):
        folder_requirements({"pyproject.toml": b"[project\n"})
    with pytest.raises(RequirementError, match="must be a list"):
        folder_requirements({"pyproject.toml": b'[project]\ndependencies = "x"\n'})
    with pytest.raises(RequirementError, match="not UTF-8"):
        folder_requirements({"requirements.txt": b"\xff\xfe\x00"})


# -- the base and conflicts -----------------------------------------------------------------
def test_a_requirement_against_the_bases_qiskit_major_is_a_named_conflict():
    found = conflicts(["qiskit<2", "numpy>=2", "pendulum"], BASE)
    assert found == ["qiskit<2 (the base has qiskit 2.6.2)"]
    assert conflicts(["qiskit>=2,<3"], BASE) == []
    assert conflicts(["qiskit<2; python_version < '3.0'"], BASE) == []


def test_resolve_refuses_a_conflict_before_running_the_resolver(monkeypatch):
    monkeypatch.setenv("QLAYER_UV", "/nonexistent/uv")  # it would fail if it ran
    with pytest.raises(RequirementError, match=r"qiskit<2 \(the base has qiskit 2.6.2\)"):
        resolve(["qiskit<2"], BASE)


def test_the_current_base_knows_its_python_and_qiskit():
    base = Base.current()
    identity = base.identity()
    assert identity["python"].count(".") == 1
    assert identity["qiskit"] and identity["qiskit"].startswith("2.")
    assert identity["qlayer"]
    assert "qiskit==" in base.constraints()
    assert Base.from_json(base.to_json()).fingerprint() == base.fingerprint()


# -- locks and their identity ---------------------------------------------------------------
def test_the_lock_hash_covers_pins_and_base_only():
    one = Lock(("pendulum>=3",), ("pendulum==3.3.0",), ("six==1.17.0",), BASE.identity())
    same = Lock(("pendulum",), ("pendulum==3.3.0",), ("six==1.17.0",), BASE.identity())
    other_pin = Lock(("pendulum",), ("pendulum==3.2.0",), ("six==1.17.0",), BASE.identity())
    other_base = Lock(
        ("pendulum",), ("pendulum==3.3.0",), ("six==1.17.0",), {**BASE.identity(), "qiskit": "2.7"}
    )
    assert one.hash == same.hash
    assert len({one.hash, other_pin.hash, other_base.hash}) == 3
    assert keys.env_lock(one.hash) == f"envs/{one.hash}/lock.json"
    assert Lock.from_json(one.to_json()) == one
    tampered = {**one.to_json(), "install": ["pendulum==9"]}
    with pytest.raises(RequirementError, match="does not match"):
        Lock.from_json(tampered)
    option = {**one.to_json(), "install": ["--index-url=https://evil.example"], "hash": None}
    with pytest.raises(RequirementError, match="not a name==version pin"):
        Lock.from_json(option)
    assert spec_hash(["a", "b"], BASE) == spec_hash(["b", "a"], BASE)


def test_env_keys_refuse_anything_but_a_hash():
    with pytest.raises(ValueError):
        keys.env_lock("../../etc")


def test_pip_settings_become_uv_options(tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("torch<=2\n")
    text = (
        "global.index-url='https://mirror.example/simple'\n"
        "global.extra-index-url='file:///a/simple file:///b/simple'\n"
        f"global.constraint='{caps}'\n"
        "global.find-links='/files'\n"
        ":env:.find-links='/wheels'\n"
    )
    options = _from_pip_config(text)
    assert options == [
        "--index-url",
        "https://mirror.example/simple",
        "--extra-index-url",
        "file:///a/simple",
        "--extra-index-url",
        "file:///b/simple",
        "--find-links",
        "/wheels",
        "--index-strategy",
        "unsafe-best-match",
        "--constraint",
        str(caps),
    ]
    assert "--constraint" not in without_constraints(options)
    assert _from_pip_config("") == []


# -- resolving with uv (reaches the package index) --------------------------------------
def test_resolve_pins_only_what_the_base_lacks():
    base = Base.current()
    lock = resolve(["pendulum>=3"], base)
    packages = lock.packages()
    assert "pendulum" in packages and "qiskit" not in packages
    assert all(base.version(pin.split("==")[0]) is None for pin in lock.install)
    assert all(base.version(pin.split("==")[0]) is not None for pin in lock.from_base)
    assert lock.base == base.identity()


def test_requirements_the_base_meets_need_no_environment():
    from qlayer.envs import env_id

    lock = resolve(["numpy>=1.20", "qiskit>=2", "tabulate; python_version < '3.0'"], Base.current())
    assert lock.install == () and "numpy" in " ".join(lock.from_base)
    assert env_id(lock) is None and env_id(None) is None
    assert env_id(Lock(("t",), ("tabulate==0.9.0",))) is not None


def test_resolve_names_a_missing_package_in_the_resolvers_words():
    with pytest.raises(RequirementError, match="not found in the package registry"):
        resolve(["qlayer-no-such-package-xyz"], Base.current())


def test_lock_for_resolves_once_per_requirements_and_base(tmp_path, monkeypatch):
    store = FolderStore(tmp_path)
    assert lock_for(store, []) is None
    first = lock_for(store, ["tabulate==0.9.0"])
    assert first is not None and first.install == ("tabulate==0.9.0",)
    assert load_lock(store, first.hash) == first
    monkeypatch.setenv("QLAYER_UV", "/nonexistent/uv")  # a second resolution would fail
    again = lock_for(store, ["Tabulate == 0.9.0"])
    assert again == first
