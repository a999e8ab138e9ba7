"""The ``qlayer`` command's commands (typer): submit programs, follow jobs, fetch results,
logs and files.

Every read command takes ``--json`` for scripts. State lives under ``$QLAYER_HOME``
(default ``~/.qlayer``). The entry point is :func:`qlayer.cli.main`, which submits a plain
``qlayer run`` without importing this module (or typer, rich, pydantic).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from qlayer.cli import submit_local, submitted_hint
from qlayer.errors import JobCancelled, JobFailed, QlayerError

app = typer.Typer(
    name="qlayer",
    help="Run quantum–classical programs as durable staged jobs. Submit, walk away, come back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

HomeOption = typer.Option(
    None, "--home", envvar="QLAYER_HOME", help="State folder (default ~/.qlayer)."
)
JsonOption = typer.Option(False, "--json", help="Print JSON for scripts.")


_TARGET: dict[str, str | None] = {"target": "local", "stack": "Qlayer", "region": None}


@app.callback()
def _global(
    target: str = typer.Option(
        "local",
        "--target",
        "-t",
        envvar="QLAYER_TARGET",
        help="Where jobs run: local, aws, or cloud-box (the stack in a local box; 'run' only).",
    ),
    stack: str = typer.Option(
        "Qlayer", "--stack", envvar="QLAYER_STACK", help="With --target aws: the stack's name."
    ),
    region: str | None = typer.Option(
        None, "--region", envvar="AWS_REGION", help="With --target aws: the stack's region."
    ),
) -> None:
    """Run quantum–classical programs as durable staged jobs. Submit, walk away, come back."""
    if target not in ("local", "aws", "cloud-box"):
        raise typer.BadParameter("use local, aws or cloud-box", param_hint="--target")
    _TARGET.update(target=target, stack=stack, region=region)


def _client(home: str | None) -> Any:
    from qlayer.client import Client

    if _TARGET["target"] == "cloud-box":
        err.print(
            "the cloud box lives for one program: qlayer --target cloud-box run PROGRAM "
            "[--arg k=v ...] --wait"
        )
        raise typer.Exit(2)
    if _TARGET["target"] == "aws":
        return Client.aws(stack=_TARGET["stack"] or "Qlayer", region=_TARGET["region"])
    return Client.local(home)


def _local_only(command: str, why: str | None = None) -> None:
    """Refuse ``command`` under ``--target aws`` (exit 2), saying ``why`` (default: it
    manages the local daemon)."""
    if _TARGET["target"] != "local":
        said = (
            why or f"'qlayer {command}' manages the local daemon; with --target aws there is none"
        )
        err.print(said, highlight=False)
        raise typer.Exit(2)


def _paused(client: Any) -> str | None:
    """Why the local daemon paused new work (a full disk, say), or None."""
    from qlayer.local.health import paused_reason

    home = getattr(client, "home", None)
    return paused_reason(home, client.daemon_pid()) if home is not None else None


def _emit_json(value: Any) -> None:
    from qlayer.plain import plain

    sys.stdout.write(json.dumps(plain(value), indent=2) + "\n")


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"


#: Off a terminal (a log file, CI), a change of the items counter alone is printed at most
#: this often; a new status or stage is printed at once.
PLAIN_PROGRESS_EVERY_S = 10.0


def plain_progress(
    emit: Any, *, every_s: float = PLAIN_PROGRESS_EVERY_S, clock: Any = time.monotonic
) -> Any:
    """A progress callback for output that is not a terminal: one line per new status or
    stage, and the items counter at most every ``every_s`` seconds (a 3,000-child fan-out
    printed a line per poll: thousands of lines in a log)."""
    last: dict[str, Any] = {"phase": None, "text": None, "at": float("-inf")}

    def line(info: dict[str, Any]) -> None:
        text = _describe_progress(info)
        phase = (info.get("status"), info.get("stage"), info.get("seq"))
        now = clock()
        if text == last["text"] or (phase == last["phase"] and now - last["at"] < every_s):
            return
        last.update(phase=phase, text=text, at=now)
        emit(text)

    return line


def _progress_printer(show: bool) -> Any:
    """A progress callback: a live status line on a terminal, plain lines elsewhere."""
    if not show:
        return None, None
    if err.is_terminal:
        status = err.status("submitted", spinner="dots")
        status.start()

        def update(info: dict[str, Any]) -> None:
            status.update(_describe_progress(info))

        return update, status

    return plain_progress(lambda text: err.print(text, highlight=False)), None


def _describe_progress(info: dict[str, Any]) -> str:
    text = f"[bold]{info['status']}[/bold]"
    if info.get("stage"):
        text += f"  stage {info['stage']} (step {info['seq']})"
    children = info.get("children")
    if children:
        text += f"  items {children['done']}/{children['total']}"
    if info.get("status") == "WAITING_FOR_QPU" and info.get("provider_job_ids"):
        text += f"  provider job {info['provider_job_ids'][-1]}"
    return text


def _wait_and_print(job: Any, as_json: bool, timeout: float | None) -> None:
    callback, status = _progress_printer(show=True)
    try:
        result = job.result(wait=True, timeout=timeout, progress=callback)
    except JobFailed as exc:
        if status:
            status.stop()
        err.print(f"[red]job {job.job_id} failed:[/red] {exc.reason}")
        err.print(f"see the traceback with: qlayer logs {job.job_id}")
        raise typer.Exit(1) from exc
    except JobCancelled as exc:
        if status:
            status.stop()
        err.print(f"[yellow]job {job.job_id} was cancelled[/yellow]")
        raise typer.Exit(1) from exc
    except TimeoutError as exc:
        if status:
            status.stop()
        err.print(f"[yellow]{exc}[/yellow]; it keeps running: qlayer status {job.job_id}")
        raise typer.Exit(2) from exc
    if status:
        status.stop()
    if as_json:
        _emit_json(result)
    else:
        from qlayer.plain import plain

        out.print_json(json.dumps(plain(result)))
        files = job.files()
        if files:
            err.print(f"files: {', '.join(files)}  (qlayer download {job.job_id} NAME)")


@app.command()
def run(
    program: Path = typer.Argument(..., help="A program file, or a folder with main.py."),
    arg: list[str] = typer.Option(
        [],
        "--arg",
        "-a",
        help="An argument key=value, or key=@FILE (.qpy circuits, .npy array, .json) (repeatable).",
    ),
    arg_file: Path | None = typer.Option(
        None, "--arg-file", help="A JSON object of arguments (--arg overrides its keys)."
    ),
    backend: str | None = typer.Option(
        None, "--backend", "-b", help="Default backend for Execute."
    ),
    notify: list[str] = typer.Option(
        [],
        "--notify",
        help="Announce the job's end: a webhook URL (signed JSON POST) or 'desktop' (repeatable).",
    ),
    max_cost_usd: float | None = typer.Option(
        None,
        "--max-cost-usd",
        help="A budget: an execute that would take the job's spend past it ends the job.",
    ),
    wait: bool = typer.Option(False, "--wait", "-w", help="Wait and print the result."),
    timeout: float | None = typer.Option(
        None, "--timeout", help="With --wait: give up after N seconds."
    ),
    as_json: bool = JsonOption,
    home: str | None = HomeOption,
) -> None:
    """Submit a program. Returns at once with the job id (unless --wait)."""
    from qlayer.cliargs import parse_cli_argument, read_arguments_file
    from qlayer.program import bundle, load_path

    if _TARGET["target"] == "local":  # the daemon checks the program, already warm
        job = submit_local(_client(home), program, arg, arg_file, backend, notify, max_cost_usd)
    else:
        arguments = read_arguments_file(arg_file) if arg_file is not None else {}
        bundle(program)
        workflow = load_path(program)
        arguments.update(parse_cli_argument(text, workflow) for text in arg)
        if _TARGET["target"] == "cloud-box":
            _run_in_cloud_box(program, arguments, backend, timeout, as_json)
            return
        job = _client(home).run(
            program, arguments, backend=backend, notify=notify or None, max_cost_usd=max_cost_usd
        )
    if wait:
        if not as_json:
            err.print(
                f"job [bold]{job.job_id}[/bold] submitted; waiting (Ctrl-C leaves it running)"
            )
        try:
            _wait_and_print(job, as_json, timeout)
        except KeyboardInterrupt:
            err.print(f"\nleft running: qlayer status {job.job_id}")
            raise typer.Exit(130) from None
        return
    if as_json:
        _emit_json({"job_id": job.job_id})
    else:
        out.print(f"job [bold]{job.job_id}[/bold] submitted")
        out.print(submitted_hint(job.job_id))


def _run_in_cloud_box(
    program: Path,
    arguments: dict[str, Any],
    backend: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """``--target cloud-box run``: synthesize the stack, start the box, run the program
    through ``Client.aws``, print the states its execution entered, the result and the
    logs, stop the box. Always waits (the box ends with the run)."""
    try:
        from qlayer.cloudbox.oneshot import run_in_box
    except ImportError as exc:
        err.print(f"the cloud box needs: pip install -e '.[infra,cloudbox]' ({exc})")
        raise typer.Exit(2) from exc

    def ready(box: Any) -> None:
        err.print(f"cloud box up: moto on {box.server.endpoint}, stack {box.synthesis.stack_name}")

    err.print("synthesizing the stack and starting the cloud box ...")
    callback, spinner = _progress_printer(show=not as_json)
    try:
        run = run_in_box(
            program,
            arguments,
            backend=backend,
            timeout=timeout if timeout is not None else 900,
            progress=callback,
            on_ready=ready,
        )
    except TimeoutError as exc:
        err.print(f"[yellow]{exc}[/yellow]")
        raise typer.Exit(2) from exc
    finally:
        if spinner:
            spinner.stop()
    if as_json:
        _emit_json(
            {
                "job_id": run.job_id,
                "status": run.status,
                "states": run.states,
                "result": run.result,
                "error": run.error,
                "logs": run.logs,
            }
        )
    else:
        err.print(f"job [bold]{run.job_id}[/bold] {run.status} in {run.seconds:.1f} s")
        err.print("[bold]states entered[/bold]: " + " -> ".join(run.states), highlight=False)
        if run.status == "DONE":
            from qlayer.plain import plain

            out.print_json(json.dumps(plain(run.result)))
        else:
            err.print(f"[red]error[/red]: {(run.error or {}).get('message')}")
        err.print("[bold]logs[/bold]:")
        sys.stdout.write(run.logs if run.logs.endswith("\n") or not run.logs else run.logs + "\n")
    if run.status != "DONE":
        raise typer.Exit(1)


@app.command()
def status(job_id: str, as_json: bool = JsonOption, home: str | None = HomeOption) -> None:
    """A job's status, current stage, provider job ids and usage."""
    client = _client(home)
    job = client.job(job_id)
    info = job.info()
    info["usage"] = job.usage()
    paused = _paused(client)
    if as_json:
        _emit_json({**info, "daemon_paused": paused})
        return
    if paused:
        err.print(f"[yellow]{paused}[/yellow]", highlight=False)
    table = Table(show_header=False, box=None)
    for key in ("job_id", "workflow", "status", "stage", "seq", "backend", "message"):
        if info.get(key) is not None:
            table.add_row(key, str(info[key]))
    table.add_row("created", _when(info["created_at"]))
    if info.get("finished_at"):
        table.add_row("finished", _when(info["finished_at"]))
    if info.get("children"):
        table.add_row("items", f"{info['children']['done']}/{info['children']['total']} done")
    if info.get("provider_job_ids"):
        table.add_row("provider jobs", ", ".join(info["provider_job_ids"]))
    for warning in info.get("warnings") or []:
        table.add_row("warning", warning)
    if info.get("note"):
        table.add_row("daemon", f"{info.get('daemon', '')}: {info['note']}")
    used = info.get("usage") or {}
    if used:
        table.add_row(
            "usage",
            f"stages {used['stage_seconds']:.2f} s, simulators {used['simulator_seconds']:.2f} s, "
            f"QPU {used['qpu_seconds']:.2f} s, {used['shots']} shots, "
            f"${used.get('cost_usd', 0.0):.4f}",
        )
    out.print(table)


