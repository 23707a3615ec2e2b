"""``ncfkit collect``: one table of the run summaries of many ``escape`` result files."""

from __future__ import annotations

import csv
import io as _io
import math

import click

from .options import emit_json, guarded, stderr_console

#: Columns, in order: per file, then per run (``runs/<i>`` attributes of run.h5).
FILE_COLUMNS = ("file", "run", "file_status", "homogeneity", "ncf", "kkt_delta", "active_per_layer",
                "method", "init", "lr", "seed", "loss", "reduction", "fit_slope", "predicted_slope")
RUN_COLUMNS = ("delta", "escaped", "escape_time", "predicted_escape_time", "escape_ratio",
               "predicted_escape_time_w0",
               "saddle_time", "saddle_loss", "saddle_grad_norm", "saddle_min_hessian_eig",
               "saddle_kind", "sparsity_ratio_escape", "sparsity_ratio_saddle", "path_distance",
               "saddle_distance_to_p_star", "status", "final_time", "final_loss", "steps")


def _clean(v):
    """HDF5 scalars to plain Python; NaN to None."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def rows_of(path: str) -> list[dict]:
    """One dict per run of an escape result file."""
    from ..errors import InputError
    from ..io import read_h5

    tree = read_h5(path, ("escape",), max_array=64)
    prov = tree.get("provenance", {})
    kkt = tree.get("kkt", {})
    fit = tree.get("fit", {})
    runs = tree.get("runs", {})
    if not isinstance(runs, dict) or not runs:
        raise InputError(f"{path}: the escape file holds no runs")
    bad = [k for k, v in runs.items() if not (str(k).isdigit() and isinstance(v, dict))]
    if bad:
        raise InputError(f"{path}: malformed runs group (entry {bad[0]!r} is not a run 0, 1, …)")
    active = kkt.get("active_per_layer")
    base = {
        "file": str(path), "file_status": tree.get("status"), "homogeneity": tree.get("homogeneity"),
        "ncf": kkt.get("ncf"), "kkt_delta": kkt.get("delta"),
        "active_per_layer": None if active is None or not hasattr(active, "tolist")
        else ",".join(str(a) for a in active.tolist()),
        "method": tree.get("method"), "init": prov.get("init"), "lr": prov.get("lr"),
        "seed": prov.get("seed"), "loss": prov.get("loss"), "reduction": prov.get("reduction"),
        "fit_slope": fit.get("slope"), "predicted_slope": fit.get("predicted_slope"),
    }
    out = []
    for key in sorted(runs, key=int):
        r = runs[key]
        row = dict(base, run=int(key))
        for c in RUN_COLUMNS:
            row[c] = r.get(c)
        esc, pred = _clean(row["escape_time"]), _clean(row["predicted_escape_time"])
        row["escape_ratio"] = esc / pred if esc is not None and pred else None
        out.append({c: _clean(row.get(c)) for c in FILE_COLUMNS + RUN_COLUMNS})
    return out


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

    if as_csv and as_json:
        raise InputError("give --csv or --json, not both")
    rows = [row for path in files for row in rows_of(path)]
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
