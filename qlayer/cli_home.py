"""The ``qlayer`` commands about the local home and its daemon: ``up``, ``down``,
``ui``, ``serve``, ``doctor`` and ``prune`` (registered on :data:`qlayer.cli.app`)."""

from __future__ import annotations

import typer

from qlayer.cli_app import (
    _TARGET,
    HomeOption,
    JsonOption,
    _client,
    _emit_json,
    _local_only,
    app,
    err,
    out,
)
from qlayer.errors import QlayerError


@app.command()
def prune(
    job_ids: list[str] = typer.Argument(None, help="Top-level jobs to prune, each with its tree."),
    older_than: str | None = typer.Option(
        None, "--older-than", help="Only jobs that ended this long ago: 90m, 12h, 7d, 2w."
    ),
    status_filter: list[str] = typer.Option(
        [], "--status", help="Only jobs that ended so: DONE, ERROR, CANCELLED (repeatable)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; remove nothing."),
    as_json: bool = JsonOption,
    home: str | None = HomeOption,
) -> None:
    """Remove ended jobs (with their fan-out children) and their files; never running ones.

    Without a filter: the default retention (QLAYER_RETENTION_DAYS, 30 days).
    """
    from qlayer.local.retention import parse_age

    _local_only("prune")
    try:
        age = parse_age(older_than) if older_than else None
        report = _client(home).prune(
            job_ids or None, older_than_s=age, statuses=status_filter or None, dry_run=dry_run
        )
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        _emit_json(report.to_json())
        return
    out.print(report.summary())


@app.command()
def up(
    workers: int | None = typer.Option(
        None, "--workers", help="Worker processes (default: cores, at least 2)."
    ),
    home: str | None = HomeOption,
) -> None:
    """Start the local daemon (run starts it when needed)."""
    from qlayer.client import Client

    _local_only("up")
    client = Client.local(home, workers=workers)
    pid = client.up()
    out.print(f"qlayer daemon running (pid {pid}, home {client.home.root})")


@app.command()
def ui(
    port: int = typer.Option(8765, "--port", "-p", help="Port (0: any free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback default)."),
    home: str | None = HomeOption,
) -> None:
    """Serve the live dashboard; prints its URL (with this home's token). Needs the ui extra."""
    from qlayer.local.paths import Home

    try:
        from qlayer.ui.serve import serve
    except ImportError as exc:
        raise QlayerError(
            f"the dashboard needs the ui extra: pip install 'qlayer[ui]' ({exc})"
        ) from exc
    target = _TARGET["target"] or "local"
    token = Home.resolve(home).token()
    refresh = 0.5 if target == "local" else 2.0
    serve(_client(home), token=token, host=host, port=port, target=target, refresh_s=refresh)


@app.command()
def serve(
    port: int = typer.Option(8000, "--port", "-p", help="Port (0: any free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback default)."),
    home: str | None = HomeOption,
) -> None:
    """Serve the Qiskit Serverless gateway: its client and functions run on this home."""
    _local_only(
        "serve",
        "'qlayer serve' runs the Qiskit Serverless gateway on this machine only, over the "
        "local home; it does not serve an AWS stack. Run it without --target aws.",
    )
    try:
        from qlayer.serverless.serve import serve as run_gateway
    except ImportError as exc:
        raise QlayerError(
            f"the gateway needs the ui extra: pip install 'qlayer[ui]' ({exc})"
        ) from exc
    run_gateway(home, host=host, port=port)


@app.command()
def down(home: str | None = HomeOption) -> None:
    """Stop the local daemon. Unfinished jobs resume when it starts again."""
    _local_only("down")
    stopped = _client(home).down()
    out.print("qlayer daemon stopped" if stopped else "qlayer daemon was not running")


@app.command()
def doctor(
    repair: bool = typer.Option(
        False, "--repair", help="Back up a corrupt state database and rebuild it."
    ),
    home: str | None = HomeOption,
) -> None:
    """Check this home's state (database integrity, artifacts writable); repair it."""
    from qlayer.local import control
    from qlayer.local import doctor as checks
    from qlayer.local.paths import Home

    _local_only("doctor")
    where = Home.resolve(home)
    problems = checks.check(where)
    if problems and repair and any("database" in p for p in problems):
        if control.stop(where):
            out.print("stopped the daemon to repair its database")
        backup, kept = checks.repair(where)
        out.print(f"backed up the corrupt database to {backup}")
        out.print("rebuilt it with " + ", ".join(f"{n} {t}" for t, n in kept.items()))
        out.print("run `qlayer up` (or any run) to start the daemon again")
        problems = checks.check(where)
    for problem in problems:
        err.print(f"[red]problem:[/red] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    out.print(f"{where.root}: state database and artifacts are fine")
