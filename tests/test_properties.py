"""Property tests (hypothesis) for the loaders and the option grammars: valid input round
trips exactly, and anything else is an :class:`~ncfkit.errors.InputError` -- never another
exception, so the CLI always answers bad input with exit code 2 and one line.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ncfkit.activations import PRESETS, parse_activation
from ncfkit.errors import InputError
from ncfkit.io import load_data, save_data, sha256_of
from ncfkit.models import parse_hidden

# tmp_path is shared by the examples of one test; _fresh gives each its own file name.
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)


_counter = itertools.count()


def _fresh(tmp_path: Path, suffix: str) -> Path:
    return tmp_path / f"data{next(_counter)}{suffix}"


@st.composite
def datasets(draw):
    n = draw(st.integers(1, 8))
    d = draw(st.integers(1, 5))
    X = draw(hnp.arrays(np.float64, (n, d), elements=FINITE))
    y = draw(hnp.arrays(np.float64, (n,), elements=FINITE))
    return X, y


def _assert_valid(ds) -> None:
    """What every successfully loaded data set satisfies."""
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.float64
    assert ds.X.ndim == 2 and ds.y.ndim == 1
    assert ds.n == ds.y.shape[0] >= 1 and ds.d >= 1
    assert np.isfinite(ds.X).all() and np.isfinite(ds.y).all()


# --------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".hdf5", ".csv"])
@SETTINGS
@given(data=datasets())
def test_round_trip(tmp_path, suffix, data):
    X, y = data
    path = _fresh(tmp_path, suffix)
    save_data(path, X, y)
    ds = load_data(path)
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.sha256 == sha256_of(path) and ds.source == str(path)
    _assert_valid(ds)


SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
DTYPES = st.sampled_from([np.float64, np.float32, np.int64, np.bool_, np.complex128, "U3"])


@st.composite
def arrays(draw):
    dtype = draw(DTYPES)
    shape = draw(SHAPES)
    if dtype == "U3":
        return draw(hnp.arrays("U3", shape, elements=st.text(max_size=3)))
    return draw(hnp.arrays(dtype, shape))  # NaN and Inf included for floats


def _write(path: Path, arrays: dict) -> None:
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                if v.dtype.kind == "U":  # variable-length UTF-8 strings
                    f.create_dataset(k, data=v.astype(object), dtype=h5py.string_dtype())
                else:
                    f[k] = v


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@SETTINGS
@given(X=st.one_of(arrays(), st.none()), y=st.one_of(arrays(), st.none()))
def test_any_arrays_load_or_input_error(tmp_path, suffix, X, y):
    """Any ranks, sizes (0 included), dtypes and values of X and y (or a missing one)."""
    path = _fresh(tmp_path, suffix)
    _write(path, {k: v for k, v in (("X", X), ("y", y)) if v is not None})
    try:
        ds = load_data(path)
    except InputError as e:
        assert "\n" not in str(e)
        return
    _assert_valid(ds)


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".csv"])
@SETTINGS
@given(blob=st.binary(max_size=200))
def test_any_bytes_load_or_input_error(tmp_path, suffix, blob):
    path = _fresh(tmp_path, suffix)
    path.write_bytes(blob)
    try:
        ds = load_data(path)
    except InputError:
        return
    _assert_valid(ds)


CSV_CELL = st.one_of(FINITE.map(repr), st.sampled_from(["", "nan", "inf", "x", " 1 ", "1e999"]))


@SETTINGS
@given(rows=st.lists(st.lists(CSV_CELL, min_size=0, max_size=4), max_size=5))
def test_any_csv_table_loads_or_input_error(tmp_path, rows):
    path = _fresh(tmp_path, ".csv")
    path.write_text("\n".join(",".join(r) for r in rows))
    try:
        ds = load_data(path)
    except InputError:
        return
    _assert_valid(ds)


# --------------------------------------------------------------------------- grammars


ALPHA = FINITE.filter(lambda a: abs(a) < 1e6)
POWER = st.integers(1, 6)


@st.composite
def activation_specs(draw):
    kind = draw(st.sampled_from(["preset", "leaky", "poly", "poly-alpha"]))
    if kind == "preset":
        name = draw(st.sampled_from(sorted(PRESETS)))
        return name, PRESETS[name].p, PRESETS[name].alpha
    if kind == "leaky":
        alpha = draw(ALPHA)
        return f"leaky:{alpha!r}", 1.0, alpha
    p = draw(POWER)
    if kind == "poly":
        return f"poly:{p}", float(p), 0.0
    alpha = draw(ALPHA)
    return f"poly:{p}:{alpha!r}", float(p), alpha


@SETTINGS
@given(spec=activation_specs(), upper=st.booleans(), pad=st.sampled_from(["", " ", "\t"]))
def test_valid_activation_parses(spec, upper, pad):
    text, p, alpha = spec
    act = parse_activation(pad + (text.upper() if upper else text) + pad)
    assert act.p == p and act.alpha == alpha


@SETTINGS
@given(text=st.one_of(
    st.text(max_size=20),
    st.text(alphabet=":0123456789.-+eEinfa lkypo", max_size=16),
    st.builds(lambda h, t: f"{h}:{t}", st.sampled_from(["poly", "leaky", "relu"]),
              st.text(max_size=12)),
))
def test_any_activation_text_parses_or_input_error(text):
    try:
        act = parse_activation(text)
    except InputError as e:
        assert "\n" not in str(e) or "\n" in text  # the message quotes the input
        return
    if act.homogeneous:
        assert act.p >= 1 and math.isfinite(act.p) and math.isfinite(act.alpha)


@SETTINGS
@given(widths=st.lists(st.integers(1, 10_000), min_size=1, max_size=6),
       space=st.sampled_from(["", " "]))
def test_valid_hidden_parses(widths, space):
    assert parse_hidden(f",{space}".join(map(str, widths))) == tuple(widths)


@SETTINGS
@given(text=st.one_of(st.text(max_size=20), st.text(alphabet="0123456789,- +_.", max_size=12)))
def test_any_hidden_text_parses_or_input_error(text):
    try:
        widths = parse_hidden(text)
    except InputError:
        return
    assert widths and all(isinstance(k, int) and k >= 1 for k in widths)
