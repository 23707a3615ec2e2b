"""Every bad input through the real CLI: exit code 2, one line on stderr that names the
problem, no traceback, and no file touched (issue 7, docs/theory.md §4 "Exit codes").

The table drives click's CliRunner. Each case builds its files in ``tmp_path``; the test
hashes every file there before and after the run, so a refused ``--out`` cannot have
truncated, replaced or left a temporary file behind. Cases of commands that are not
registered yet (``escape``, ``plot``, ``collect``) skip with that reason.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ncfkit.cli.main import cli

rng = np.random.default_rng(0)
X = rng.standard_normal((6, 3))
X /= np.linalg.norm(X, axis=1, keepdims=True)
Y = rng.standard_normal(6)
#: Settings that make a kkt run take well under a second if a check were missing.
FAST = ["--hidden", "3", "--act", "square", "--restarts", "2", "--max-steps", "50"]


class Files:
    """Makes the files one case needs inside its own folder; each returns its path."""

    def __init__(self, root: Path, kkt_file: Path):
        self.root = root
        self._kkt = kkt_file

    def path(self, name: str) -> str:
        return str(self.root / name)

    def npz(self, name: str = "data.npz", **arrays) -> str:
        arrays = arrays or {"X": X, "y": Y}
        np.savez(self.root / name, **arrays)
        return self.path(name)

    def h5(self, name: str = "data.h5", **arrays) -> str:
        arrays = arrays or {"X": X, "y": Y}
        with h5py.File(self.root / name, "w") as f:
            for k, v in arrays.items():
                f[k] = v
        return self.path(name)

    def text(self, name: str, content: str | bytes) -> str:
        p = self.root / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(p)

    def kkt(self, name: str = "kkt.h5") -> str:
        """A real ``ncfkit kkt --out`` file (2-layer square net, hidden 3)."""
        shutil.copy(self._kkt, self.root / name)
        return self.path(name)

    def truncated(self, name: str = "truncated.h5") -> str:
        data = self._kkt.read_bytes()
        return self.text(name, data[: len(data) // 3])

    def corrupted(self, name: str = "corrupted.h5") -> str:
        """A kkt file whose second half is overwritten with noise (signature intact)."""
        data = bytearray(self._kkt.read_bytes())
        half = len(data) // 2
        data[half:] = np.random.default_rng(1).bytes(len(data) - half)
        return self.text(name, bytes(data))

    def forged(self, name: str, kind: str, tree: dict) -> str:
        """An HDF5 file that claims to be an ncfkit ``kind`` result but holds ``tree``
        (dicts become groups, everything else attributes or datasets)."""
        def fill(group, node):
            for k, v in node.items():
                if isinstance(v, dict):
                    fill(group.create_group(k), v)
                elif isinstance(v, np.ndarray):
                    group[k] = v
                else:
                    group.attrs[k] = v

        with h5py.File(self.root / name, "w") as f:
            f.attrs["ncfkit_kind"] = kind
            fill(f, tree)
        return self.path(name)

    def existing(self, name: str) -> str:
        return self.text(name, b"an earlier result that must survive\n")

    def folder(self, name: str) -> str:
        (self.root / name).mkdir()
        return self.path(name)


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Files], list[str]]
    match: str  # a regular expression the one stderr line must contain (case-insensitive)
    needs: tuple[str, ...] = field(default=())  # commands that must be registered
    xfail: str = ""  # a known bug in another module, reported; the reason


def kkt(*extra: str) -> Callable[[Files], list[str]]:
    return lambda f: ["kkt", f.npz(), *FAST, *extra]


def kkt_on(make: Callable[[Files], str], *extra: str) -> Callable[[Files], list[str]]:
    return lambda f: ["kkt", make(f), *FAST, *extra]


def escape(*extra: str, data=None) -> Callable[[Files], list[str]]:
    def args(f: Files) -> list[str]:
        # --max-time, --delta-ref none and FAST bound the run if a check were missing
        out = ["escape", data(f) if data else f.npz(), *FAST, "--max-time", "0.01",
               "--delta-ref", "none"]
        if not any(e == "--delta" for e in extra):
            out += ["--delta", "1e-3"]
        return out + [e(f) if callable(e) else e for e in extra]

    return args


def sparsity(*extra) -> Callable[[Files], list[str]]:
    return lambda f: ["sparsity", *[e(f) if callable(e) else e for e in extra]]


NAN_X, INF_X, NAN_Y, INF_Y = X.copy(), X.copy(), Y.copy(), Y.copy()
NAN_X[1, 2], INF_X[0, 0], NAN_Y[3], INF_Y[2] = np.nan, np.inf, np.nan, -np.inf
CUDA = torch.cuda.is_available()

CASES = [
    # ---- the data file
    Case("missing-file", kkt_on(lambda f: f.path("nope.npz")), r"nope\.npz.*does not exist"),
    Case("empty-file", kkt_on(lambda f: f.text("empty.npz", b"")), r"empty\.npz.*is empty"),
    Case("empty-csv", kkt_on(lambda f: f.text("empty.csv", "x1,x2,y\n")), r"n = 0"),
    Case("wrong-extension", kkt_on(lambda f: f.text("data.txt", "1,2,3\n")),
         r"unsupported data file type '\.txt'"),
    Case("no-extension", kkt_on(lambda f: f.text("data", "1,2,3\n")), r"unsupported data file"),
    Case("data-is-folder", kkt_on(lambda f: f.folder("d.npz")), r"is a directory"),
    Case("npz-without-y", kkt_on(lambda f: f.npz("a.npz", X=X)), r"no array 'y'"),
    Case("npz-without-X", kkt_on(lambda f: f.npz("a.npz", y=Y)), r"no array 'X'"),
    Case("npz-garbage", kkt_on(lambda f: f.text("a.npz", b"PK\x03\x04 not a zip")),
         r"not a readable NPZ"),
    Case("h5-without-y", kkt_on(lambda f: f.h5("a.h5", X=X)), r"no dataset 'y'"),
    Case("h5-X-rank-1", kkt_on(lambda f: f.h5("a.h5", X=X[:, 0], y=Y)), r"rank 1"),
    Case("h5-X-rank-3", kkt_on(lambda f: f.h5("a.h5", X=X[:, :, None], y=Y)), r"rank 3"),
    Case("h5-truncated", kkt_on(lambda f: f.truncated("a.h5")), r"not a readable HDF5"),
    Case("y-rank-2", kkt_on(lambda f: f.npz("a.npz", X=X, y=np.stack([Y, Y], 1))),
         r"y must have shape"),
    Case("n-mismatch", kkt_on(lambda f: f.npz("a.npz", X=X, y=Y[:-1])),
         r"6 rows but y has 5 labels"),
    Case("nan-in-X", kkt_on(lambda f: f.npz("a.npz", X=NAN_X, y=Y)), r"X contains NaN"),
    Case("inf-in-X", kkt_on(lambda f: f.npz("a.npz", X=INF_X, y=Y)), r"X contains Inf"),
    Case("nan-in-y", kkt_on(lambda f: f.npz("a.npz", X=X, y=NAN_Y)), r"y contains NaN"),
    Case("inf-in-y", kkt_on(lambda f: f.h5("a.h5", X=X, y=INF_Y)), r"y contains Inf"),
    Case("nan-in-csv", kkt_on(lambda f: f.text("a.csv", "1,2,3\nnan,1,2\n")), r"X contains NaN"),
    Case("zero-samples", kkt_on(lambda f: f.npz("a.npz", X=np.zeros((0, 3)), y=np.zeros(0))),
         r"n = 0"),
    Case("d-zero", kkt_on(lambda f: f.npz("a.npz", X=np.zeros((6, 0)), y=Y)), r"d = 0"),
    Case("complex-X", kkt_on(lambda f: f.npz("a.npz", X=X + 1j, y=Y)), r"X must be a real"),
    Case("string-y", kkt_on(lambda f: f.npz("a.npz", X=X, y=np.array(list("abcdef")))),
         r"y must be a real"),
    Case("csv-non-numeric", kkt_on(lambda f: f.text("a.csv", "1,2,3\n4,five,6\n")),
         r"non-numeric"),
    Case("csv-ragged", kkt_on(lambda f: f.text("a.csv", "1,2,3\n4,5\n")),
         r"different numbers of columns"),
    Case("csv-one-column", kkt_on(lambda f: f.text("a.csv", "1\n2\n")), r"at least 2 columns"),
    Case("csv-binary", kkt_on(lambda f: f.text("a.csv", b"\xff\xfe\x00\x81")), r"not a text CSV"),
    Case("csv-NA-in-first-row", kkt_on(lambda f: f.text("a.csv", "NA,2,3\n4,5,6\n7,8,9\n")),
         r"a\.csv: X contains NaN"),
    Case("csv-bom-NA-in-first-row", kkt_on(lambda f: f.text("a.csv", b"\xef\xbb\xbf1,nan,3\n4,5,6\n")),
         r"a\.csv: X contains NaN"),
    Case("logistic-labels-01",
         kkt_on(lambda f: f.npz("a.npz", X=X, y=(Y > 0).astype(float)), "--loss", "logistic"),
         r"a\.npz: logistic loss needs labels in \{-1, \+1\}"),
    # ---- the architecture
    Case("hidden-0", kkt("--hidden", "0"), r"--hidden '0'.*>= 1"),
    Case("hidden-negative", kkt("--hidden", "-3"), r"--hidden '-3'.*>= 1"),
    Case("hidden-empty-width", kkt("--hidden", "20,,5"), r"--hidden '20,,5'.*empty width"),
    Case("hidden-abc", kkt("--hidden", "abc"), r"--hidden 'abc'.*not an integer"),
    Case("hidden-float", kkt("--hidden", "2.5"), r"not an integer"),
    Case("act-unknown", kkt("--act", "swish"), r"unknown activation 'swish'"),
    Case("act-poly-0", kkt("--act", "poly:0"), r"'poly:0'.*P must be >= 1"),
    Case("act-leaky-abc", kkt("--act", "leaky:abc"), r"'leaky:abc'.*not a number"),
    Case("act-not-homogeneous", kkt("--act", "tanh"), r"not homogeneous"),
    Case("act-poly-overflow", kkt("--act", "poly:1e308", "--hidden", "2,2"),
         r"poly:1e308.*overflows"),
    Case("diag-depth-0", kkt("--arch", "diag", "--depth", "0"), r"--depth must be >= 1"),
    # an activation given for a network that has none: no certificate is defined (issue 14)
    Case("diag-act-relu", lambda f: ["kkt", f.npz(), "--arch", "diag", "--act", "relu", "--restarts", "2"],
         r"--act relu: the diagonal model \(--arch diag\) has no activation"),
    Case("escape-diag-act", lambda f: ["escape", f.npz(), "--arch", "diag", "--act", "leaky:0.1", "--delta", "0.1",
                                       "--max-time", "0.01", "--delta-ref", "none"],
         r"--act leaky:0.1: the diagonal model"),
    # ---- the numerics
    Case("restarts-0", kkt("--restarts", "0"), r"--restarts must be >= 1"),
    Case("max-steps-0", kkt("--max-steps", "0"), r"--max-steps must be >= 1"),
    Case("tol-0", kkt("--tol", "0"), r"--tol 0: must be finite and > 0"),
    Case("tol-nan", kkt("--tol", "nan"), r"--tol nan: must be finite and > 0"),
    # ---- issue 17: absurd flags, overflowing data and networks (the dtype's range)
    Case("tol-inf", kkt("--tol", "inf"), r"--tol inf: must be finite and > 0"),
    Case("tol-below-eps", kkt("--tol", "1e-300"), r"--tol 1e-300: finer than float64 can resolve"),
    Case("tol-below-float32-eps", kkt("--tol", "1e-9", "--dtype", "float32"),
         r"--tol 1e-09: finer than float32 can resolve"),
    Case("seed-30-digits", kkt("--seed", "123456789012345678901234567890"), r"--seed 1234.*\[0, 2\^63\)"),
    Case("seed-negative", kkt("--seed", "-1"), r"--seed -1: must be an integer in \[0, 2\^63\)"),
    Case("data-X-1e200", kkt_on(lambda f: f.npz("big.npz", X=X * 1e200, y=Y)),
         r"big\.npz: \|X\| reaches .*overflow float64"),
    Case("data-y-1e200", kkt_on(lambda f: f.npz("big.npz", X=X, y=Y * 1e200)),
         r"big\.npz: \|y\| reaches .*overflow float64"),
    Case("data-X-1e-200", kkt_on(lambda f: f.npz("tiny.npz", X=X * 1e-200, y=Y), "--act", "relu"),
         r"tiny\.npz with --act relu: .*below what float64 can compute with"),
    Case("data-X-1e30-float32", kkt_on(lambda f: f.npz("big.npz", X=X * 1e30, y=Y), "--dtype", "float32"),
         r"big\.npz: \|X\| reaches .*overflow float32"),
    Case("act-leaky-1e308", kkt("--act", "leaky:1e308"), r"--act leaky:1e308: .*overflow float64"),
    Case("act-poly-1e9", kkt("--act", "poly:1e9"), r"--act poly:1e9: .*below what float64 can compute"),
    Case("device-unknown", kkt("--device", "tpu"), r"--device 'tpu'"),
    Case("device-cuda-absent", kkt("--device", "cuda"), r"CUDA is not available",
         needs=("no-cuda",)),
    # ---- click's own usage errors, one line as well
    Case("restarts-abc", kkt("--restarts", "abc"), r"'--restarts'.*not a valid integer"),
    Case("loss-unknown", kkt("--loss", "hinge"), r"'--loss'.*'hinge'"),
    Case("dtype-unknown", kkt("--dtype", "float16"), r"'--dtype'.*'float16'"),
    Case("option-unknown", kkt("--bogus"), r"No such option '--bogus'"),
    Case("command-unknown", lambda f: ["kkkt", f.npz()], r"No such command 'kkkt'"),
    Case("data-missing-argument", lambda f: ["kkt"], r"Missing argument 'DATA'"),
    # ---- the output
    Case("out-missing-folder", kkt("--out", "nowhere/kkt.h5"),
         r"folder .*nowhere.* does not exist"),
    Case("out-exists", lambda f: ["kkt", f.npz(), *FAST, "--out", f.existing("kkt.h5")],
         r"exists; pass --force"),
    Case("out-extension", kkt("--out", "kkt.txt"), r"unsupported extension"),
    Case("out-is-folder", lambda f: ["kkt", f.npz(), *FAST, "--out", f.folder("res.h5")],
         r"is a directory"),
    Case("out-is-the-data", lambda f: ["kkt", f.h5(), *FAST, "--out", f.path("data.h5")],
         r"exists; pass --force"),
    # ---- ncfkit data teacher
    Case("teacher-n-0", lambda f: ["data", "teacher", "-o", f.path("t.npz"), "--n", "0"],
         r"n >= 1"),
    Case("teacher-out-exists", lambda f: ["data", "teacher", "-o", f.existing("t.npz")],
         r"exists; pass --force"),
    Case("teacher-out-extension", lambda f: ["data", "teacher", "-o", f.path("t.mat")],
         r"unsupported extension"),
    Case("teacher-out-missing-folder", lambda f: ["data", "teacher", "-o", f.path("no/t.npz")],
         r"does not exist"),
    Case("teacher-bad-act", lambda f: ["data", "teacher", "-o", f.path("t.npz"), "--act", "x"],
         r"unknown activation"),
    Case("teacher-labels-overflow",
         lambda f: ["data", "teacher", "-o", f.path("t.npz"), "--act", "poly:50", "--hidden", "3,3"],
         r"--act poly:50 --hidden 3,3: the teacher's labels overflow float64"),
    Case("teacher-seed-30-digits",
         lambda f: ["data", "teacher", "-o", f.path("t.npz"), "--seed", "123456789012345678901234567890"],
         r"--seed 1234.*\[0, 2\^63\)"),
    Case("teacher-seed-negative", lambda f: ["data", "teacher", "-o", f.path("t.npz"), "--seed", "-5"],
         r"--seed -5: must be an integer in \[0, 2\^63\)"),
    Case("sparsity-verify-seed-30-digits", sparsity(Files.kkt, "--verify", "--seed", "123456789012345678901234567890"),
         r"--seed 1234.*\[0, 2\^63\)"),
    Case("teacher-labels-squares-overflow",
         lambda f: ["data", "teacher", "-o", f.path("t.npz"), "--act", "poly:20", "--hidden", "3,3"],
         r"--act poly:20 --hidden 3,3: the teacher's labels: \|y\| reaches .* use a smaller power"),
    # ---- ncfkit info
    Case("info-missing", lambda f: ["info", f.path("none.h5")], r"does not exist"),
    Case("info-empty", lambda f: ["info", f.text("e.h5", b"")], r"is empty"),
    Case("info-npz", lambda f: ["info", f.npz()], r"not a readable HDF5.*no HDF5 signature"),
    Case("info-not-ncfkit", lambda f: ["info", f.h5()], r"not an ncfkit result file"),
    Case("info-truncated", lambda f: ["info", f.truncated()], r"truncated or corrupted"),
    # ---- ncfkit sparsity
    Case("sparsity-point-out-of-range", sparsity(Files.kkt, "--point", "9"),
         r"--point 9 out of range"),
    Case("sparsity-point-negative", sparsity(Files.kkt, "--point", "-1"),
         r"--point -1 out of range"),
    Case("sparsity-tol-negative", sparsity(Files.kkt, "--tol", "-1"), r"tol"),
    Case("sparsity-tol-nan", sparsity(Files.kkt, "--tol", "nan"), r"tol"),
    Case("sparsity-missing", sparsity(lambda f: f.path("none.h5")), r"does not exist"),
    Case("sparsity-truncated", sparsity(Files.truncated), r"truncated or corrupted"),
    Case("sparsity-corrupted", sparsity(Files.corrupted),
         r"truncated or corrupted|damaged|corrupt"),
    Case("sparsity-not-ncfkit", sparsity(Files.h5), r"not an ncfkit result file"),
    Case("sparsity-data-npz", sparsity(Files.npz), r"not a weight snapshot"),
    Case("sparsity-out-exists", sparsity(Files.kkt, "--out", lambda f: f.existing("s.h5")),
         r"exists; pass --force"),
    Case("sparsity-kkt-without-architecture",
         sparsity(lambda f: f.forged("k.h5", "kkt", {"provenance": {"seed": 0},
                                                      "points": {"0": {"w": np.ones(4)}}})),
         r"no architecture"),
    Case("sparsity-kkt-without-points",
         sparsity(lambda f: f.forged("k.h5", "kkt", {"provenance": {"seed": 0}})),
         r"no converged point"),
    # ---- ncfkit escape (docs/theory.md §4)
    Case("escape-delta-0", escape("--delta", "0"), r"delta|δ", needs=("escape",)),
    Case("escape-delta-negative", escape("--delta", "-1e-3"), r"delta|δ", needs=("escape",)),
    Case("escape-delta-second-negative", escape("--delta", "1e-3", "--delta", "-1"),
         r"delta|δ", needs=("escape",)),
    Case("escape-lr-0", escape("--lr", "0"), r"lr|η", needs=("escape",)),
    Case("escape-lr-negative", escape("--lr", "-0.1"), r"lr|η", needs=("escape",)),
    Case("escape-point-out-of-range", escape("--kkt", Files.kkt, "--point", "9"),
         r"point", needs=("escape",)),
    Case("escape-kkt-truncated", escape("--kkt", Files.truncated),
         r"truncated or corrupted", needs=("escape",)),
    Case("escape-kkt-not-ncfkit", escape("--kkt", Files.h5), r"not an ncfkit result file",
         needs=("escape",)),
    Case("escape-missing-data", escape(data=lambda f: f.path("none.npz")), r"does not exist",
         needs=("escape",)),
    Case("escape-nan-data", escape(data=lambda f: f.npz("a.npz", X=NAN_X, y=Y)),
         r"X contains NaN", needs=("escape",)),
    Case("escape-out-exists", escape("--out", lambda f: f.existing("run.h5")),
         r"exists; pass --force", needs=("escape",)),
    Case("escape-out-missing-folder", escape("--out", lambda f: f.path("no/run.h5")),
         r"does not exist", needs=("escape",)),
    Case("escape-restarts-0", escape("--init", "kkt", "--restarts", "0"), r"--restarts",
         needs=("escape",)),
    Case("escape-max-steps-0", escape("--max-steps", "0"), r"--max-steps", needs=("escape",)),
    Case("escape-tol-negative", escape("--tol", "-1"), r"--tol", needs=("escape",)),
    Case("escape-delta-1e308", escape("--delta", "1e308"), r"--delta 1e\+308: the outputs .*overflow float64",
         needs=("escape",)),
    Case("escape-delta-1e-320", escape("--delta", "1e-320"), r"--delta .*below the smallest normal float64",
         needs=("escape",)),
    Case("escape-lr-1e308", escape("--lr", "1e308", "--max-time", "1"),
         r"--lr 1e\+308: one step is longer than --max-time", needs=("escape",)),
    Case("escape-rtol-1e-300", escape("--method", "flow", "--rtol", "1e-300"),
         r"--rtol 1e-300: finer than float64 can resolve", needs=("escape",)),
    Case("escape-rtol-float32", escape("--dtype", "float32", "--rtol", "1e-9"),
         r"--rtol 1e-09: finer than float32", needs=("escape",)),
    Case("escape-seed-30-digits", escape("--seed", "999999999999999999999999999999"), r"--seed .*2\^63",
         needs=("escape",)),
    Case("escape-data-1e200", escape(data=lambda f: f.npz("big.npz", X=X * 1e200, y=Y)),
         r"big\.npz: \|X\| reaches", needs=("escape",)),
    Case("escape-act-leaky-1e308", escape("--act", "leaky:1e308"), r"leaky:1e308: .*overflow",
         needs=("escape",)),
    Case("escape-kkt-point-without-weights",
         escape("--kkt", lambda f: f.forged("k.h5", "kkt", {"points": {"0": {"ncf": 1.0}}}),
                "--init", "kkt"),
         r"point 0 is damaged", needs=("escape",)),
    # ---- ncfkit collect
    Case("collect-missing", lambda f: ["collect", f.path("none.h5")], r"does not exist",
         needs=("collect",)),
    Case("collect-truncated", lambda f: ["collect", f.truncated()], r"truncated or corrupted",
         needs=("collect",)),
    Case("collect-kkt-file", lambda f: ["collect", f.kkt()], r"'kkt' file; expected escape",
         needs=("collect",)),
    Case("collect-no-runs", lambda f: ["collect", f.forged("e.h5", "escape", {"runs": {}})],
         r"no runs", needs=("collect",)),
    Case("collect-malformed-runs",
         lambda f: ["collect", f.forged("e.h5", "escape", {"runs": {"first": {"delta": 1.0}}})],
         r"e\.h5", needs=("collect",)),
    # ---- ncfkit plot
    Case("plot-truncated", lambda f: ["plot", f.truncated(), "-o", f.path("fig.png")],
         r"truncated or corrupted", needs=("plot",)),
    Case("plot-not-ncfkit", lambda f: ["plot", f.h5(), "-o", f.path("fig.png")],
         r"not an ncfkit result file", needs=("plot",)),
    Case("plot-escape-without-runs",
         lambda f: ["plot", f.forged("e.h5", "escape", {"status": "complete"}), "-o",
                    f.path("fig.png")], r"e\.h5", needs=("plot",)),
    Case("plot-kkt-without-points",
         lambda f: ["plot", f.forged("k.h5", "kkt", {"provenance": {"seed": 0}}), "-o",
                    f.path("fig.png")], r"k\.h5|point", needs=("plot",)),
    Case("plot-out-exists", lambda f: ["plot", f.kkt(), "-o", f.existing("fig.png")],
         r"exists; pass --force", needs=("plot",)),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def kkt_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kkt")
    np.savez(root / "data.npz", X=X, y=Y)
    out = root / "kkt.h5"
    result = CliRunner().invoke(cli, ["kkt", str(root / "data.npz"), *FAST, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


CASE_PARAMS = [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)]
                             if c.xfail else []) for c in CASES]


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_bad_input(case: Case, tmp_path: Path, kkt_file: Path, monkeypatch):
    for name in case.needs:
        if name == "no-cuda" and CUDA:
            pytest.skip("CUDA is available here")
        assert name == "no-cuda" or name in cli.commands, f"`ncfkit {name}` is not registered"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # relative --out paths land here, inside the snapshot
    args = case.args(Files(work, kkt_file))
    before = _snapshot(work)

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == "", f"stdout: {result.stdout!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(case.match, lines[0], re.IGNORECASE), lines[0]
    assert _snapshot(work) == before, "a file was created, changed or removed"


def test_force_overwrites_atomically(tmp_path: Path, monkeypatch):
    """The counterpart of ``out-exists``: with --force the old file is replaced whole and
    no temporary file is left beside it."""
    monkeypatch.chdir(tmp_path)
    np.savez("data.npz", X=X, y=Y)
    Path("kkt.h5").write_bytes(b"old")
    result = CliRunner().invoke(cli, ["kkt", "data.npz", *FAST, "--out", "kkt.h5", "--force"])
    assert result.exit_code == 0, result.output
    with h5py.File("kkt.h5", "r") as f:
        assert f.attrs["ncfkit_kind"] == "kkt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "kkt.h5"]


def test_debug_shows_the_traceback(tmp_path: Path):
    """``--debug`` lets the exception through (CliRunner keeps it instead of a traceback)."""
    from ncfkit.errors import InputError

    result = CliRunner().invoke(cli, ["--debug", "kkt", str(tmp_path / "none.npz")])
    assert isinstance(result.exception, InputError)
    assert "does not exist" in str(result.exception)


@pytest.mark.slow
def test_plot_tiny_dpi(tmp_path: Path, kkt_file: Path):
    """In a subprocess, as the failure mode was a crash of the whole interpreter: a figure
    under one pixel killed Agg with SIGFPE (exit 136) and left its temporary file."""
    import subprocess
    import sys

    shutil.copy(kkt_file, tmp_path / "kkt.h5")
    proc = subprocess.run([sys.executable, "-m", "ncfkit", "plot", "kkt.h5", "-o", "fig.png",
                           "--dpi", "0.001"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert proc.returncode == 2, proc.stderr[-500:]
    assert "--dpi" in proc.stderr and leftovers == ["kkt.h5"]
