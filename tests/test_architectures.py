"""Every registered architecture (:data:`ncfkit.models.ARCHITECTURES`), through the
protocol and through every command: registering a new one runs all of this for it.

- protocol: the class defines every member of :class:`~ncfkit.models.Architecture`;
  ``from_dict(to_dict())`` and the weight-file round trip rebuild it; ``split``/``join``,
  ``weight_shapes``, ``layer_ranges`` and the neuron layout agree; the closed-form
  ``vjp``, ``forward_and_vjp`` and ``hvp`` equal ``torch.autograd`` through ``forward``
  in float64 (smooth activations only, so no kink decides a result); numpy arrays give
  the tensors' numbers; ``homogeneity`` is the order of H; the zero-preserving subset gets
  an exactly zero gradient (Lemma 16); the compiled kernel, where ``kernel_spec`` says it
  applies, gives the torch engine's gradients;
- commands (click's CliRunner, in process, a few seconds each): ``kkt --out``,
  ``sparsity`` (exit 2 for an architecture without hidden neurons), ``escape --method gd``
  and ``--method flow`` (``--out``), ``escape --init FILE`` from a weight file the
  architecture wrote, ``plot`` and ``info`` of every output.

A new architecture may add its tiny options to :data:`UNIT_OPTIONS` / :data:`CLI_OPTIONS`;
without an entry it runs with its defaults.
"""

from __future__ import annotations

import json
import typing

import numpy as np
import pytest
import torch

from ncfkit.errors import InputError
from ncfkit.models import (
    ARCHITECTURES,
    ARCHS,
    Architecture,
    architecture_from_dict,
    architecture_of_weight_arrays,
    make_architecture,
)
from utils import KERNEL_OPTIONAL, assert_close, run_cli, seeded

F64 = torch.float64
D = 3  # input dimension of the protocol tests
#: Options of the protocol tests, by architecture (smooth activations: no kinks).
UNIT_OPTIONS: dict[str, dict[str, typing.Any]] = {
    "mlp": {"hidden": "3,2", "act": "square"},
    "diag": {"depth": 3},
}
#: Options of the command tests (a few seconds per command), as CLI flags.
CLI_OPTIONS: dict[str, list[str]] = {
    "mlp": ["--hidden", "3", "--act", "square"],
    "diag": ["--depth", "2"],
}


def _arch(kind: str, d: int = D) -> Architecture:
    return ARCHITECTURES[kind].from_options(d, **UNIT_OPTIONS.get(kind, {}))


def _protocol_members() -> list[str]:
    """Every name the protocol declares (annotated attributes, methods, properties)."""
    names = set(vars(Architecture).get("__annotations__", {}))
    names |= {n for n, v in vars(Architecture).items()
              if not n.startswith("_") and (callable(v) or isinstance(v, (property, classmethod)))}
    return sorted(names)