@app.command()
def result(
    job_id: str,
    wait: bool = typer.Option(
        False, "--wait", "-w", help="Wait for the job to end, showing progress."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="With --wait: give up after N seconds."
    ),
    as_json: bool = JsonOption,
    home: str | None = HomeOption,
) -> None:
    """The final result of a job."""
    job = _client(home).job(job_id)
    if wait:
        _wait_and_print(job, as_json, timeout)
        return
    info = job.info()
    if info["status"] not in ("DONE", "ERROR", "CANCELLED"):
        err.print(f"job {job_id} is {info['status']} (stage {info['stage']}); use --wait")
        raise typer.Exit(2)
    _wait_and_print(job, as_json, timeout=0)


@app.command()
def logs(
    job_id: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends."),
    children: bool = typer.Option(False, "--children", help="Include fan-out children's logs."),
    home: str | None = HomeOption,
) -> None:
    """Everything the job's stages logged, tracebacks included."""
    job = _client(home).job(job_id)
    shown = 0
    while True:
        text = job.logs(children=children)
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown = len(text)
        if not follow or job.status().is_final:
            break
        time.sleep(0.5)


@app.command()
def cancel(job_id: str, home: str | None = HomeOption) -> None:
    """Cancel a job, its fan-out children and its provider jobs."""
    job = _client(home).job(job_id)
    if job.cancel():
        deadline = time.monotonic() + 30
        while not job.status().is_final and time.monotonic() < deadline:
            time.sleep(0.05)
        out.print(f"job {job_id}: {job.status().value}")
    else:
        out.print(f"job {job_id} had already ended ({job.status().value})")


