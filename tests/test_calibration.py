"""qlearn.calibration: observers, fake quantization over a range, error measures."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qlearn import calibration as C

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
acts = arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 8)), elements=finite)
SETTINGS = settings(max_examples=60, deadline=None)


def laplace(n=2000, f=32, seed=0):
    x = np.random.default_rng(seed).laplace(size=(n, f))
    x[:, 5] *= 30  # one outlier channel
    return x


@SETTINGS
@given(acts, st.floats(50, 100), st.booleans())
def test_percentile_never_excludes_more_than_stated(x, p, symmetric):
    r = C.percentile(x, p, symmetric)
    outside = np.mean((x < r.lo) | (x > r.hi))
    assert outside <= (100 - p) / 100 + 1e-12
    assert r.lo <= r.hi


@SETTINGS
@given(acts, st.sampled_from([2, 3, 4, 8]), st.booleans())
def test_mse_observer_never_worse_than_minmax(x, bits, symmetric):
    def err(r):
        return float(((x - C.fake_quantize_range(x, r, bits, symmetric)) ** 2).sum())
    assert err(C.mse_optimal(x, bits, symmetric)) <= err(C.minmax(x, symmetric)) * (1 + 1e-12) + 1e-12


@SETTINGS
@given(acts, st.sampled_from(C.OBSERVERS), st.sampled_from([3, 4, 8]))
def test_every_observer_range_inside_minmax(x, method, bits):
    r = C.observe(x, method, bits)
    a = float(np.abs(x).max())
    assert -a - 1e-9 <= r.lo <= r.hi <= a + 1e-9


@SETTINGS
@given(acts, st.sampled_from([2, 4, 8]), st.booleans())
def test_fake_quantize_range_levels_and_bounds(x, bits, symmetric):
    r = C.minmax(x, symmetric)
    xh = C.fake_quantize_range(x, r, bits, symmetric)
    assert len(np.unique(xh)) <= 2 ** bits
    # asymmetric: rounding the zero point may shift the grid by up to half a step
    slack = 0 if symmetric else (max(r.hi, 0) - min(r.lo, 0)) / (2 ** bits - 1) / 2
    tol = 1e-6 * (1 + abs(r.lo) + abs(r.hi))
    assert xh.min() >= min(r.lo, 0) - slack - tol and xh.max() <= max(r.hi, 0) + slack + tol


def test_fake_quantize_range_error_bound():
    x = laplace()
    r = C.minmax(x)
    step = r.hi / (2 ** 7 - 1)
    assert np.abs(x - C.fake_quantize_range(x, r, 8)).max() <= step / 2 + 1e-12
    # asymmetric: zero is exactly representable
    assert C.fake_quantize_range(np.array([0.0, 3.0, 7.0]), C.Range(0.5, 7.0), 4, symmetric=False)[0] == 0


def test_laplace_clip_factor_matches_aciq():
    # ACIQ (Banner et al. 2019) Table: 2.83b, 3.89b, 5.03b for 2, 3, 4 bits
    assert [round(C.laplace_clip_factor(b), 2) for b in (2, 3, 4)] == [2.83, 3.9, 5.03]


def test_meanabs_beats_minmax_at_low_bits_on_laplace():
    x = np.random.default_rng(1).laplace(size=20000)
    e_mm = C.sqnr_db(x, C.fake_quantize_range(x, C.minmax(x), 3))
    e_ma = C.sqnr_db(x, C.fake_quantize_range(x, C.meanabs(x, 3), 3))
    assert e_ma > e_mm + 3


def test_kl_clips_outliers_and_keeps_bulk():
    x = np.concatenate([np.random.default_rng(2).normal(size=50000), [200.0]])
    r = C.kl_entropy(x, 8)
    assert 2.0 < r.hi < 50.0  # far below the single outlier, above the bulk of a unit normal
    assert C.kl_entropy(np.zeros(10), 8).hi == 0


def test_observer_accumulates_and_matches_one_shot():
    x = laplace()
    for m in ("minmax", "percentile", "mse"):
        obs = C.Observer(m, bits=8)
        for chunk in np.array_split(x, 4):
            obs.update(chunk)
        assert obs.range() == C.observe(x, m, 8)
    obs = C.Observer("minmax").update(torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"expected 4 features.*got 5"):
        obs.update(np.ones((3, 5)))
    with pytest.raises(ValueError, match="no calibration data"):
        C.Observer("kl").range()
    with pytest.raises(ValueError, match="unknown observer"):
        C.Observer("median")


@pytest.mark.parametrize("method", C.OBSERVERS)
def test_bad_input(method):
    with pytest.raises(ValueError, match="empty"):
        C.observe(np.zeros((0, 8)), method)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((4, 8))
        x[2, 3] = bad
        with pytest.raises(ValueError, match="NaN/Inf"):
            C.observe(x, method)
    with pytest.raises(ValueError, match="dimensions"):
        C.observe(np.ones((2, 3, 4, 5)), method)
    with pytest.raises(ValueError, match="bits"):
        C.observe(np.ones((2, 3)), method, bits=1) if method not in ("minmax", "percentile") else \
            C.fake_quantize_range(np.ones(3), C.Range(-1, 1), bits=1)


def test_layer_output_error_and_shapes():
    x = laplace(500, 32)
    W = np.random.default_rng(3).normal(size=(16, 32))
    full = C.layer_output_error(x, W, C.minmax(x), bits=8)
    low = C.layer_output_error(x, W, C.minmax(x), bits=4)
    assert full["sqnr_db"] > low["sqnr_db"] + 10  # more bits, less noise
    assert full["clipped"] == 0
    assert C.layer_output_error(x, W, C.percentile(x, 99), 8)["clipped"] > 0
    with pytest.raises(ValueError, match=r"W has 31 input features but x has 32"):
        C.layer_output_error(x, W[:, :31], C.minmax(x))
    with pytest.raises(ValueError, match="same shape"):
        C.sqnr_db(x, x[:, :3])
    assert C.sqnr_db(x, x) == math.inf


def test_channel_stats_and_outliers():
    x = laplace()
    st_ = C.channel_stats(x)
    assert st_["absmax"].shape == (32,)
    np.testing.assert_allclose(st_["absmax"], np.abs(x).max(0))
    assert list(C.outlier_channels(x)) == [5]


def test_error_vs_calibration_size():
    x = laplace(4000, 16, seed=4)
    res = C.error_vs_calibration_size(x[:2000], x[2000:], [4, 64, 2000], method="percentile", bits=8)
    assert res["sizes"] == [4, 64, 2000] and len(res["sqnr_db"]) == 3
    assert res["sqnr_db"][-1] > res["sqnr_db"][0]  # 4 tokens clip the held-out outliers badly
    with pytest.raises(ValueError, match="feature count"):
        C.error_vs_calibration_size(x[:10], x[10:20, :8], [5])
    with pytest.raises(ValueError, match="sizes"):
        C.error_vs_calibration_size(x[:10], x[10:20], [50])
