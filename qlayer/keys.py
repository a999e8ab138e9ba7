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
"""

from __future__ import annotations

import re

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is safe as one path segment, else raise ValueError."""
    if not _SAFE_NAME.match(name) or name in {".", ".."}:
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128 characters, not starting with '.' or '-')"
        )
    return name


def check_relative_path(path: str, what: str = "file path") -> str:
    """Return ``path`` if it is a safe relative path (no '..', no leading '/')."""
    if not _SAFE_PATH.match(path) or any(part in {".", ".."} for part in path.split("/")):
        raise ValueError(
            f"invalid {what} {path!r}: a relative path of letters, digits, '.', '_', '-' "
            "and '/' without '..'"
        )
    return path


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