@app.command()
def jobs(
    limit: int = typer.Option(20, "--limit", "-n"),
    status_filter: str | None = typer.Option(None, "--status", help="Only jobs with this status."),
    as_json: bool = JsonOption,
    home: str | None = HomeOption,
) -> None:
    """A table of recent jobs."""
    client = _client(home)
    listed = [job.info() for job in client.jobs(limit=limit, status=status_filter)]
    if as_json:
        _emit_json(listed)
        return
    if paused := _paused(client):
        err.print(f"[yellow]{paused}[/yellow]", highlight=False)
    table = Table("workflow", "status", "stage", "created", "finished")
    table.add_column("job", no_wrap=True)
    colours = {"DONE": "green", "ERROR": "red", "CANCELLED": "yellow"}
    for info in listed:
        colour = colours.get(info["status"], "cyan")
        table.add_row(
            info["workflow"],
            f"[{colour}]{info['status']}[/{colour}]",
            info["stage"] or "",
            _when(info["created_at"]),
            _when(info["finished_at"]),
            info["job_id"],
        )
    out.print(table)
    note = next((info["note"] for info in listed if info.get("note")), None)
    if note:
        out.print(f"[yellow]note:[/yellow] {note}")


@app.command()
def files(job_id: str, as_json: bool = JsonOption, home: str | None = HomeOption) -> None:
    """Files and plots the job's stages saved."""
    names = _client(home).job(job_id).files()
    if as_json:
        _emit_json(names)
    else:
        for name in names:
            out.print(name, markup=False, highlight=False)


