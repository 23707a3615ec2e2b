"""``ncfkit collect``: one table of the run summaries of many ``escape`` result files (the rows:
:func:`ncfkit.io.escape_rows`)."""

from __future__ import annotations

import csv
import io as _io

import click

from .options import emit_json, guarded, stderr_console


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


@click.command("collect")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--csv", "as_csv", is_flag=True, help="Write CSV (a header row, then one row per run) on stdout.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {\"rows\": [...]} on stdout.")
@guarded
def command(files, as_csv, as_json):
    """Gather the run summaries of escape result files (ncfkit escape --out) into one table,
    one row per (file, δ): for sweeps over δ, seeds, widths or step sizes.

    Without --csv or --json the table goes to stdout as text.
    """
    from ..errors import InputError
    from ..io import FILE_COLUMNS, RUN_COLUMNS, escape_rows

    if as_csv and as_json:
        raise InputError("give --csv or --json, not both")
    rows = [row for path in files for row in escape_rows(path)]
    columns = FILE_COLUMNS + RUN_COLUMNS
    if as_json:
        emit_json({"columns": list(columns), "rows": rows})
        return
    if as_csv:
        buf = _io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_fmt(row[c]) for c in columns])
        click.echo(buf.getvalue(), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    shown = ("file", "delta", "escaped", "escape_time", "predicted_escape_time", "escape_ratio",
             "saddle_time", "saddle_loss", "saddle_min_hessian_eig", "sparsity_ratio_saddle",
             "path_distance", "status")
    t = Table(title=f"{len(rows)} runs from {len(files)} files")
    for c in shown:
        t.add_column(c, justify="left" if c in ("file", "status") else "right")
    for row in rows:
        t.add_row(*[_fmt(row[c]) for c in shown])
    Console(width=None if stderr_console().is_terminal else 200).print(t)
