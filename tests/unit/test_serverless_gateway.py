"""The Qiskit Serverless gateway's routes over the real local client (no daemon: jobs stay
QUEUED until the test moves them), through Starlette's TestClient: tokens, bad input at
the edge, and a fuzz of every route that must answer 4xx and lose nothing."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from qlayer import keys
from qlayer.core.ports import JobStatus
from qlayer.errors import ArtifactError
from qlayer.local.client import LocalClient
from qlayer.serverless import app as app_module
from qlayer.serverless import tokens
from qlayer.serverless.app import create_app
from qlayer.serverless.gateway import Caller, Gateway
from qlayer.serverless.job import gateway_token

TOKEN = "user-token-0123456789abcdef"
V1 = "/api/v1"
PROGRAM_FOR_IDS = Path(__file__).parents[1] / "e2e" / "programs" / "trivial.py"
ENTRY = b"from qiskit_serverless import save_result\nsave_result({'ok': 1})\n"


def tar_of(members: dict[str, bytes], *, link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture
def local(tmp_path):
    client = LocalClient(tmp_path / "home", autostart=False)
    yield client
    client._conn.close()


@pytest.fixture
def gateway(local):
    return Gateway(
        local, local.jobstore, local.store, secret=TOKEN, public_url="http://127.0.0.1:8000"
    )


@pytest.fixture
def http(gateway):
    with TestClient(create_app(gateway), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client


def upload(http, title="hello", members=None, entrypoint="main_entry.py", **extra):
    members = {"main_entry.py": ENTRY, "helper.py": b"X = 1\n"} if members is None else members
    data = {
        "title": title,
        "entrypoint": entrypoint,
        "dependencies": "[]",
        "env_vars": "{}",
        **extra,
    }
    return http.post(
        f"{V1}/programs/upload/", data=data, files={"artifact": ("artifact.tar", tar_of(members))}
    )


def run(http, title="hello", arguments="{}"):
    return http.post(
        f"{V1}/programs/run/", json={"title": title, "arguments": arguments, "config": {}}
    )


def test_every_route_wants_the_token(http):
    routes = [
        ("GET", "/programs/"),
        ("GET", "/jobs/"),
        ("GET", "/jobs/x/"),
        ("POST", "/programs/run/"),
        ("POST", "/programs/upload/"),
        ("GET", "/files/?function=hello"),
        ("PATCH", "/jobs/x/sub_status/"),
        ("POST", "/jobs/x/event/"),
        ("POST", "/jobs/x/runtime_jobs/"),
    ]
    for headers in (
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": ""},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ):
        for method, path in routes:
            answer = http.request(method, V1 + path, headers=headers)
            assert answer.status_code == 401, (method, path, headers)


def test_upload_run_and_read_a_job(http, local):
    answer = upload(http)
    assert answer.status_code == 200, answer.text
    assert answer.json()["title"] == "hello"
    assert [f["title"] for f in http.get(f"{V1}/programs").json()] == ["hello"]
    assert http.get(f"{V1}/programs/get_by_title/hello").json()["entrypoint"] == "main_entry.py"
    job = run(http, arguments=json.dumps({"n": 3})).json()
    assert job["status"] == "QUEUED"
    record = local.jobstore.get(job["id"])
    assert json.loads(record.arguments["arguments"]) == {"n": 3}
    listed = http.get(f"{V1}/jobs/", params={"limit": 5}).json()
    assert [j["id"] for j in listed["results"]] == [job["id"]]
    assert http.get(f"{V1}/jobs/{job['id']}/result/").json() == {"result": None}
    # a provider's function: its jobs are listed for the provider
    assert upload(http, title="acme/tool").status_code == 200
    tool_job = run(http, title="acme/tool").json()["id"]
    listed = http.get(f"{V1}/jobs/provider/", params={"provider": "acme", "function": "tool"})
    assert [j["id"] for j in listed.json()["results"]] == [tool_job]
    assert http.get(f"{V1}/jobs/provider/", params={"function": "tool"}).status_code == 400


def test_in_job_calls_move_the_stage_and_record_errors_and_runtime_jobs(http, local, gateway):
    upload(http)
    job_id = run(http).json()["id"]
    job_token = gateway.job_token(job_id)  # what the job's stage derives
    inside = {"Authorization": f"Bearer {job_token}"}
    # only RUNNING jobs take a sub-status
    answer = http.patch(
        f"{V1}/jobs/{job_id}/sub_status/", data={"sub_status": "MAPPING"}, headers=inside
    )
    assert answer.status_code == 403
    local.jobstore.update(job_id, status=JobStatus.RUNNING, stage="run")
    for sub in ("MAPPING", "WAITING_QPU"):
        answer = http.patch(
            f"{V1}/jobs/{job_id}/sub_status/", data={"sub_status": sub}, headers=inside
        )
        assert answer.status_code == 200, answer.text
    assert local.jobstore.get(job_id).stage == "WAITING_FOR_QPU"
    job = http.get(f"{V1}/jobs/{job_id}/").json()
    assert (job["status"], job["sub_status"]) == ("RUNNING", "WAITING_QPU")
    bad = http.patch(f"{V1}/jobs/{job_id}/sub_status/", data={"sub_status": "../x"}, headers=inside)
    assert bad.status_code == 400
    # error events and runtime jobs
    event = {"type": "ERROR", "code": "E1", "message": "boom", "exception": "ValueError"}
    assert http.post(f"{V1}/jobs/{job_id}/event/", json=event, headers=inside).status_code == 200
    assert [e["data"]["code"] for e in http.get(f"{V1}/jobs/{job_id}/events/").json()] == ["E1"]
    for _ in range(2):  # registering twice keeps one
        answer = http.post(
            f"{V1}/jobs/{job_id}/runtime_jobs/",
            json={"runtime_job": "rt-1", "runtime_session": None},
            headers=inside,
        )
        assert answer.status_code == 200
    assert local.jobstore.get(job_id).provider_job_ids == ["rt-1"]
    assert http.get(f"{V1}/jobs/{job_id}/runtime_jobs/").json()["runtime_jobs"] == [
        {"runtime_job": "rt-1", "runtime_session": None}
    ]
    # the job's token reaches nothing else: not user routes, not another job
    assert http.get(f"{V1}/jobs/", headers=inside).status_code == 403
    own = http.get(f"{V1}/jobs/{job_id}/", headers=inside).json()
    assert (own["status"], own["cancel_requested"]) == ("RUNNING", False)
    local.jobstore.request_cancel(job_id)
    assert http.get(f"{V1}/jobs/{job_id}/", headers=inside).json()["cancel_requested"] is True
    other = run(http).json()["id"]
    assert http.get(f"{V1}/jobs/{other}/", headers=inside).status_code == 403
    answer = http.post(f"{V1}/jobs/{other}/event/", json=event, headers=inside)
    assert answer.status_code == 403
    forged = job_token[:-4] + "abcd"
    answer = http.post(
        f"{V1}/jobs/{job_id}/event/", json=event, headers={"Authorization": f"Bearer {forged}"}
    )
    assert answer.status_code == 401
    # a token derived for another job id (or under another secret) names no job of ours
    for token in (tokens.job_token(TOKEN, other), tokens.job_token("another-secret-0123", job_id)):
        answer = http.post(
            f"{V1}/jobs/{job_id}/event/", json=event, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == (403 if token.startswith(f"{tokens.PREFIX}{other}") else 401)


def test_a_function_jobs_records_hold_no_token(tmp_path):
    client = LocalClient(tmp_path / "home", autostart=False)
    try:
        secret = client.home.token()
        gateway = Gateway(
            client,
            client.jobstore,
            client.store,
            secret=secret,
            public_url="http://127.0.0.1:8000",
            token_source={"file": str(client.home.token_file)},
        )
        with TestClient(create_app(gateway), raise_server_exceptions=False) as http:
            http.headers["Authorization"] = f"Bearer {secret}"
            assert upload(http).status_code == 200
            job_id = run(http).json()["id"]
        job_token = gateway.job_token(job_id)
        seen = [
            json.dumps(client.job(job_id).info()),  # `qlayer status --json`
            json.dumps(client.jobstore.get(job_id).arguments),
            client.store.get_text(keys.job_input(job_id)),
            client.home.db.read_bytes().decode("latin-1"),
        ]
        for text in seen:
            assert job_token not in text and secret not in text
            assert tokens.PREFIX not in text
        # what the job's stage derives is the token the gateway accepts
        arguments = client.jobstore.get(job_id).arguments
        assert "job_token" not in arguments and arguments["token_source"]
        assert gateway_token(arguments, job_id) == job_token
        assert gateway.authenticate(f"Bearer {job_token}") == Caller("job", job_id)
        assert gateway_token({**arguments, "token_source": None}, job_id) == ""
    finally:
        client._conn.close()


def test_without_a_token_source_each_job_is_handed_a_token_for_it_alone(http, local, gateway):
    """AWS: the role that runs a function may not read the gateway's secret, so the
    gateway makes the job's id first and hands the job its derived token; the job's
    record holds that token (it reaches the job's in-job routes only), never the secret."""
    assert upload(http).status_code == 200
    job_id = run(http).json()["id"]
    arguments = local.jobstore.get(job_id).arguments
    assert arguments["token_source"] == {"token": gateway.job_token(job_id)}
    assert TOKEN not in json.dumps(arguments)
    assert gateway_token(arguments, job_id) == gateway.job_token(job_id)
    assert gateway.authenticate(f"Bearer {gateway.job_token(job_id)}") == Caller("job", job_id)


def test_a_gateway_without_a_resolver_refuses_dependencies_with_a_400(local):
    """The AWS gateway function has no resolver: an upload with dependencies is told so."""
    gateway = Gateway(
        local,
        local.jobstore,
        local.store,
        secret=TOKEN,
        public_url="http://127.0.0.1:8000",
        dependencies=False,
    )
    with TestClient(create_app(gateway), raise_server_exceptions=False) as http:
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        answer = upload(http, dependencies='["pendulum==3.0.0"]')
        assert answer.status_code == 400, answer.text
        assert "qlayer serve only" in answer.text
        assert upload(http).status_code == 200  # without dependencies: stored


@pytest.mark.parametrize("job_id", ["", "x", "20261201-000000-ABCDEF", "../20261201-000000-abcdef"])
def test_a_job_id_made_in_advance_must_have_the_shape_new_job_id_gives(local, job_id):
    from qlayer.errors import ArgumentError
    from qlayer.keys import check_new_job_id, new_job_id

    assert check_new_job_id(new_job_id())
    with pytest.raises(ArgumentError, match="not a job id"):
        local.run(PROGRAM_FOR_IDS, {}, job_id=job_id)


@pytest.mark.parametrize(
    "members, entrypoint, status",
    [
        ({"../evil.py": ENTRY}, "main_entry.py", 400),
        ({"/abs.py": ENTRY, "main_entry.py": ENTRY}, "main_entry.py", 400),
        ({"a/../../b.py": ENTRY, "main_entry.py": ENTRY}, "main_entry.py", 400),
        ({"main_entry.py": ENTRY}, "../main_entry.py", 400),
        ({"main_entry.py": ENTRY}, "/etc/main_entry.py", 400),
        ({"main_entry.py": ENTRY}, "other.py", 400),
        ({"main_entry.py": b"def broken(:\n"}, "main_entry.py", 400),
    ],
)
def test_unsafe_or_broken_artifacts_are_refused(http, local, members, entrypoint, status):
    answer = upload(http, members=members, entrypoint=entrypoint)
    assert answer.status_code == status, answer.text
    assert "message" in answer.json()
    assert http.get(f"{V1}/programs").json() == []
    assert not any((local.home.root.parent / name).exists() for name in ("evil.py", "b.py"))


def test_links_and_non_tar_artifacts_are_refused(http):
    data = {"title": "linked", "entrypoint": "main_entry.py"}
    linked = tar_of({"main_entry.py": ENTRY}, link="passwd")
    answer = http.post(f"{V1}/programs/upload/", data=data, files={"artifact": ("a.tar", linked)})
    assert answer.status_code == 400
    answer = http.post(
        f"{V1}/programs/upload/", data=data, files={"artifact": ("a.tar", b"\x00not a tar" * 100)}
    )
    assert answer.status_code == 400


@pytest.mark.parametrize("title", ["../hello", "..", "a/b/c", ".hidden", "x" * 200, "a b", ""])
def test_bad_titles_are_refused(http, title):
    assert upload(http, title=title).status_code == 400
    assert run(http, title=title).status_code in (400, 404)


def test_file_names_cannot_leave_the_function_folder(http, local):
    upload(http)
    params = {"function": "hello"}
    for name in ("../../token", "..", "/etc/passwd", "a/b", ".env"):
        got = http.get(f"{V1}/files/download/", params={**params, "file": name})
        assert got.status_code == 400, name
        assert (
            http.delete(f"{V1}/files/delete/", params={**params, "file": name}).status_code == 400
        )
    # an upload's name is reduced to its last part
    answer = http.post(
        f"{V1}/files/upload/", params=params, files={"file": ("../../evil.txt", b"data")}
    )
    assert answer.status_code == 200
    assert http.get(f"{V1}/files/", params=params).json()["results"] == ["evil.txt"]
    assert not (local.home.root / "evil.txt").exists()


def test_an_anonymous_body_is_refused_unread(http, monkeypatch):
    monkeypatch.setattr(app_module, "MAX_BODY", 4096)

    def chunks():
        for _ in range(10):
            yield b"x" * 1000

    answer = http.post(
        f"{V1}/programs/run/",
        content=chunks(),
        headers={"Authorization": "Bearer nope", "Content-Type": "application/json"},
    )
    assert answer.status_code == 401  # not 413: the token is checked first


def test_bodies_past_the_limit_get_413_before_a_route_reads_them(http, monkeypatch):
    monkeypatch.setattr(app_module, "MAX_BODY", 4096)
    answer = http.post(
        f"{V1}/programs/run/",
        content=b"{" + b" " * 5000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 413

    def chunks():
        for _ in range(10):
            yield b"x" * 1000

    answer = http.post(
        f"{V1}/programs/run/", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413


def test_fuzzed_requests_get_4xx_and_lose_nothing(http, local):
    assert upload(http).status_code == 200
    http.post(
        f"{V1}/files/upload/", params={"function": "hello"}, files={"file": ("keep.txt", b"kept")}
    )
    job_id = run(http).json()["id"]
    rng = random.Random(20261201)
    paths = [
        "/programs/upload/",
        "/programs/run/",
        "/programs/validate_arguments/",
        f"/jobs/{job_id}/stop/",
        f"/jobs/{job_id}/event/",
        f"/jobs/{job_id}/runtime_jobs/",
        "/files/upload/",
        f"/jobs/{job_id}/sub_status/",
        "/files/delete/",
    ]
    weird = ["..", "../..", "%2e%2e", "\x00", "a" * 3000, "{", "[]", "null", "é✓", "/etc"]
    for _ in range(300):
        path = rng.choice(paths)
        method = "PATCH" if "sub_status" in path else "DELETE" if "delete" in path else "POST"
        kind = rng.randrange(4)
        params = {rng.choice(["function", "file", "provider", "title"]): rng.choice(weird)}
        if kind == 0:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
            answer = http.request(
                method,
                V1 + path,
                content=body,
                params=params,
                headers={"Content-Type": "application/json"},
            )
        elif kind == 1:
            doc = {
                rng.choice(["title", "arguments", "type", "runtime_job", "sub_status"]): rng.choice(
                    [*weird, 5, None, [1], {"a": 1}]
                )
                for _ in range(3)
            }
            answer = http.request(method, V1 + path, json=doc, params=params)
        elif kind == 2:
            answer = http.request(
                method,
                V1 + path,
                params=params,
                files={"file": (rng.choice(weird), b"zz")},
                data={"title": rng.choice(weird)},
            )
        else:
            answer = http.request(
                method,
                V1 + path,
                content=b"--x\r\nbroken",
                headers={"Content-Type": "multipart/form-data; boundary=x"},
            )
        assert 400 <= answer.status_code < 500 or answer.status_code == 200, (
            path,
            kind,
            answer.status_code,
            answer.text[:300],
        )
    for odd in (
        "/programs/get_by_title/%2e%2e",
        "/programs/get_by_title/%2e%2e%2fx",
        "/jobs/..%2f..%2ftoken/",
        "/jobs/%00/result/",
    ):
        assert 400 <= http.get(V1 + odd).status_code < 500, odd
    # nothing lost: the function, its file and the job are all still there
    assert [f["title"] for f in http.get(f"{V1}/programs").json()] == ["hello"]
    got = http.get(f"{V1}/files/download/", params={"function": "hello", "file": "keep.txt"})
    assert got.content == b"kept"
    assert http.get(f"{V1}/jobs/{job_id}/").status_code == 200


def test_the_folder_store_deletes_one_key_and_refuses_traversal(local):
    store = local.store
    store.put_bytes("serverless/files/_/f/a.txt", b"a")
    store.put_bytes("serverless/files/_/f/b.txt", b"b")
    store.delete("serverless/files/_/f/a.txt")
    store.delete("serverless/files/_/f/a.txt")  # already gone: nothing happens
    assert store.list("serverless/files/_/f/") == ["serverless/files/_/f/b.txt"]
    with pytest.raises(ArtifactError):
        store.delete("../token")


@pytest.mark.parametrize(
    "dependency, reason",
    [
        ("pendulum @ https://example.com/pendulum-3.0.0.whl", "direct reference"),
        ("https://example.com/pendulum-3.0.0.tar.gz", "path or URL"),
        ("./vendored/pendulum", "path or URL"),
        ("-e .", "installer option"),
        ("--index-url=https://example.com/simple", "installer option"),
        ("pendulum===", "not a valid requirement"),
        ("qiskit<1", "cannot coexist with the base"),
    ],
)
def test_dependencies_the_environments_refuse_are_a_400_with_the_reason(http, dependency, reason):
    answer = upload(http, dependencies=json.dumps(["tabulate", dependency]))
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["message"]
    assert http.get(f"{V1}/programs").json() == []  # nothing stored


def test_a_job_building_its_environment_is_pending_for_the_client():
    from qlayer.serverless.vocabulary import GATEWAY_TO_QLAYER, gateway_status

    assert gateway_status(JobStatus.BUILDING, None) == ("PENDING", None)
    assert GATEWAY_TO_QLAYER["PENDING"] == {JobStatus.BUILDING}


def test_the_functions_process_imports_from_the_jobs_environment(tmp_path):
    from qlayer.serverless.job import function_env

    site = str(tmp_path / "envs" / "abc" / "site")
    env = function_env({}, {"overlay": "/overlay"}, "job-1", tmp_path / "w", tmp_path, (site,))
    paths = env["PYTHONPATH"].split(":")
    assert paths[0] == "/overlay" and paths[1] == str(tmp_path / "w" / "function")
    assert paths[-1] == site and env["QLAYER_ENV_PATHS"] == site
    assert function_env({}, {}, "job-1", tmp_path / "w", tmp_path)["QLAYER_ENV_PATHS"] == ""
