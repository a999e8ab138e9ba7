"""One artifact key layout, shared by the local folder and S3.

::

    programs/<program-id>/...                     the program bundle
    jobs/<job-id>/input.json                      arguments and options
    jobs/<job-id>/stages/<seq>-<stage>/input.json what the stage received
    jobs/<job-id>/stages/<seq>-<stage>/output.json what the stage returned (its outcome)
    jobs/<job-id>/stages/<seq>-execute/request.json  an execute request
    jobs/<job-id>/stages/<seq>-execute/result.json   its PrimitiveResult
    jobs/<job-id>/result.json                     the final result
    jobs/<job-id>/error.json                      why the job failed
    jobs/<job-id>/logs/<seq>-<stage>.log          what a stage logged
    jobs/<job-id>/files/<name>                    plots and files the stages saved
    envs/<env-hash>/lock.json                     a program environment's lock
    envs/resolved/<spec-hash>.json                which lock a set of requirements resolved to
    envs/<env-hash>/env.tar.gz                    AWS: the environment, built (its packages)
    envs/<env-hash>/built.json                    AWS: its sizes, written once the archive is
    envs/<env-hash>/error.json                    AWS: why its last build failed
    envs/base.json                                AWS: the base the runner image holds
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata


def new_job_id() -> str:
    """A sortable, readable job id: ``20261123-203112-7f3a9c``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


_JOB_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


def check_new_job_id(job_id: str) -> str:
    """``job_id`` if it has the shape :func:`new_job_id` gives (one made in advance).

    Raises:
        ArgumentError: It has another shape.
    """
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        from qlayer.errors import ArgumentError

        raise ArgumentError(f"not a job id made by new_job_id(): {job_id!r}")
    return job_id


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is safe as one path segment, else raise ValueError."""
    if not _SAFE_NAME.match(name) or name in {".", ".."}:
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128 characters, not starting with '.' or '-')"
        )
    return name


#: The longest file name a job may save, in UTF-8 bytes (S3 keys stop at 1,024, and
#: ``jobs/<id>/files/`` takes its share).
MAX_FILE_NAME_BYTES = 900
#: The longest segment between slashes, in UTF-8 bytes (a file system's name limit).
MAX_FILE_SEGMENT_BYTES = 255


def check_relative_path(path: str, what: str = "file name") -> str:
    """Return ``path`` if it is safe as a file a job saves, else raise FileNameError.

    Any Unicode is accepted (``"grüße ✓.txt"``, spaces, ``plots/fig 1.png``) except what
    could escape the job's folder or confuse a terminal or a file system: an empty
    name, a leading ``/``, a ``.`` or ``..`` segment, an empty segment (``a//b``), a
    backslash, control characters (newline, tab, NUL, DEL, C1), a segment over 255
    bytes or a name over 900 bytes of UTF-8.
    """
    from qlayer.errors import FileNameError

    problem = _path_problem(path)
    if problem:
        raise FileNameError(f"invalid {what} {path!r}: {problem}")
    return path


def _path_problem(path: object) -> str | None:
    if not isinstance(path, str):
        return f"a name is a str, not {type(path).__name__}"
    if not path:
        return "it is empty"
    if path.startswith("/"):
        return "it is absolute; give a path relative to the job's files"
    if any(unicodedata.category(char) == "Cc" for char in path):
        return "it holds a control character (newline, tab, NUL...)"
    if "\\" in path:
        return "it holds a backslash; separate folders with '/'"
    parts = path.split("/")
    if any(part in {".", ".."} for part in parts):
        return "'.' and '..' segments are not allowed"
    if any(not part for part in parts):
        return "it has an empty segment (a trailing or doubled '/')"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        return f"it is longer than {MAX_FILE_NAME_BYTES} bytes of UTF-8"
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_FILE_SEGMENT_BYTES for part in parts):
        return f"a segment is longer than {MAX_FILE_SEGMENT_BYTES} bytes of UTF-8"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode (a lone surrogate)"
    return None


def program_prefix(program_id: str) -> str:
    return f"programs/{program_id}/"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def job_input(job_id: str) -> str:
    return f"jobs/{job_id}/input.json"


def step_dir(job_id: str, seq: int, name: str) -> str:
    return f"jobs/{job_id}/stages/{seq:04d}-{name}/"


def stage_input(job_id: str, seq: int, stage: str) -> str:
    return step_dir(job_id, seq, stage) + "input.json"


def stage_output(job_id: str, seq: int, stage: str) -> str:
    return step_dir(job_id, seq, stage) + "output.json"


def execute_request(job_id: str, seq: int) -> str:
    return step_dir(job_id, seq, "execute") + "request.json"


def execute_result(job_id: str, seq: int) -> str:
    return step_dir(job_id, seq, "execute") + "result.json"


def job_result(job_id: str) -> str:
    return f"jobs/{job_id}/result.json"


def job_error(job_id: str) -> str:
    return f"jobs/{job_id}/error.json"


def log_key(job_id: str, seq: int, name: str) -> str:
    return f"jobs/{job_id}/logs/{seq:04d}-{name}.log"


def logs_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/logs/"


def file_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/files/{check_relative_path(name)}"


def files_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/files/"


_ENV_HASH = re.compile(r"^[0-9a-f]{16,64}$")


def check_env_hash(env: str) -> str:
    """Return ``env`` if it is an environment id (lowercase hex), else raise ValueError."""
    if not isinstance(env, str) or not _ENV_HASH.match(env):
        raise ValueError(f"invalid environment id {env!r}: 16 to 64 lowercase hex digits")
    return env


def env_prefix(env: str) -> str:
    return f"envs/{check_env_hash(env)}/"


def env_lock(env: str) -> str:
    """Where environment ``env``'s lock is stored (:mod:`qlayer.envs.lock`)."""
    return env_prefix(env) + "lock.json"


def env_resolution(spec: str) -> str:
    """Which lock the requirements with spec hash ``spec`` resolved to."""
    return f"envs/resolved/{check_env_hash(spec)}.json"


def env_archive(env: str) -> str:
    """AWS: the built environment ``env``, a gzipped tar of its packages' folder."""
    return env_prefix(env) + "env.tar.gz"


def env_built(env: str) -> str:
    """AWS: what the build of ``env`` recorded (sizes), written after the archive."""
    return env_prefix(env) + "built.json"


def env_error(env: str) -> str:
    """AWS: why the last build of ``env`` failed (the installer's message)."""
    return env_prefix(env) + "error.json"


#: AWS: the base the runner image holds (:meth:`qlayer.envs.Base.to_json`), written by
#: the environment build; a client resolves requirements against it.
ENV_BASE = "envs/base.json"