@app.command()
def download(
    job_id: str,
    path: str = typer.Argument(..., help="A name from 'qlayer files'."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write it."),
    home: str | None = HomeOption,
) -> None:
    """Copy a file the job saved to this folder (or --output)."""
    target = _client(home).job(job_id).download(path, output)
    out.print(f"wrote {target}", markup=False, highlight=False)


@app.command()
def timeline(job_id: str, as_json: bool = JsonOption, home: str | None = HomeOption) -> None:
    """The job's stage events in order."""
    events = _client(home).job(job_id).timeline()
    if as_json:
        _emit_json(events)
        return
    for event in events:
        stamp = datetime.fromtimestamp(event["at"]).strftime("%H:%M:%S.%f")[:-3]
        detail = json.dumps(event["detail"]) if event["detail"] else ""
        out.print(
            f"{stamp}  {event['seq'] if event['seq'] is not None else '-':>4}  "
            f"{event['stage'] or '':<16} {event['event']:<22} {detail}",
            highlight=False,
        )


@app.command()
def usage(job_id: str, as_json: bool = JsonOption, home: str | None = HomeOption) -> None:
    """Shots, QPU / simulator / stage compute seconds and the cost of a job."""
    used = _client(home).job(job_id).usage()
    if as_json:
        _emit_json(used)
        return
    table = Table(show_header=False, box=None)
    table.add_row("stage compute", f"{used['stage_seconds']:.3f} s")
    table.add_row("simulators", f"{used['simulator_seconds']:.3f} s")
    table.add_row("QPU", f"{used['qpu_seconds']:.3f} s")
    if used.get("session_seconds"):
        table.add_row("QPU sessions", f"{used['session_seconds']:.3f} s")
    table.add_row("shots", str(used["shots"]))
    table.add_row("execute requests", str(used["executes"]))
    table.add_row("cost", f"${used.get('cost_usd', 0.0):.4f} (qlayer.pricing's prices)")
    if used["provider_jobs"]:
        table.add_row("provider jobs", ", ".join(used["provider_jobs"]))
    out.print(table)


# The commands about programs and backends (describe, estimate, backends) live in
# qlayer/cli_programs.py, those about the local home and its daemon (up, down, ui,
# doctor, prune) in qlayer/cli_home.py; importing them registers them on `app`.
from qlayer import cli_home, cli_programs  # noqa: E402, F401


def main() -> None:
    """The whole CLI (typer): qlayer errors become one clear line and exit code 1."""
    try:
        app()
    except Exception as exc:
        fail(exc)


def fail(exc: Exception) -> NoReturn:
    """Print ``exc`` as one clear line and exit 1; re-raise one it cannot explain."""
    if isinstance(exc, QlayerError):
        err.print(f"[red]error:[/red] {exc}", highlight=False)
    elif isinstance(exc, sqlite3.OperationalError):  # one the state module did not turn into ours
        err.print(
            f"[red]error:[/red] the qlayer state database could not be used: {exc}. "
            "Try again; if it persists, 'qlayer down' and 'qlayer up'.",
            highlight=False,
        )
    elif isinstance(exc, sqlite3.DatabaseError):  # met after the database opened (a damaged page)
        from qlayer.local.doctor import describe

        err.print(f"[red]error:[/red] {describe(exc, Path('qlayer.db'))}", highlight=False)
    else:
        explained = _explain_aws(exc)
        if explained is None:
            raise exc
        err.print(f"[red]error:[/red] {explained}", highlight=False)
    sys.exit(1)


def _explain_aws(exc: BaseException) -> str | None:
    """One line for an AWS client failure (only when botocore is in use at all)."""
    if "botocore" not in sys.modules:
        return None
    from qlayer.aws.reach import explain

    return explain(exc)
