"""The ``qlayer`` commands about programs and backends, before any job runs:
``describe``, ``estimate`` and ``backends`` (registered on :data:`qlayer.cli.app`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from qlayer.cli_app import HomeOption, JsonOption, _client, _emit_json, app, err, out


@app.command()
def backends(as_json: bool = JsonOption, home: str | None = HomeOption) -> None:
    """Every backend the configuration knows."""
    listed = _client(home).backends()
    if as_json:
        _emit_json(listed)
        return
    wide = out.width >= 120
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    table.add_column("backend", no_wrap=True)
    table.add_column("provider", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("qubits", justify="right", no_wrap=True)
    table.add_column("method", no_wrap=True)
    table.add_column("jobs", justify="right", no_wrap=True)
    if wide:
        table.add_column("description")
    for info in listed:
        row = [
            info["name"],
            info["provider"],
            info["kind"],
            str(info["num_qubits"]) if info["num_qubits"] else "any",
            _SHORT_METHODS.get(info["method"], info["method"]),
            str(info["max_concurrency"]),
        ]
        table.add_row(*row, *([info["description"]] if wide else []))
    out.print(table)
    if not wide:
        out.print(
            "qubits 'any': as many as memory allows; jobs: how many run at once. "
            "--json, or a wider terminal, adds each backend's description."
        )


@app.command()
def estimate(
    program: Path = typer.Argument(..., help="A program file, or a folder with main.py."),
    arg: list[str] = typer.Option([], "--arg", "-a", help="An argument key=value (repeatable)."),
    arg_file: Path | None = typer.Option(
        None, "--arg-file", help="A JSON object of arguments (--arg overrides its keys)."
    ),
    backend: str | None = typer.Option(
        None, "--backend", "-b", help="The backend to price for (default: the workflow's)."
    ),
    timeout: float | None = typer.Option(None, "--timeout", help="Give up after N seconds."),
    as_json: bool = JsonOption,
    home: str | None = HomeOption,
) -> None:
    """What a program would cost on a backend: run here on a free stand-in, then priced."""
    from qlayer import estimate as estimates
    from qlayer.cliargs import parse_cli_argument, read_arguments_file
    from qlayer.client import Client
    from qlayer.program import bundle, load_path

    bundle(program)
    workflow = load_path(program)
    arguments = read_arguments_file(arg_file) if arg_file is not None else {}
    arguments.update(parse_cli_argument(text, workflow) for text in arg)
    target = backend or workflow.backend
    stand_in = estimates.stand_in_for(target)
    client = Client.local(home)
    job = client.run(program, arguments, backend=stand_in)
    if not as_json:
        err.print(f"running {job.job_id} on {stand_in} to see what it asks for...")
    job.wait(timeout=timeout)
    found = estimates.of_job(job, target)
    if as_json:
        _emit_json({"job_id": job.job_id, "status": job.status().value, **found.to_json()})
        return
    table = Table("stage", "requests", "shots", "QPU s (est.)", "USD (est.)", box=box.SIMPLE_HEAD)
    for row in [*found.stages, found.total]:
        table.add_row(
            row.stage, str(row.requests), str(row.shots), f"{row.qpu_seconds:.1f}", f"{row.usd:.4f}"
        )
    out.print(f"estimate for {target} (stand-in run {job.job_id}: {job.status().value})")
    out.print(table)
    for said in found.assumptions:
        out.print(f"  assumes: {said}", markup=False, highlight=False)


_SHORT_METHODS = {"matrix_product_state": "mps", "density_matrix": "density"}


@app.command()
def describe(program: Path, as_json: bool = JsonOption) -> None:
    """Show a program's stages and parameters without running it."""
    from qlayer.envs import program_requirements
    from qlayer.errors import WorkflowError
    from qlayer.planner import Resources, check_local_stages
    from qlayer.program import bundle, load_path

    files = bundle(program).files
    workflow = load_path(program)
    info = workflow.describe()
    info["requirements"] = list(program_requirements(workflow, files))  # with the folder's
    try:
        info["local"] = {
            "refused": None,
            "warnings": check_local_stages(workflow, Resources.for_this_machine()),
        }
    except WorkflowError as exc:
        info["local"] = {"refused": str(exc), "warnings": []}
    if as_json:
        _emit_json(info)
        return
    out.print(f"{info['name']}  (default backend {info['backend']})", markup=False, style="bold")
    for name, param in info["params"].items():
        default = "required" if param["required"] else f"default {param['default']!r}"
        out.print(f"  --arg {name}=<{param['type']}>  {default}  {param['help']}", markup=False)
    if info["requirements"]:
        out.print(f"  requirements: {', '.join(info['requirements'])}", markup=False)
    for stage in info["stages"]:
        gpus = f", {stage['gpus']} GPU{'s' if stage['gpus'] != 1 else ''}" if stage["gpus"] else ""
        out.print(
            f"  stage {stage['name']}: {stage['kind']}, {stage['vcpus']:g} vCPU{gpus}, "
            f"{stage['memory_mb']} MiB, timeout {stage['timeout_s']} s, "
            f"max_runs {stage['max_runs']}",
            markup=False,
        )
    if info["local"]["refused"]:
        out.print(f"  locally: refused: {info['local']['refused']}", markup=False)
    for warning in info["local"]["warnings"]:
        out.print(f"  locally: {warning}", markup=False)
