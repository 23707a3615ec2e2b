"""``ncfkit info``: how a result file was made (its provenance) and what it holds.

Works on every file an ncfkit command writes with ``--out`` (root attribute
``ncfkit_kind``: ``kkt``, ``sparsity``, ``escape``, …). Only attributes and small datasets
are read, so a large trajectory file opens instantly; a file that is not an ncfkit result,
or is truncated or corrupted, is an input error (exit 2, one line).
"""

from __future__ import annotations

import json
from typing import Any

import click

from .options import emit_json, guarded

#: Datasets of more elements than this are listed by shape, not read.
_SMALL = 64

#: Provenance keys shown first, in this order, with their labels.
_HEADLINE = (
    ("ncfkit_version", "ncfkit version"), ("command_line", "command line"),
    ("data_file", "data file"), ("data_sha256", "data sha256"), ("source_file", "source file"),
    ("source_sha256", "source sha256"), ("architecture", "architecture"), ("loss", "loss"),
    ("reduction", "reduction"), ("seed", "seed"), ("dtype", "dtype"), ("device", "device"),
    ("start_time", "start time"), ("end_time", "end time"),
)


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


def _contents(tree: dict[str, Any]) -> dict[str, str]:
    """The top-level groups and datasets: '12 entries', 'float64 (2000, 51)', …"""
    from ..io import ArrayInfo

    out = {}
    for k, v in tree.items():
        if k == "provenance":
            continue
        if isinstance(v, dict):
            n = sum(1 for x in v.values() if isinstance(x, (dict, ArrayInfo)) or hasattr(x, "shape"))
            out[k] = f"group, {n} entr{'y' if n == 1 else 'ies'}"
        elif isinstance(v, ArrayInfo):
            out[k] = f"{v.dtype} {v.shape}"
        elif hasattr(v, "shape") and getattr(v, "ndim", 0) > 0:
            out[k] = f"{v.dtype} {tuple(v.shape)}"
    return out


def _kkt_points(tree: dict[str, Any]) -> list[dict[str, Any]]:
    points = tree.get("points", {})
    keys = sorted((k for k in points if k.isdigit()), key=int)
    rows = []
    for k in keys:
        p = points[k]
        row = {"point": int(k)}
        for name in ("ncf", "delta", "residual", "kind", "second_order", "count", "converged"):
            if name in p:
                row[name] = p[name]
        if "active_per_layer" in p and not isinstance(_plain(p["active_per_layer"]), dict):
            row["active_per_layer"] = [int(a) for a in _plain(p["active_per_layer"])]
        rows.append(row)
    return rows


def summarise(path: str) -> dict[str, Any]:
    """Everything ``ncfkit info`` reports, as one JSON-ready dict."""
    from ..io import read_h5

    tree = read_h5(path, max_array=_SMALL)
    prov = tree.get("provenance")
    prov = dict(prov) if isinstance(prov, dict) else {}
    if "architecture" in prov:
        prov["architecture"], described = _architecture(prov["architecture"])
    else:
        described = None
    scalars = {k: v for k, v in tree.items()
               if not isinstance(v, dict) and not hasattr(v, "shape")
               and k not in ("ncfkit_kind", "ncfkit_version", "interrupted")}
    interrupted = tree.get("interrupted", prov.get("interrupted", False))
    out = {
        "file": str(path), "kind": tree["ncfkit_kind"],
        "ncfkit_version": tree.get("ncfkit_version", prov.get("ncfkit_version")),
        "interrupted": bool(interrupted),
        "architecture_description": described,
        "provenance": prov, "summary": scalars, "contents": _contents(tree),
    }
    if tree["ncfkit_kind"] == "kkt":
        out["points"] = _kkt_points(tree)
    return _plain(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.10g}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _render(info: dict[str, Any]) -> list[str]:
    """Aligned 'label  value' lines: the file, its provenance, then the result."""
    prov = dict(info["provenance"])
    prov.pop("interrupted", None)
    head = [("file", info["file"]), ("kind", info["kind"]),
            ("status", "INTERRUPTED (partial results)" if info["interrupted"] else "complete")]
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
    points = info.get("points")
    result += [(k, v) for k, v in info["contents"].items() if not (k == "points" and points)]
    if points is not None:
        result.append(("points", str(len(points))))
    width = max(len(label) for label, _ in head + made + result)
    text = [f"{label:<{width}}  {value}" for label, value in head]
    for title, rows in (("provenance", made), ("result", result)):
        if rows:
            text.append(f"-- {title}")
            text += [f"{label:<{width}}  {value}" for label, value in rows]
    for p in points or []:
        parts = [f"#{p['point']}", f"ncf {_fmt(p.get('ncf', float('nan')))}"]
        parts += [f"{k} {p[k]:.3g}" for k in ("delta", "residual") if k in p]
        parts += [f"{k} {p[k]}" for k in ("kind", "count") if k in p]
        if "active_per_layer" in p:
            parts.append("active/layer " + ",".join(map(str, p["active_per_layer"])))
        text.append(" " * (width + 2) + "  ".join(parts))
    return text


@click.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@guarded
def command(file, as_json):
    """Print the provenance of an ncfkit result FILE (version, command line, data sha256,
    architecture, loss, seed, dtype, device, start and end time, whether the run was
    interrupted) and a short summary of what it holds (for kkt: the points and their 𝒩).

    FILE is any HDF5 file written by an ncfkit command's --out.
    """
    info = summarise(file)
    if as_json:
        emit_json(info)
    else:
        click.echo("\n".join(_render(info)))
