"""The ``rpcgen`` command line: parse options, call the API, map errors to exit codes.

Exit codes: 0 ok, 1 drift (``generate --check``), 2 bad usage or bad spec,
3 merge conflicts written, 4 internal error (a bug: please report it), 5 another
rpcgen is writing the same project (run it again when that one has finished).

Only typer is imported at module level, so ``rpcgen --help`` stays fast; the
generator (jinja2, black, tomlkit, merge3) is imported by the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["app", "main"]

EXIT_OK, EXIT_DRIFT, EXIT_USAGE, EXIT_CONFLICT, EXIT_INTERNAL, EXIT_BUSY = 0, 1, 2, 3, 4, 5

app = typer.Typer(
    name="rpcgen",
    help="Generate RPC service clients, server entrypoints and tests from a spec.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_ROOT = typer.Option(
    "--project-dir",
    "-C",
    help="Project root (where rpcgen.toml or pyproject.toml lives).",
    file_okay=False,
)


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"rpcgen {version('rpcgen')}")
        except PackageNotFoundError:
            typer.echo("rpcgen (not installed)")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    """rpcgen: RPC service processes without the plumbing."""


def _report(plan: Any, *, diff: bool, only_drift: bool = False) -> None:
    from .sync import DRIFT, Action

    for decision in plan.decisions:
        if decision.action is Action.UNCHANGED and not decision.reason:
            continue
        if only_drift and decision.action not in DRIFT:
            continue
        typer.echo(decision.line())
        # A user-owned file's template change is said once (the lock moves on): show it
        # now, or it is gone by the time anyone runs --diff.
        if diff or decision.source is not None:
            text = decision.diff()
            if text:
                typer.echo(text, nl=not text.endswith("\n"))
    for note in plan.notes:
        typer.echo(f"note: {note}", err=True)


@app.command(help="Add a service to the spec and render it.")
def new(
    name: Annotated[str, typer.Argument(help="Service name in CapWords, e.g. PriceFetcher.")],
    port: Annotated[
        int | None,
        typer.Option(help="Port (default: next above the highest in the spec, from 50000)."),
    ] = None,
    server_module: Annotated[
        str | None,
        typer.Option(help="Module of the server class (default: <package>.<name>_server)."),
    ] = None,
    depends_on: Annotated[
        list[str] | None,
        typer.Option("--depends-on", help="A service this one depends on (repeatable)."),
    ] = None,
    health: Annotated[
        bool, typer.Option("--health/--no-health", help="Enable health checks.")
    ] = True,
    health_interval: Annotated[float, typer.Option(help="Seconds between health checks.")] = 60.0,
    max_failures: Annotated[int, typer.Option(help="Consecutive failures before a restart.")] = 3,
    auto_restart: Annotated[
        bool, typer.Option("--auto-restart/--no-auto-restart", help="Restart on repeated failure.")
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would change; write nothing.")
    ] = False,
    root: Annotated[Path, _ROOT] = Path("."),
) -> None:
    """Add a service to the spec (creating the spec if needed) and render it."""
    from .api import new_service
    from .errors import ConflictsWritten
    from .spec import HealthSpec

    try:
        result = new_service(
            root,
            name,
            port=port,
            server_module=server_module,
            health=HealthSpec(health, health_interval, max_failures, auto_restart),
            depends_on=depends_on or (),
            dry_run=dry_run,
        )
    except ConflictsWritten as exc:
        _report(exc.plan, diff=False)
        raise
    added = result.added
    if added.created_spec:
        typer.echo(f"{'would create' if dry_run else 'created'} {added.location.label}")
    how = "chosen: next free above the highest in the spec" if added.port_chosen else "as given"
    typer.echo(f"service {added.service.name} on port {added.service.port} ({how})")
    _report(result.result.plan, diff=False)


@app.command(help="Re-render every service from the spec and its server class.")
def generate(
    check: Annotated[
        bool, typer.Option("--check", help="Render in memory; print the drift; exit 1 if any.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="One line per file; write nothing.")
    ] = False,
    diff: Annotated[
        bool,
        typer.Option("--diff", help="Show the diffs; write nothing (implies --dry-run)."),
    ] = False,
    root: Annotated[Path, _ROOT] = Path("."),
) -> None:
    """Re-render every service from the spec and its server class.

    ``--check``, ``--dry-run`` and ``--diff`` only read. ``--diff`` shows, for each
    file, what a run would write, and for a user-owned file whose template
    changed, how the template's render changed.
    """
    from .api import generate as run_generate
    from .api import plan_generate
    from .errors import ConflictsWritten
    from .sync import DRIFT, Action

    if check:
        plan = plan_generate(root)
        _report(plan, diff=True, only_drift=True)
        if plan.drift:
            if plan.conflicts and all(
                d.action in (Action.CONFLICT,) for d in plan.decisions if d.action in DRIFT
            ):
                # Running generate would only say this again: what to do is resolve them.
                typer.echo(
                    f"drift: resolve the <<<<<<< blocks in {', '.join(plan.conflicts)} "
                    "(keep what you want, delete the markers), then run `rpcgen generate`",
                    err=True,
                )
            else:
                typer.echo("drift: generated code is out of date; run `rpcgen generate`", err=True)
            raise typer.Exit(EXIT_DRIFT)
        typer.echo("up to date")
        return
    try:
        result = run_generate(root, dry_run=dry_run or diff)
    except ConflictsWritten as exc:
        _report(exc.plan, diff=diff)
        raise
    _report(result.plan, diff=diff)


@app.command("list", help="List the services in the spec.")
def list_(root: Annotated[Path, _ROOT] = Path(".")) -> None:
    """List the services in the spec."""
    from .api import list_services

    spec = list_services(root)
    typer.echo(f"{'service':<24} {'port':>5}  {'health':<22} {'server'}")
    for svc in spec.services:
        h = svc.health
        action = "restart" if h.auto_restart else "alert"
        health = f"every {h.interval_s:g}s, {h.max_consecutive_failures}x, {action}"
        health = health if h.enabled else "off"
        typer.echo(
            f"{svc.name:<24} {svc.port:>5}  {health:<22} {svc.server_module}.{svc.server_class}"
        )


@app.command(help="List the rpcgen servers running here, and Ray-backed services.")
def ps(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    all_users: Annotated[
        bool, typer.Option("--all", help="Show other users' servers too (marked as theirs).")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            metavar="ADDRESS",
            help="Ray cluster to list (default: $RAY_ADDRESS, else the one `ray start` ran here).",
        ),
    ] = None,
) -> None:
    """List running rpcgen servers: by process title, with their directory generation."""
    import json

    from rpcgen.runtime.errors import ServiceUnavailable
    from rpcgen.runtime.process import list_servers
    from rpcgen.runtime.ray_cluster import list_cluster_services

    everyone = list_servers()
    servers = everyone if all_users else [s for s in everyone if s.mine]
    hidden = len(everyone) - len(servers)
    try:
        cluster, actors = list_cluster_services(ray_address)
    except ServiceUnavailable as exc:  # the local list is still worth printing
        typer.echo(f"rpcgen: warning: {exc.reason} ({exc.port}); Ray services not listed", err=True)
        cluster, actors = None, []
    if as_json:
        rows = [s.as_dict() for s in servers]
        rows += [{"backend": "ray", "cluster": cluster, **actor} for actor in actors]
        typer.echo(json.dumps(rows, indent=2, sort_keys=True, default=str))
        return
    if not servers and not actors:
        typer.echo("no rpcgen servers running")
    if servers:
        typer.echo(
            f"{'service':<24} {'port':>5} {'pid':>7} {'ppid':>7} {'owner':>7} {'gen':>4} "
            f"{'uptime':>9} {'rss':>9}  user"
        )
    for s in servers:
        owner = str(s.owner_pid) if s.owner_alive else f"{s.owner_pid}!"
        rss = f"{s.rss_bytes / 2**20:.1f}M"
        gen = str(s.generation) if s.generation is not None else "-"
        user = s.user if s.mine else f"{s.user} (another user)"
        typer.echo(
            f"{s.service:<24} {s.port:>5} {s.pid:>7} {s.parent_pid:>7} {owner:>7} {gen:>4} "
            f"{_duration(s.uptime_s):>9} {rss:>9}  {user}"
        )
    if any(not s.owner_alive for s in servers):
        typer.echo("! owner process gone: an orphan (it exits by itself within moments)")
    if hidden:
        typer.echo(f"({hidden} server process(es) of other users not shown; --all shows them)")
    if actors:
        typer.echo(f"Ray actors (cluster {cluster}):")
        typer.echo(f"{'service':<24} {'namespace':<12} {'pid':>7} {'node':<15} {'owner':<24}")
        for a in actors:
            made_by = a.get("owner") or {}
            who = f"{made_by.get('pid', '?')}@{made_by.get('host', '?')}"
            who += " (detached)" if a.get("detached") else ""
            typer.echo(
                f"{a['service']:<24} {a['namespace']:<12} {a.get('pid') or '?':>7} "
                f"{a.get('node_ip', '?'):<15} {who:<24}{'  ' + a['error'] if 'error' in a else ''}"
            )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _usage_errors() -> tuple[type[Exception], ...]:
    """click's UsageError; recent typer vendors click as typer._click, older uses click."""
    import importlib

    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            error: type[Exception] = importlib.import_module(name).UsageError
        except (ImportError, AttributeError):
            continue
        return (error,)  # importing click too would cost ~5 ms on every run
    return ()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every error into one line and an exit code."""
    usage_errors = _usage_errors()
    args = sys.argv[1:] if argv is None else argv
    try:
        result = app(args=args, prog_name="rpcgen", standalone_mode=False)
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0))
    except usage_errors as exc:
        message = str(getattr(exc, "format_message", exc.__str__)())
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `rpcgen`: show the help
            typer.echo(message)
            return EXIT_USAGE
        typer.echo(f"rpcgen: error: {' '.join(message.split())}", err=True)
        return EXIT_USAGE
    except typer.Abort:
        typer.echo("rpcgen: aborted", err=True)
        return 130
    except Exception as exc:
        from .errors import RpcgenError

        if isinstance(exc, RpcgenError):
            for line in exc.lines():
                typer.echo(f"rpcgen: error: {line}", err=True)
            return exc.exit_code
        typer.echo(
            f"rpcgen: internal error: {type(exc).__name__}: {exc} (please report this bug)",
            err=True,
        )
        return EXIT_INTERNAL
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
