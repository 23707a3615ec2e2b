"""``ncfkit sweep``: a grid of escape / kkt / sparsity runs on a Dask cluster (the library:
:mod:`ncfkit.sweep`)."""

from __future__ import annotations

import click

from .options import is_quiet, quiet_option, stderr_console
from .policy import emit_json, guarded


def _progress_bar(console, quiet: bool = False):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("sweep"), BarColumn(),
                    TextColumn("{task.fields[done]}/{task.total} done · {task.fields[running]} running · "
                               "[red]{task.fields[failed]} failed[/]"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, disable=quiet)


@click.command("sweep", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="COMMAND DATA [FLAGS]...")
@click.option("--grid", "grids", multiple=True, metavar="NAME=V1,V2,…",
              help="A grid axis over a flag of COMMAND (its name without dashes) or over data: "
                   "delta=1e-2,1e-3, seed=0:16 (integers 0..15; a:b:step), hidden=20;50,50 (';' when "
                   "values hold commas), data=a.npz,b.npz. Repeat for more axes (all combinations).")
@click.option("--spec", type=click.Path(dir_okay=False), help="A TOML file: command, data, outdir, [flags], [grid].")
@click.option("--outdir", type=click.Path(file_okay=False), help="Folder of the point files, sweep.json, sweep.csv.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes of the local cluster [default: cores].")
@click.option("--scheduler", help="tcp://HOST:PORT of a running Dask scheduler, or in-process (no cluster).")
@click.option("--retries", type=click.IntRange(min=0), help="Reruns of a point whose worker died [default: 2].")
@click.option("--resources", metavar="NAME=N,…",
              help="Dask worker resources each point takes (GPU=1), with --scheduler.")
@click.option("--force", is_flag=True, help="Rerun every point, overwriting what --outdir holds.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (counts, failures, table) on stdout.")
@click.option("--dry-run", is_flag=True, help="List the points (file, state, command line) and run nothing.")
@quiet_option
@guarded
def command(args, grids, spec, outdir, workers, scheduler, retries, resources, force, as_json, dry_run):
    """Run COMMAND (escape, kkt or sparsity) at every point of a grid, each point one result
    file DIR/<settings>.h5, on a local Dask cluster (default), a running Dask cluster
    (--scheduler), or in this process when Dask is not installed.

    Rerunning the same sweep skips complete points (their provenance checked) and reruns
    failed or interrupted ones. Ctrl-C stops it (exit 130; finished points are kept).
    Exit 1 if any point failed. At the end DIR/sweep.csv and DIR/sweep.json hold the
    table of all points (for escape, the columns of `ncfkit collect`).
    """
    from ..errors import RunError
    from ..sweep import parse_resources, plan, resolve_inputs, run_sweep, write_table

    command_name, cmd_args, grid, outdir, workers, retries = resolve_inputs(args, grids, spec, outdir, workers, retries)
    if workers is not None and scheduler is not None:
        raise click.UsageError("--workers sizes the local cluster; a --scheduler's cluster has its own workers")
    resources = parse_resources(resources)
    sweep = plan(command_name, cmd_args, grid, outdir)
    if dry_run:
        return _dry_run(sweep, force, as_json)
    console = stderr_console()
    quiet = is_quiet()  # read here: the callbacks may run on another thread, outside click's context
    bar = _progress_bar(console, quiet)
    task = None

    def on_start(info):
        nonlocal task
        if info["note"] and not quiet:
            console.print(f"[yellow]note:[/] {info['note']}")
        if not quiet:
            console.print(f"sweep {command_name}: {info['total']} points, {info['skipped']} already complete, "
                          + (f"{info['to_run']} to run {info['where']}" if info["to_run"] else "nothing to run"))
        task = bar.add_task("sweep", total=info["to_run"], done=0, running=0, failed=0, rate="")
        bar.start()

    def progress(c):
        speed = bar.tasks[task].speed if task is not None and bar.tasks else None
        bar.update(task, completed=c["done"] + c["failed"], done=c["done"], failed=c["failed"],
                   running=c["running"], rate=f"{speed * 60:.3g} points/min" if speed else "")

    try:
        report = run_sweep(sweep, scheduler=scheduler, workers=workers, retries=retries, force=force,
                           progress=progress, on_start=on_start, resources=resources)
    except KeyboardInterrupt as e:
        bar.stop()
        r = getattr(e, "sweep_report", None)
        if r is not None:
            write_table(sweep)
            console.print(f"interrupted: {len(r.done)} points finished in this run "
                          f"({', '.join(x['name'] for x in r.done[:8])}{' …' if len(r.done) > 8 else ''}), "
                          f"{len(r.skipped)} were complete before, {len(r.failed)} failed, {len(r.not_run)} not "
                          f"run; rerun the same command to finish the sweep")
        raise
    bar.stop()
    columns, rows = write_table(sweep)
    _report(console, sweep, report)
    if as_json:
        emit_json({"outdir": str(sweep.outdir), "points": report.total, "ran": len(report.done),
                   "skipped": len(report.skipped), "failed": [{"name": f["name"], "error": f.get("error")}
                                                             for f in report.failed],
                   "busy": [b["name"] for b in report.busy], "where": report.where,
                   "table": {"columns": columns, "rows": rows}})
    if report.failed:
        raise RunError(f"{len(report.failed)} of {report.total} points failed (table above); rerun the same "
                       "command to retry them")


def _report(console, sweep, report):
    from rich.table import Table

    console.print(f"{len(report.done)} points ran, {len(report.skipped)} were already complete, "
                  f"{len(report.failed)} failed; table: {sweep.outdir / 'sweep.csv'}")
    if report.busy:
        console.print(f"[yellow]{len(report.busy)} points are being run by another sweep[/] "
                      f"({report.busy[0].get('error')}); rerun later to collect them")
    if report.failed:
        t = Table(title=f"{len(report.failed)} failed points")
        for col in ("point", "error"):
            t.add_column(col, overflow="fold")
        for f in report.failed:
            t.add_row(f["name"], f.get("error") or "")
        console.print(t)


def _dry_run(sweep, force, as_json):
    from ..sweep import listing

    points = listing(sweep, force)
    if as_json:
        return emit_json({"outdir": str(sweep.outdir), "points": points})
    for p in points:
        click.echo(f"{p['state']:<10} {p['command_line']}")
