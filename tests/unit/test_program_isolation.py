"""Each program sees only its own modules, in one long-lived process (a warm worker).

These run the loading code the local workers and the AWS stage runners use
(:class:`qlayer.program.ProgramCache`) on a folder store, several programs in turn.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qlayer.program import ProgramCache, bundle, load_path, upload
from qlayer.store.local import FolderStore

STAGE_IMPORTS_HELPER = """
from qlayer import Workflow

wf = Workflow("iso")


@wf.stage()
def start(args):
    import helper  # imported when the stage runs, not when the program loads

    return {"who": helper.f()}
"""

TOP_IMPORTS_HELPER = """
import helper
from qlayer import Workflow

wf = Workflow("iso-top")


@wf.stage()
def start(args):
    return {"who": helper.f()}
"""


def program(folder: Path, main: str, who: str, *, name: str = "main.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(main)
    (folder / "helper.py").write_text(f"def f():\n    return {who!r}\n")
    return folder


def run_start(cache: ProgramCache, program_id: str) -> dict:
    workflow = cache.workflow(program_id)
    return workflow.stages["start"].fn({})


@pytest.fixture
def store(tmp_path):
    return FolderStore(tmp_path / "artifacts")


@pytest.fixture(autouse=True)
def no_leftover_helper():
    yield
    assert "helper" not in sys.modules or "iso" not in str(sys.modules["helper"])


@pytest.mark.parametrize("main", [STAGE_IMPORTS_HELPER, TOP_IMPORTS_HELPER])
def test_two_folders_with_a_helper_each(store, tmp_path, main):
    a = upload(store, bundle(program(tmp_path / "iso-a", main, "A")))
    b = upload(store, bundle(program(tmp_path / "iso-b", main, "B")))
    cache = ProgramCache(store, tmp_path / "scratch")
    try:
        for _ in range(3):
            assert run_start(cache, a) == {"who": "A"}
            assert run_start(cache, b) == {"who": "B"}
        assert run_start(cache, b) == {"who": "B"}
        assert run_start(cache, a) == {"who": "A"}
    finally:
        from qlayer.program import _NAMESPACES

        _NAMESPACES.deactivate()


def test_a_program_cannot_import_another_programs_module(store, tmp_path):
    a = upload(store, bundle(program(tmp_path / "iso-a", STAGE_IMPORTS_HELPER, "A")))
    lonely = tmp_path / "iso-c"
    lonely.mkdir()
    (lonely / "main.py").write_text(STAGE_IMPORTS_HELPER)  # no helper.py of its own
    c = upload(store, bundle(lonely))
    cache = ProgramCache(store, tmp_path / "scratch")
    try:
        assert run_start(cache, a) == {"who": "A"}
        with pytest.raises(ModuleNotFoundError, match="helper"):
            run_start(cache, c)
    finally:
        from qlayer.program import _NAMESPACES

        _NAMESPACES.deactivate()


def test_single_file_program_bundles_the_modules_it_imports(tmp_path):
    folder = program(tmp_path / "iso-single", TOP_IMPORTS_HELPER, "S", name="prog.py")
    (folder / "pkg").mkdir()
    (folder / "pkg" / "__init__.py").write_text("from pkg.inner import g\n")
    (folder / "pkg" / "inner.py").write_text("def g():\n    return 1\n")
    (folder / "helper.py").write_text("import pkg\n\ndef f():\n    return 'S'\n")
    (folder / "unrelated.py").write_text("raise SystemExit('never bundled')\n")
    found = bundle(folder / "prog.py")
    assert found.entry == "prog.py"
    assert sorted(found.files) == ["helper.py", "pkg/__init__.py", "pkg/inner.py", "prog.py"]


def test_bundling_outlasts_cpython_311s_random_ast_recursion_error(tmp_path, monkeypatch):
    # python/cpython#106905: with other threads running, 3.11's ast.parse can fail with
    # this SystemError at random (a clean-clone CI run, bundling for cloud.run).
    import ast
    import types

    import qlayer.program

    folder = program(tmp_path / "iso-ast", TOP_IMPORTS_HELPER, "S", name="prog.py")
    real, failures = ast.parse, []

    def flaky(source, *args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise SystemError("AST constructor recursion depth mismatch (before=3, after=9)")
        return real(source, *args, **kwargs)

    # only the program module's view of ast: pytest parses with it too
    monkeypatch.setattr(
        qlayer.program, "ast", types.SimpleNamespace(**{**vars(ast), "parse": flaky})
    )
    assert sorted(bundle(folder / "prog.py").files) == ["helper.py", "prog.py"]
    assert len(failures) == 2


def test_single_file_program_runs_with_its_sibling_in_a_fresh_process(store, tmp_path):
    folder = program(tmp_path / "iso-single", TOP_IMPORTS_HELPER, "S", name="prog.py")
    pid = upload(store, bundle(folder / "prog.py"))
    cache = ProgramCache(store, tmp_path / "scratch")
    try:
        assert run_start(cache, pid) == {"who": "S"}
    finally:
        from qlayer.program import _NAMESPACES

        _NAMESPACES.deactivate()


def test_client_side_loads_keep_programs_apart(tmp_path):
    a = load_path(program(tmp_path / "iso-a", TOP_IMPORTS_HELPER, "A"))
    b = load_path(program(tmp_path / "iso-b", TOP_IMPORTS_HELPER, "B"))
    assert a.stages["start"].fn.__globals__["helper"].f() == "A"
    assert b.stages["start"].fn.__globals__["helper"].f() == "B"


def test_loading_a_program_leaves_the_callers_own_modules_alone(tmp_path, monkeypatch):
    # The caller's script (here a module ``mine``) lives in the program's folder.
    folder = program(tmp_path / "iso-own", TOP_IMPORTS_HELPER, "A")
    (folder / "mine.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(folder))
    import mine  # noqa: F401

    load_path(folder)
    assert "mine" in sys.modules
    assert str(folder) in sys.path
    sys.modules.pop("mine")


STAGE_IMPORTS_ENVPKG = """
from qlayer import Workflow

