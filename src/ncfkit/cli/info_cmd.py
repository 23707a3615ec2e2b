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

#: Datasets of more elements than this are described by shape, not read.
_SMALL = 64

#: Provenance keys shown first, in this order, with their labels.
_HEADLINE = (
    ("ncfkit_version", "ncfkit version"), ("command_line", "command line"),
    ("data_file", "data file"), ("data_sha256", "data sha256"), ("source_file", "source file"),
    ("source_sha256", "source sha256"), ("architecture", "architecture"), ("loss", "loss"),
    ("reduction", "reduction"), ("seed", "seed"), ("dtype", "dtype"), ("device", "device"),
    ("start_time", "start time"), ("end_time", "end time"),
)
_ROOT_META = ("ncfkit_kind", "ncfkit_version", "interrupted", "status")
#: Per-row keys of the kkt points and escape runs, in display order.
_POINT_KEYS = ("ncf", "delta", "residual", "kind", "second_order", "count", "converged")
_RUN_KEYS = ("delta", "status", "escaped", "escape_time", "predicted_escape_time",
             "saddle_time", "saddle_loss", "steps")


def _architecture(spec: Any) -> tuple[Any, str | None]:
    """(the record as a dict if it parses, a one-line description or None)."""
    from ..models import architecture_from_dict

    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            return spec, None
    try:
        arch = architecture_from_dict(spec)
    except Exception:  # a record this version cannot rebuild: show it as stored
        return spec, None
    order = arch.homogeneity
    return spec, arch.describe() + (f", L_h = {order:g}" if order is not None else "")


def _plain(value: Any) -> Any:
    """JSON-ready: arrays to lists, :class:`~ncfkit.io.ArrayInfo` to {shape, dtype}."""
    from ..io import ArrayInfo

    if isinstance(value, ArrayInfo):
        return {"shape": list(value.shape), "dtype": value.dtype}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def _is_scalar(v: Any) -> bool:
    return not isinstance(v, dict) and getattr(v, "ndim", 0) == 0 and not hasattr(v, "dtype")


def _scalars(node: dict[str, Any], skip=()) -> dict[str, Any]:
    return {k: v for k, v in node.items() if _is_scalar(v) and k not in skip}


def _length(node: Any) -> int | None:
    """Rows of a dataset (read or described)."""
    shape = getattr(node, "shape", None)
    return int(shape[0]) if shape else None


def _rows(group: Any, keys: tuple[str, ...], label: str) -> list[dict[str, Any]]:
    """One row per numbered subgroup (points/<i>, runs/<i>) with ``keys`` where present."""
    if not isinstance(group, dict):
        return []
    rows = []
    for k in sorted((k for k in group if k.isdigit() and isinstance(group[k], dict)), key=int):
        node = group[k]
        row = {label: int(k), **{name: node[name] for name in keys if name in node}}
        active = node.get("active_per_layer")
        if active is not None and hasattr(active, "tolist"):
            row["active_per_layer"] = [int(a) for a in active.tolist()]
        records = node.get("records")
        if isinstance(records, dict) and _length(records.get("time")) is not None:
            row["records"] = _length(records["time"])
        rows.append(row)
    return rows


def summarise(path: str) -> dict[str, Any]:
    """Everything ``ncfkit info`` reports, as one JSON-ready dict."""
    from ..io import read_h5

    tree = read_h5(path, max_array=_SMALL)
    prov = tree.get("provenance")
    prov = dict(prov) if isinstance(prov, dict) else {}
    described = None
    if "architecture" in prov:
        prov["architecture"], described = _architecture(prov["architecture"])
    status = tree.get("status")
    interrupted = bool(tree.get("interrupted", False)) or status == "interrupted"
    if not isinstance(status, str):
        status = "interrupted" if interrupted else "complete"
    tables = {"points": _POINT_KEYS, "runs": _RUN_KEYS}
    out = {
        "file": str(path), "kind": tree["ncfkit_kind"],
        "ncfkit_version": tree.get("ncfkit_version", prov.get("ncfkit_version")),
        "status": status, "interrupted": interrupted,
        "architecture_description": described, "provenance": prov,
        "summary": _scalars(tree, _ROOT_META),
        "groups": {k: _scalars(v) for k, v in tree.items()
                   if isinstance(v, dict) and k != "provenance" and k not in tables},
    }
    for name, keys in tables.items():
        if isinstance(tree.get(name), dict):
            out[name] = _rows(tree[name], keys, name[:-1])
    return _plain(out)


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
    info = summarise(file)
    if as_json:
        emit_json(info)
    else:
        click.echo("\n".join(_render(info)))