@pytest.fixture(params=ARCHS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def data():
    g = seeded(3)
    X = torch.randn(7, D, generator=g, dtype=F64)
    y = torch.randn(7, generator=g, dtype=F64)
    return X, y


# --------------------------------------------------------------------------- the protocol


def test_registry_names_match_classes(kind):
    cls = ARCHITECTURES[kind]
    assert cls.kind == kind and ARCHS == tuple(ARCHITECTURES)
    assert make_architecture(kind, D, **UNIT_OPTIONS.get(kind, {})) == _arch(kind)


def test_class_defines_every_protocol_member(kind):
    arch = _arch(kind)
    assert isinstance(arch, Architecture)
    missing = [n for n in _protocol_members() if not hasattr(arch, n)]
    assert not missing, f"{type(arch).__name__} lacks {missing}"
    assert set(ARCHITECTURES[kind].options) <= {"hidden", "act", "depth"}  # the CLI's options
    assert arch.activation is None or arch.activation.name


def test_record_round_trip(kind):
    arch = _arch(kind)
    spec = arch.to_dict()
    assert spec["arch"] == kind
    assert type(arch).from_dict(spec) == arch
    assert architecture_from_dict(json.loads(json.dumps(spec))) == arch
    assert isinstance(arch.describe(), str) and arch.describe()


def test_unused_options_are_ignored(kind):
    """Each architecture reads only its own ``options``; the others may hold anything."""
    cls = ARCHITECTURES[kind]
    junk = {k: "junk" for k in ("hidden", "act", "depth") if k not in cls.options}
    assert cls.from_options(D, **UNIT_OPTIONS.get(kind, {}), **junk) == _arch(kind)


def test_blocks_layout(kind):
    arch = _arch(kind)
    w = torch.arange(arch.num_params, dtype=F64)
    blocks = arch.split(w)
    assert [tuple(b.shape) for b in blocks] == [tuple(s) for s in arch.weight_shapes]
    assert len(arch.weight_names) == len(arch.weight_shapes) == len(arch.layer_ranges)
    assert [b.numel() for b in blocks] == [stop - start for start, stop in arch.layer_ranges]
    assert arch.layer_ranges[0][0] == 0 and arch.layer_ranges[-1][1] == arch.num_params
    for (start, stop), b in zip(arch.layer_ranges, blocks, strict=True):
        assert torch.equal(b.reshape(-1), w[start:stop])
    assert torch.equal(arch.join(blocks), w)
    batch = torch.stack([w, -w])  # leading axes are a batch
    assert [tuple(b.shape) for b in arch.split(batch)] == [(2, *s) for s in arch.weight_shapes]


def test_neuron_layout(kind):
    """Neuron j of hidden layer l owns row j of block l−1 and column j of block l."""
    arch = _arch(kind)
    assert arch.has_hidden_neurons == bool(arch.neuron_layers)
    w = torch.randn(arch.num_params, generator=seeded(0), dtype=F64)
    norms = arch.neuron_norms(w)
    assert len(norms) == len(arch.neuron_layers or ())
    blocks = arch.split(w)
    for l, (width, (rows, cols)) in enumerate(zip(arch.neuron_layers or (), norms, strict=True)):
        assert rows.shape == cols.shape == (width,)
        assert_close(rows, blocks[l].norm(dim=-1), rtol=1e-14)
        assert_close(cols, blocks[l + 1].norm(dim=-2), rtol=1e-14)


def test_weight_file_round_trip(kind):
    arch = _arch(kind)
    w = torch.randn(arch.num_params, generator=seeded(1), dtype=F64)
    arrays = arch.weight_arrays(w)
    assert sorted(arrays) == sorted(arch.weight_names)
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    assert np.array_equal(arch.weights_from_arrays(arrays, "w.npz"), w.numpy())
    assert architecture_of_weight_arrays(arrays, "w.npz", **UNIT_OPTIONS.get(kind, {})) == arch
    with pytest.raises(InputError, match=r"w\.npz"):
        arch.weights_from_arrays({**arrays, "extra": np.zeros(1)} if len(arrays) > 1 else {}, "w.npz")


def test_weight_files_through_io(kind, tmp_path):
    """io reads a weight file the way the architecture says, finds its architecture from
    the arrays, and rejects NaN."""
    from ncfkit.io import architecture_of_weights, read_weights, write_weights

    arch = _arch(kind)
    w = np.random.default_rng(2).standard_normal(arch.num_params)
    write_weights(tmp_path / "w.npz", arch.weight_arrays(w))
    assert np.array_equal(read_weights(tmp_path / "w.npz", arch), w)
    assert architecture_of_weights(tmp_path / "w.npz", **UNIT_OPTIONS.get(kind, {})) == arch
    write_weights(tmp_path / "nan.npz", arch.weight_arrays(np.full(arch.num_params, np.nan)))
    with pytest.raises(InputError, match=r"nan\.npz.*NaN"):
        read_weights(tmp_path / "nan.npz", arch)


def test_no_architecture_claims_other_arrays():
    with pytest.raises(InputError, match="not a weight snapshot"):
        architecture_of_weight_arrays({"X": np.zeros((2, 2))}, "data.npz")


def _loss_parts(y):
    """F(w) = ½‖H(X; w) − y‖²: g = ∂F/∂H = H − y, ġ = Ḣ."""
    return (lambda out: out - y), (lambda out, dout: dout)


def test_vjp_and_forward_and_vjp_against_autograd(kind, data):
    X, y = data
    arch = _arch(kind)
    w = torch.randn(2, arch.num_params, generator=seeded(2), dtype=F64).requires_grad_()
    g = torch.randn(2, X.shape[0], generator=seeded(4), dtype=F64)
    (ref,) = torch.autograd.grad((arch.forward(X, w) * g).sum(), w)
    assert_close(arch.vjp(X, w.detach(), g), ref, rtol=1e-12, what="vjp")
    out, grad = arch.forward_and_vjp(X, w.detach(), lambda out: g)
    assert_close(out, arch.forward(X, w.detach()), rtol=1e-14, what="forward")
    assert_close(grad, ref, rtol=1e-12, what="forward_and_vjp")


@pytest.mark.parametrize("with_dg", [False, True], ids=["ncf-like", "square-loss"])
def test_hvp_against_dense_autograd_hessian(kind, data, with_dg):
    X, y = data
    arch = _arch(kind)
    w = torch.randn(arch.num_params, generator=seeded(5), dtype=F64)
    V = torch.randn(3, arch.num_params, generator=seeded(6), dtype=F64)
    if with_dg:
        g_of_out, dg = _loss_parts(y)

        def F(v):
            return 0.5 * ((arch.forward(X, v) - y) ** 2).sum()
    else:
        g_of_out, dg = (lambda out: y), None

        def F(v):
            return arch.forward(X, v) @ y
    Hess = torch.autograd.functional.hessian(F, w)
    assert_close(arch.hvp(X, w, V, g_of_out, dg), V @ Hess, rtol=1e-11, atol=1e-12, what="hvp")


def test_numpy_arrays_give_the_tensors_numbers(kind, data):
    X, y = data
    arch = _arch(kind)
    w = torch.randn(2, arch.num_params, generator=seeded(7), dtype=F64)
    g = torch.randn(2, X.shape[0], generator=seeded(8), dtype=F64)
    out_n = arch.forward(X.numpy(), w.numpy())
    assert isinstance(out_n, np.ndarray)
    assert_close(out_n, arch.forward(X, w), rtol=1e-13)
    assert_close(arch.vjp(X.numpy(), w.numpy(), g.numpy()), arch.vjp(X, w, g), rtol=1e-13)
    hv = arch.hvp(X.numpy(), w[0].numpy(), w.numpy(), lambda out: y.numpy())
    assert isinstance(hv, np.ndarray)
    assert_close(hv, arch.hvp(X, w[0], w, lambda out: y), rtol=1e-12, atol=1e-13)


def test_homogeneity_is_the_order_of_H(kind, data):
    X, _ = data
    arch = _arch(kind)
    L_h = arch.homogeneity
    assert L_h is not None  # UNIT_OPTIONS pick homogeneous networks
    w = torch.randn(arch.num_params, generator=seeded(9), dtype=F64)
    assert_close(arch.forward(X, 2.0 * w), 2.0**L_h * arch.forward(X, w), rtol=1e-12)


def test_zero_preserving_subset_gets_zero_gradient(kind, data):
    """Lemma 16 at one step: with w_z = 0 the gradient of 𝓛 vanishes exactly on w_z (an
    architecture may declare w_z empty for every w: then every mask must be empty)."""
    X, y = data
    arch = _arch(kind)
    masks = []
    for seed in range(20):
        w = torch.randn(arch.num_params, generator=seeded(seed), dtype=F64)
        mask, zero = arch.zero_preserving_subset(w, tol=0.5)
        masks.append(mask)
        if 0 < int(mask.sum()) < arch.num_params:
            break
    else:
        assert not any(bool(m.any()) for m in masks), "w_z is everything or nothing, seed by seed"
        return
    assert (zero is None) == (arch.neuron_layers is None)
    assert tuple(mask.shape) == (arch.num_params,) and mask.dtype == torch.bool
    mask_np, _ = arch.zero_preserving_subset(w.numpy(), tol=0.5)  # numpy in, numpy out
    assert isinstance(mask_np, np.ndarray) and np.array_equal(mask_np, mask.numpy())
    w = w.masked_fill(mask, 0.0)
    grad = arch.vjp(X, w, arch.forward(X, w) - y)
    assert torch.equal(grad[mask], torch.zeros_like(grad[mask]))


def test_compiled_kernel_where_kernel_spec_applies(kind, data):
    from ncfkit import fastgd
    from ncfkit.dynamics import Objective
    from ncfkit.losses import make_loss

    X, y = data
    arch = _arch(kind)
    if arch.kernel_spec is None:
        assert fastgd.compiled_unsupported(arch=arch, X=X, loss_name="square") is not None
        return
    if not fastgd.compiled_available() and KERNEL_OPTIONAL:
        pytest.skip("the compiled kernel was not built")
    assert fastgd.compiled_unsupported(arch=arch, X=X, loss_name="square") is None
    objective = Objective(arch, X, y, make_loss("square", "sum"))
    w = torch.randn(2, arch.num_params, generator=seeded(10), dtype=F64)
    L_c, g_c = fastgd.value_and_grad_fn(objective, "compiled")(w)
    L_t, g_t = fastgd.value_and_grad_fn(objective, "torch")(w)
    assert_close(L_c, L_t, rtol=1e-12)
    assert_close(g_c, g_t, rtol=1e-11, atol=1e-13)


# --------------------------------------------------------------------------- every command


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    """8 seeded points in R² (d = 2, so a one-vector model of two weights is a 2-D picture)."""
    root = tmp_path_factory.mktemp("architectures")
    g = np.random.default_rng(0)
    np.savez(root / "data.npz", X=g.standard_normal((8, 2)), y=g.standard_normal(8))
    return root


@pytest.fixture(scope="module", params=ARCHS)
def outputs(request, cli_data):
    """kkt, escape (gd), escape (flow) and escape from a weight file of one architecture,
    each with --out; returns (kind, architecture, {name: (click result, path)})."""
    kind = request.param
    root = cli_data / kind
    root.mkdir()
    data = cli_data / "data.npz"
    opts = ["--arch", kind, *CLI_OPTIONS.get(kind, [])]
    arch = architecture_from_dict(json.loads(_provenance_arch(run_cli("kkt", data, *opts, "--restarts", "4",
                                                                      "--out", root / "kkt.h5"), root / "kkt.h5")))
    from ncfkit.io import write_weights

    w0 = np.random.default_rng(1).standard_normal(arch.num_params)
    write_weights(root / "w0.npz", arch.weight_arrays(w0))
    escape = [data, *opts, "--delta", "0.05", "--lr", "0.01", "--json"]
    results = {"kkt": (None, root / "kkt.h5")}
    for name, extra in {"gd": ["--method", "gd"], "flow": ["--method", "flow"],
                        "file": ["--init", root / "w0.npz"]}.items():
        path = root / f"{name}.h5"
        results[name] = (run_cli("escape", *escape, *extra, "--out", path), path)
    return kind, arch, results


def _provenance_arch(result, path) -> str:
    """The architecture record a kkt run stored (the run must have succeeded)."""
    from ncfkit.io import read_h5

    assert result.exit_code == 0, result.output
    spec = read_h5(path, ("kkt",))["provenance"]["architecture"]
    return spec if isinstance(spec, str) else json.dumps(spec)


def test_cli_kkt_records_the_architecture(outputs):
    from ncfkit.io import read_h5

    kind, arch, results = outputs
    tree = read_h5(results["kkt"][1], ("kkt",))
    assert tree["num_params"] == arch.num_params and arch.kind == kind
    assert tree["points"], "kkt found no point"
    point = tree["points"]["0"]
    assert np.asarray(point["w"]).size == arch.num_params
    if arch.neuron_layers is not None:  # the certificate's neuron fields
        assert len(np.atleast_1d(point["active_per_layer"])) == len(arch.neuron_layers)


@pytest.mark.parametrize("run", ["gd", "flow", "file"])
def test_cli_escape_runs(outputs, run):
    kind, arch, results = outputs
    result, path = results[run]
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["num_params"] == arch.num_params and summary["status"] == "complete"
    assert summary["method"] == ("flow" if run == "flow" else "gd")
    assert summary["runs"][0]["escaped"], summary["runs"][0]
    from ncfkit.io import read_h5

    prov = read_h5(path, ("escape",))["provenance"]
    assert json.loads(prov["architecture"]) == arch.to_dict()


def test_cli_sparsity(outputs, tmp_path):
    kind, arch, results = outputs
    result = run_cli("sparsity", results["kkt"][1], "--json", "--out", tmp_path / "s.h5")
    if not arch.has_hidden_neurons:  # documented: exit 2, one line
        assert result.exit_code == 2 and "no hidden neurons" in result.stderr, result.output
        return
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["architecture"] == arch.to_dict()
    assert [layer["width"] for layer in summary["layers"]] == list(arch.neuron_layers)
    assert summary["num_params"] == arch.num_params


@pytest.mark.parametrize("name", ["kkt", "gd", "flow", "file"])
def test_cli_plot_and_info_of_every_output(outputs, name, tmp_path):
    kind, arch, results = outputs
    path = results[name][1]
    info = run_cli("info", path)
    assert info.exit_code == 0, info.output
    assert arch.describe() in info.stdout
    figure = tmp_path / "fig.png"
    plot = run_cli("plot", path, "-o", figure)
    layered = all(len(s) == 2 for s in arch.weight_shapes)
    if name != "kkt" and not layered and arch.num_params != 2:  # documented: a 2-D picture only
        assert plot.exit_code == 2 and "2-D picture" in plot.stderr, plot.output
        return
    assert plot.exit_code == 0, plot.output
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
