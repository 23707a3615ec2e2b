"""``ncfkit sparsity`` through click's CliRunner: the docs/theory.md §4 JSON contract, the masks
file, weight snapshots, --verify, and every bad input (exit 2, one line, nothing
overwritten).

KKT files are written here in the layout of ``ncfkit kkt --out`` (root ``ncfkit_kind =
"kkt"``, ``provenance`` with ``architecture`` as JSON, ``points/<i>/w``) from the closed-form
2-layer square KKT point of docs/theory.md §3, so these tests do not depend on the ascent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ncfkit.cli.main import cli
from ncfkit.io import load_data, provenance, read_h5, write_h5, write_weights

D, K = 4, 6  # input dimension, hidden width of the 2-layer square fixture
ACTIVE = 2  # the fixture's one active neuron


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _write_kkt(path: Path, data: Path, arch: dict, w: np.ndarray, ncf: float, **prov_extra) -> Path:
    ds = load_data(data)
    prov = provenance(ds, architecture=arch, loss="square", reduction="sum", seed=0,
                      dtype="float64")
    prov.update(prov_extra)
    point = {"ncf": ncf, "delta": 1.0, "residual": 1e-12, "w": w}
    if arch["arch"] == "mlp":
        k0 = arch["d"] * arch["hidden"][0]
        point.update(W1=w[:k0].reshape(arch["hidden"][0], arch["d"]), W2=w[k0:].reshape(1, -1))
    points = {"0": point, "1": dict(point, ncf=ncf / 2)}
    write_h5(path, "kkt", {"provenance": prov, "points": points})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """data.npz (n = 25, d = 4), kkt.h5 (2-layer square, k = 6, closed-form point),
    diag.h5 (a diagonal-model point)."""
    root = tmp_path_factory.mktemp("sparsity")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((25, D))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = rng.standard_normal(25)
    np.savez(root / "data.npz", X=X, y=y)
    M = (X.T * (2 * y)) @ X
    evals, evecs = np.linalg.eigh(M)
    up = evals[-1] >= -evals[0]
    W1 = np.zeros((K, D))
    W2 = np.zeros((1, K))
    W1[ACTIVE] = math.sqrt(2 / 3) * evecs[:, -1 if up else 0]
    W2[0, ACTIVE] = (1 if up else -1) * math.sqrt(1 / 3)
    w = np.concatenate([W1.ravel(), W2.ravel()])
    ncf = 2 / (3 * math.sqrt(3)) * max(evals[-1], -evals[0])
    arch = {"arch": "mlp", "d": D, "hidden": [K], "act": "square"}
    _write_kkt(root / "kkt.h5", root / "data.npz", arch, w, ncf)
    _write_kkt(root / "diag.h5", root / "data.npz", {"arch": "diag", "d": D, "depth": 2},
               np.eye(D)[0], 8.0)
    return root


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- KKT files


def test_json_contract_of_a_kkt_point(files):
    out = _json(_run("sparsity", files / "kkt.h5", "--json"))
    assert out["layers"] == [{"layer": 1, "width": K, "zero_neurons": [0, 1, 3, 4, 5],
                              "active_neurons": [ACTIVE], "lopsided_neurons": []}]
    assert out["zero_preserving_size"] == (K - 1) * (D + 1) == 25
    assert out["num_params"] == K * D + K
    assert out["zero_preserving_fraction"] == pytest.approx(25 / 30)
    assert out["balance_error"] == pytest.approx(0.0, abs=1e-14)
    assert out["verified"] is None and out["verify"] is None
    assert out["point"] == 0 and out["active_per_layer"] == [1]
    assert out["outside_per_matrix"] == [D, 1]
    assert out["architecture"]["act"] == "square"


def test_rich_summary_goes_to_stderr(files):
    r = _run("sparsity", files / "kkt.h5")
    assert r.exit_code == 0 and r.stdout == ""
    assert "w_z (Lemma 16): 25 of 30 weights" in r.stderr
    assert "lopsided" not in r.stderr.replace("┃ lopsided ┃", "")


def test_verify_writes_masks_for_escape(files, tmp_path):
    out = _json(_run("sparsity", files / "kkt.h5", "--verify", "--steps", 500, "--json",
                     "--out", tmp_path / "masks.h5"))
    assert out["verified"] is True
    v = out["verify"]
    assert v["preserved"] and v["wz_max_abs"] == 0.0 and v["others_moved"]
    rows, cols = v["controls"]
    assert cols["part"] == "columns" and cols["left_zero"] and cols["max_abs"] > 0
    assert rows["part"] == "rows" and not rows["left_zero"]  # σ'(0) = 0 for square
    tree = read_h5(tmp_path / "masks.h5", kinds=("sparsity",))
    W1, W2 = tree["masks"]["W1"], tree["masks"]["W2"]
    assert W1.dtype == bool and W1.shape == (K, D) and W2.shape == (1, K)
    assert not W1[ACTIVE].any() and W1.sum() == (K - 1) * D
    assert not W2[0, ACTIVE] and W2.sum() == K - 1
    assert tree["masks"]["w"].sum() == 25 and tree["zero_preserving_size"] == 25
    assert tree["verified"] is True or tree["verified"] == 1
    assert list(tree["layers"]["1"]["active_neurons"]) == [ACTIVE]
    assert tree["provenance"]["data_sha256"] == load_data(files / "data.npz").sha256
    assert json.loads(tree["provenance"]["architecture"])["hidden"] == [K]


def test_second_point_and_recorded_data_relative_to_kkt_file(files, tmp_path, monkeypatch):
    kkt = _write_kkt(tmp_path / "rel.h5", files / "data.npz",
                     {"arch": "mlp", "d": D, "hidden": [K], "act": "square"},
                     read_h5(files / "kkt.h5")["points"]["0"]["w"], 1.0)
    tree = read_h5(kkt)
    assert Path(tree["provenance"]["data_file"]).is_absolute()
    # Rewrite the provenance with a bare file name, then run from another folder.
    tree["provenance"]["data_file"] = "data.npz"
    (tmp_path / "data.npz").write_bytes((files / "data.npz").read_bytes())
    write_h5(kkt, "kkt", {k: v for k, v in tree.items() if not k.startswith("ncfkit_")}, force=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = _json(_run("sparsity", kkt, "--point", 1, "--verify", "--steps", 200, "--json"))
    assert out["point"] == 1 and out["ncf"] == pytest.approx(0.5)
    assert out["verified"] is True


def test_agrees_with_the_kkt_command(tmp_path):
    pytest.importorskip("ncfkit.cli.kkt_cmd")
    rng = np.random.default_rng(1)
    X = rng.standard_normal((20, 3))
    np.savez(tmp_path / "d.npz", X=X / np.linalg.norm(X, axis=1, keepdims=True),
             y=rng.standard_normal(20))
    k = _run("kkt", tmp_path / "d.npz", "--hidden", "3,3", "--act", "square", "--restarts", 4,
             "--json", "--out", tmp_path / "k.h5")
    points = _json(k)["points"]
    out = _json(_run("sparsity", tmp_path / "k.h5", "--json", "--verify", "--steps", 300))
    assert out["active_per_layer"] == points[0]["active_per_layer"]
    if "active_neurons" in points[0]:
        assert [l["active_neurons"] for l in out["layers"]] == points[0]["active_neurons"]
    assert out["ncf"] == pytest.approx(points[0]["ncf"])
    assert out["verified"] is True


# --------------------------------------------------------------------------- snapshots


def _snapshot(path: Path, rows: list[float], cols: list[float], seed: int = 0) -> Path:
    """Neuron j has ‖W1[j]‖ = rows[j] and |W2[j]| = cols[j]; W2 stored as (k,)."""
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((len(rows), 3))
    W1 *= (np.asarray(rows) / np.linalg.norm(W1, axis=1))[:, None]
    write_weights(path, [W1, np.asarray(cols, dtype=float)], force=True)
    return path


def test_weight_snapshot_with_relative_threshold(files, tmp_path):
    w = _snapshot(tmp_path / "w.npz", [1.0, 0.004, 0.8, 0.0], [0.7, -0.003, 0.5, 0.0])
    out = _json(_run("sparsity", "--weights", w, "--json"))
    assert out["source_kind"] == "weights" and "point" not in out
    assert out["architecture"] == {"arch": "mlp", "d": 3, "hidden": [4], "act": "relu"}
    assert out["tol"] == 1e-2  # the snapshot default
    assert out["layers"][0]["zero_neurons"] == [1, 3]
    assert out["zero_preserving_size"] == 2 * (3 + 1)
    strict = _json(_run("sparsity", w, "--tol", 1e-3, "--json"))  # a .npz SOURCE works too
    assert strict["layers"][0]["zero_neurons"] == [3]
    # balance error with p = 2: max_j |‖row‖² − 2 col²| / ‖w‖², attained by neuron 2
    sq = _json(_run("sparsity", "--weights", w, "--act", "sqrelu", "--json"))
    norm2 = 1 + 0.004**2 + 0.64 + 0.49 + 0.003**2 + 0.25
    assert sq["balance_error"] == pytest.approx(abs(0.8**2 - 2 * 0.5**2) / norm2)


def test_lopsided_neuron_is_a_warning(tmp_path):
    w = _snapshot(tmp_path / "w.npz", [1.0, 0.0, 0.5], [1.0, 0.6, 0.5])
    r = _run("sparsity", "--weights", w, "--json")
    out = _json(r)
    assert out["lopsided"] == 1 and out["layers"][0]["lopsided_neurons"] == [1]
    assert out["layers"][0]["zero_neurons"] == [] and out["zero_preserving_size"] == 0
    assert "warning" in r.stderr and "lopsided" in r.stderr


def test_three_layer_snapshot_verify_with_data(files, tmp_path):
    rng = np.random.default_rng(2)
    W1, W2, W3 = rng.standard_normal((5, D)), rng.standard_normal((3, 5)), rng.standard_normal(3)
    W1[[0, 4]] = 0
    W2[:, [0, 4]] = 0
    W2[1] = 0
    W3[1] = 0
    write_weights(tmp_path / "w3.npz", [W1, W2, W3])
    out = _json(_run("sparsity", "--weights", tmp_path / "w3.npz", "--act", "leaky:0.1", "--verify",
                     "--data", files / "data.npz", "--steps", 300, "--json"))
    assert [l["zero_neurons"] for l in out["layers"]] == [[0, 4], [1]]
    assert out["zero_preserving_size"] == 2 * D + (2 * 3 + 5 - 2) + 1
    assert out["verified"] is True
    assert [c["left_zero"] for c in out["verify"]["controls"]] == [True, True]  # σ'(0) = 1


# --------------------------------------------------------------------------- bad input


def _bad_files(files: Path, tmp: Path) -> dict[str, Path]:
    paths = {}
    paths["text"] = tmp / "notes.h5"
    paths["text"].write_text("not hdf5\n")
    paths["plain_h5"] = tmp / "plain.h5"
    import h5py

    with h5py.File(paths["plain_h5"], "w") as f:
        f["X"] = np.zeros((2, 2))
    paths["other_kind"] = tmp / "other.h5"
    write_h5(paths["other_kind"], "sparsity", {"masks": {"w": np.zeros(3, dtype=bool)}})
    arch = {"arch": "mlp", "d": D, "hidden": [K], "act": "square"}
    w = read_h5(files / "kkt.h5")["points"]["0"]["w"]
    paths["lost_data"] = _write_kkt(tmp / "lost.h5", files / "data.npz", arch, w, 1.0,
                                    data_file=str(tmp / "gone.npz"))
    paths["changed_data"] = _write_kkt(tmp / "changed.h5", files / "data.npz", arch, w, 1.0,
                                       data_sha256="0" * 64)
    np.savez(tmp / "wide.npz", X=np.zeros((3, D + 1)), y=np.ones(3))
    paths["wide"] = tmp / "wide.npz"
    write_weights(tmp / "diagw.npz", np.ones(3))
    paths["diag_weights"] = tmp / "diagw.npz"
    paths["snapshot"] = _snapshot(tmp / "snap.npz", [1.0, 0.0], [1.0, 0.0])
    return paths


BAD = [
    ("point-out-of-range", lambda f, b: [f / "kkt.h5", "--point", 2], "out of range"),
    ("point-negative", lambda f, b: [f / "kkt.h5", "--point", -1], "out of range"),
    ("tol-negative", lambda f, b: [f / "kkt.h5", "--tol", -0.1], "--tol"),
    ("tol-one", lambda f, b: ["--weights", b["snapshot"], "--tol", 1], "--tol"),
    ("diag-point", lambda f, b: [f / "diag.h5"], "no hidden neurons"),
    ("diag-weights", lambda f, b: ["--weights", b["diag_weights"]], "no hidden neurons"),
    ("missing-file", lambda f, b: [f / "nope.h5"], "does not exist"),
    ("text-file", lambda f, b: [b["text"]], "not a readable HDF5"),
    ("plain-h5", lambda f, b: [b["plain_h5"]], "not an ncfkit result"),
    ("wrong-kind", lambda f, b: [b["other_kind"]], "expected kkt"),
    ("data-as-weights", lambda f, b: ["--weights", f / "data.npz"], "not a weight snapshot"),
    ("verify-lost-data", lambda f, b: [b["lost_data"], "--verify"], "does not exist"),
    ("verify-changed-data", lambda f, b: [b["changed_data"], "--verify"], "changed"),
    ("verify-weights-no-data", lambda f, b: ["--weights", b["snapshot"], "--verify"], "--data"),
    ("verify-missing-data", lambda f, b: [f / "kkt.h5", "--verify", "--data", f / "x.npz"],
     "does not exist"),
    ("verify-wrong-d", lambda f, b: [f / "kkt.h5", "--verify", "--data", b["wide"]], "features"),
    ("both-inputs", lambda f, b: [f / "kkt.h5", "--weights", b["snapshot"]], "not both"),
    ("no-input", lambda f, b: [], "missing input"),
    ("act-on-kkt", lambda f, b: [f / "kkt.h5", "--act", "relu"], "--act"),
    ("bad-act", lambda f, b: ["--weights", b["snapshot"], "--act", "swish"], "unknown activation"),
    ("bad-lr", lambda f, b: [f / "kkt.h5", "--verify", "--lr", "-1"], "--lr"),
    ("bad-steps", lambda f, b: [f / "kkt.h5", "--verify", "--steps", 0], "--steps"),
]


@pytest.mark.parametrize("args, message", [(a, m) for _, a, m in BAD], ids=[i for i, _, _ in BAD])
def test_bad_input_exits_2_with_one_line_and_overwrites_nothing(files, tmp_path, args, message):
    bad = _bad_files(files, tmp_path)
    target = tmp_path / "masks.h5"
    target.write_bytes(b"previous result")
    r = _run("sparsity", *args(files, bad), "--out", target, "--force")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.output and r.stdout == ""
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".masks")) == []


def test_existing_output_needs_force(files, tmp_path):
    target = tmp_path / "masks.h5"
    target.write_bytes(b"keep me")
    r = _run("sparsity", files / "kkt.h5", "--out", target)
    assert r.exit_code == 2 and "exists" in r.stderr and "--force" in r.stderr
    assert target.read_bytes() == b"keep me"
    r = _run("sparsity", files / "kkt.h5", "--out", target, "--force")
    assert r.exit_code == 0 and read_h5(target, kinds=("sparsity",))["zero_preserving_size"] == 25
