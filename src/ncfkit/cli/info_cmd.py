"""``ncfkit info``: how a result file was made (its provenance) and what it holds.

Works on every file an ncfkit command writes with ``--out`` (root attribute
``ncfkit_kind``: ``kkt``, ``sparsity``, ``escape``, …). Only attributes and small datasets
are read, so a large trajectory file opens at once; a file that is not an ncfkit result,
or is truncated or corrupted, is an input error (exit 2, one line).

What it reports, for every kind: the provenance group, the root attributes, and for each
other top-level group its scalar attributes. ``kkt``: one row per point (𝒩, Δ, residual,
kind, count). ``escape``: one row per run (δ, status, escape and saddle times, number of
records). ``status`` is the file's own (escape: complete / diverged / interrupted), else
``interrupted`` when a root ``interrupted`` flag is set, else ``complete``.
"""

from __future__ import annotations

import json
from typing import Any

import click

from .options import emit_json, guarded

#: Provenance keys shown first, in this order, with their labels.
_HEADLINE = (
    ("ncfkit_version", "ncfkit version"), ("command_line", "command line"),
    ("data_file", "data file"), ("data_sha256", "data sha256"), ("source_file", "source file"),
    ("source_sha256", "source sha256"), ("architecture", "architecture"), ("loss", "loss"),
    ("reduction", "reduction"), ("seed", "seed"), ("dtype", "dtype"), ("device", "device"),
    ("start_time", "start time"), ("end_time", "end time"),
)
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.10g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _fmt(v)


def _render(info: dict[str, Any]) -> list[str]:
    """Aligned 'label  value' lines: the file, its provenance, then the result."""
    prov = dict(info["provenance"])
    status = info["status"]
    head = [("file", info["file"]), ("kind", info["kind"]),
            ("status", f"{status.upper()} (partial results)" if info["interrupted"] else status)]
    made = []
    for key, label in _HEADLINE:
        if key not in prov:
            continue
        value = prov.pop(key)
        if key == "architecture" and info["architecture_description"]:
            value = info["architecture_description"]
        elif key == "data_file" and "n" in prov and "d" in prov:
            value = f"{value} (n = {prov.pop('n')}, d = {prov.pop('d')})"
        made.append((label, _fmt(value)))
    made += [(k.replace("_", " "), _fmt(v)) for k, v in prov.items()]
    result = [(k.replace("_", " "), _fmt(v)) for k, v in info["summary"].items()]
    result += [(k, ", ".join(f"{a} {_short(b)}" for a, b in v.items()) or "—")
               for k, v in info["groups"].items()]
    tables = [(name, info[name]) for name in ("points", "runs") if name in info]
    result += [(name, str(len(rows))) for name, rows in tables]
    width = max(len(label) for label, _ in head + made + result)
    text = [f"{label:<{width}}  {value}" for label, value in head]
    for title, rows in (("provenance", made), ("result", result)):
        if rows:
            text.append(f"-- {title}")
            text += [f"{label:<{width}}  {value}" for label, value in rows]
    for name, rows in tables:
        for row in rows:
            row = dict(row)
            index = row.pop(name[:-1])
            parts = [f"#{index}"] + [f"{k} {_short(v)}" for k, v in row.items()]
            text.append(" " * (width + 2) + "  ".join(parts))
    return text


@click.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@guarded
def command(file, as_json):
    """Print how an ncfkit result FILE was made -- ncfkit version, command line, data
    sha256, architecture, loss, seed, dtype, device, start and end time, whether the run
    was interrupted -- and a short summary of what it holds (kkt: the points and their
    𝒩; escape: the runs).

    FILE is any HDF5 file written by an ncfkit command's --out.
    """
    from ..io import result_info

    info = result_info(file)
    if as_json:
        emit_json(info)
    else:
        click.echo("\n".join(_render(info)))