wf = Workflow("iso-env")


@wf.stage()
def start(args):
    try:
        import qlayer_test_envpkg  # from the job's environment, when it has one
        from qlayer_test_envpkg import sub
    except ImportError:
        return {"version": None}
    return {"version": qlayer_test_envpkg.VERSION, "sub": sub.WHO}
"""


def environment(folder: Path, version: str) -> Path:
    """A folder of packages as an environment build leaves it: a package and a subpackage."""
    package = folder / "qlayer_test_envpkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (package / "sub" / "__init__.py").write_text(f"WHO = {version!r}\n")
    return folder


def test_environments_reach_only_their_programs_in_one_warm_process(store, tmp_path):
    """AWS's warm stage runner: a job of environment 1, one of environment 2 (another
    version of the same package), one without any, in turn and back: each sees its own,
    the last none, and nothing of an environment is left on sys.path or in sys.modules."""
    env1 = environment(tmp_path / "env1", "1.0")
    env2 = environment(tmp_path / "env2", "2.0")
    one = upload(store, bundle(program(tmp_path / "p1", STAGE_IMPORTS_ENVPKG, "1")))
    two = upload(store, bundle(program(tmp_path / "p2", STAGE_IMPORTS_ENVPKG, "2")))
    bare = upload(store, bundle(program(tmp_path / "p3", STAGE_IMPORTS_ENVPKG, "3")))
    cache = ProgramCache(store, tmp_path / "scratch")

    def start(program_id: str, env: Path | None) -> dict:
        workflow = cache.workflow(program_id, (env,) if env else ())
        return workflow.stages["start"].fn({})

    try:
        assert start(one, env1) == {"version": "1.0", "sub": "1.0"}
        assert start(two, env2) == {"version": "2.0", "sub": "2.0"}
        assert start(bare, None) == {"version": None}
        assert start(one, env1) == {"version": "1.0", "sub": "1.0"}
        assert start(two, env1) == {"version": "1.0", "sub": "1.0"}  # one env, two programs
        assert sys.path[-1] == str(env1)  # after the base's packages: it shadows none
        assert start(bare, None) == {"version": None}
        assert str(env1) not in sys.path
    finally:
        from qlayer.program import _NAMESPACES

        _NAMESPACES.deactivate()
    assert not [p for p in sys.path if p in (str(env1), str(env2))]
    assert not [m for m in sys.modules if m.startswith("qlayer_test_envpkg")]
