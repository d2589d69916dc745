"""qlearn.uniform: properties of the affine grid, granularity, validation, SQNR theory."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qlearn import uniform as U

SETTINGS = settings(max_examples=60, deadline=None)
EPS32 = np.finfo(np.float32).eps

finite = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
bits_st = st.integers(2, 8)


@st.composite
def matrix_and_group(draw):
    """A (rows, n_groups * g) float32 matrix and its group size g."""
    rows, n_groups, g = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 4, 8]))
    x = draw(hnp.arrays(np.float32, (rows, n_groups * g), elements=finite))
    return x, g


def _per_element(p, q):
    """Per-block parameter broadcast back to every element."""
    out = p
    for ax, b in enumerate(q.block_size):
        out = np.repeat(out, b, axis=ax)
    return out


@SETTINGS
@given(matrix_and_group(), bits_st, st.booleans(), st.floats(0.3, 1.0))
def test_error_at_most_half_a_step_inside_the_range(xg, bits, symmetric, clip):
    x, g = xg
    q = U.quantize(x, bits, symmetric, (1, g), clip)
    x_hat = U.dequantize(q)
    s = _per_element(q.scale, q)
    zp = _per_element(q.zero_point, q).astype(np.float64)
    qmin, qmax = U.code_range(bits, symmetric)
    lo, hi = (qmin - zp) * s, (qmax - zp) * s  # the representable range of each block
    inside = (x >= lo) & (x <= hi)
    err = np.abs(x.astype(np.float64) - x_hat)
    tol = s / 2 + 8 * EPS32 * np.maximum(np.abs(x), s * (qmax - qmin))  # float32 rounding slack
    assert (err[inside] <= tol[inside]).all()
    # outside the range the value saturates at the nearest end of the grid
    out = ~inside
    assert np.allclose(x_hat[out], np.clip(x, lo, hi)[out], rtol=1e-5, atol=1e-30)


@SETTINGS
@given(matrix_and_group(), bits_st, st.booleans())
def test_per_group_equals_per_tensor_on_each_group(xg, bits, symmetric):
    x, g = xg
    full = U.quantize(x, bits, symmetric, U.block_size_for(x.shape, "per_group", g))
    x_hat = U.dequantize(full)
    for r in range(x.shape[0]):
        for j in range(x.shape[1] // g):
            part = x[r:r + 1, j * g:(j + 1) * g]
            one = U.quantize(part, bits, symmetric)  # per-tensor on the group alone
            assert one.scale.shape == (1, 1)
            assert np.array_equal(one.codes, full.codes[r:r + 1, j * g:(j + 1) * g])
            assert one.scale[0, 0] == full.scale[r, j] and one.zero_point[0, 0] == full.zero_point[r, j]
            assert np.array_equal(U.dequantize(one), x_hat[r:r + 1, j * g:(j + 1) * g])


@SETTINGS
@given(matrix_and_group(), bits_st)
def test_symmetric_requantization_is_idempotent(xg, bits):
    x, g = xg
    q1 = U.quantize(x, bits, True, (1, g))
    x1 = U.dequantize(q1)
    q2 = U.quantize(x1, bits, True, (1, g))
    assert np.array_equal(q2.codes, q1.codes)
    assert np.allclose(U.dequantize(q2), x1, rtol=4 * EPS32, atol=0)


@SETTINGS
@given(matrix_and_group(), bits_st, st.booleans(), st.floats(0.3, 1.0))
def test_values_on_the_grid_are_a_fixed_point(xg, bits, symmetric, clip):
    """Quantizing dequantized values on the same grid returns the same codes (any clip, sym or not)."""
    x, g = xg
    q = U.quantize(x, bits, symmetric, (1, g), clip)
    again = U.quantize_affine(U.dequantize(q), q.scale, q.zero_point, bits, symmetric, q.block_size)
    assert np.array_equal(again.codes, q.codes)


@SETTINGS
@given(matrix_and_group(), bits_st)
def test_asymmetric_fake_quantize_twice_changes_values_by_at_most_one_step(xg, bits):
    x, g = xg
    x1 = U.fake_quantize(x, bits, False, (1, g))
    x2 = U.fake_quantize(x1, bits, False, (1, g))
    s = _per_element(U.quantize(x, bits, False, (1, g)).scale, U.quantize(x, bits, False, (1, g)))
    assert (np.abs(x2 - x1) <= s * (1 + 1e-5)).all()


def test_hand_worked_examples():
    # symmetric 4-bit: qmax 7, scale = 3.5/7 = 0.5; 1.25/0.5 = 2.5 rounds half to even -> 2
    q = U.quantize(np.array([-3.5, 1.25, 0.75, 0.0], np.float32), bits=4)
    assert q.scale[0] == np.float32(0.5)
    assert q.codes.tolist() == [-7, 2, 2, 0] and q.codes.dtype == np.int8
    # asymmetric 2-bit over [-1, 2]: scale 1, zero point 1, codes 0..3
    q = U.quantize(np.array([-1.0, 0.0, 1.0, 2.0], np.float32), bits=2, symmetric=False)
    assert (q.scale[0], q.zero_point[0]) == (1.0, 1) and q.codes.tolist() == [0, 1, 2, 3]
    # zero is exactly representable on the asymmetric grid even for all-positive data
    q = U.quantize(np.array([0.3, 0.0, 1.7], np.float32), bits=3, symmetric=False)
    assert U.dequantize(q)[1] == 0.0
    # an all-zero block quantizes to zeros without dividing by zero
    assert not U.fake_quantize(np.zeros((2, 4), np.float32), 4, False, (1, 2)).any()


def test_clip_saturates_the_outlier_and_refines_the_rest():
    x = np.array([0.1, -0.2, 0.05, 10.0], np.float32)
    full, clipped = U.quantize(x, 4), U.quantize(x, 4, clip=0.1)
    assert clipped.scale[0] == pytest.approx(full.scale[0] * 0.1)
    assert U.dequantize(clipped)[3] == pytest.approx(1.0)  # saturated at clip * max
    assert np.abs(U.dequantize(clipped)[:3] - x[:3]).max() < np.abs(U.dequantize(full)[:3] - x[:3]).max()


def test_block_size_for_and_2d_blocks():
    assert U.block_size_for((8, 12), "per_tensor") == (8, 12)
    assert U.block_size_for((8, 12), "per_channel") == (1, 12)
    assert U.block_size_for((8, 12), "per_group", 4) == (1, 4)
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    q = U.quantize(x, 4, block_size=(32, 32))
    assert q.scale.shape == (2, 2)
    assert q.scale[1, 0] == np.abs(x[32:, :32]).max() / 7
    pc = U.quantize(x, 8, block_size=U.block_size_for(x.shape, "per_channel"))
    assert np.allclose(pc.scale[:, 0], np.abs(x).max(axis=1) / 127)


def test_fake_quantize_keeps_the_kind_and_dtype():
    x = np.random.default_rng(1).standard_normal((4, 8))
    assert isinstance(U.fake_quantize(x, 4), np.ndarray) and U.fake_quantize(x, 4).dtype == np.float64
    t = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    out = U.fake_quantize(t, 4, block_size=(1, 8))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and out.shape == t.shape
    ref = U.fake_quantize(t.float().numpy(), 4, block_size=(1, 8))
    assert torch.equal(out, torch.from_numpy(ref).to(torch.bfloat16))


@pytest.mark.parametrize("bad, match", [
    (np.array([1.0, np.nan], np.float32), "finite"),
    (np.array([1.0, np.inf], np.float32), "finite"),
    (np.zeros((0, 4), np.float32), "empty"),
    (np.arange(8), "floating-point"),
    (np.float32(3.0), "at least one dimension"),
    (torch.arange(8), "floating-point"),
])
def test_bad_input_is_a_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        U.quantize(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 1}, "bits must be an integer from 2 to 8"),
    ({"bits": 9}, "bits must be an integer from 2 to 8"),
    ({"bits": 4.0}, "bits must be an integer"),
    ({"block_size": (1, 3)}, "must divide the shape"),
    ({"block_size": (4,)}, "expected length 2"),
    ({"block_size": (1, 2, 2)}, "expected length 2"),
    ({"clip": 0.0}, r"clip .* \(0, 1\]"),
    ({"clip": 1.5}, r"clip .* \(0, 1\]"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        U.quantize(np.ones((2, 8), np.float32), **kwargs)


def test_bad_granularity_requests():
    with pytest.raises(ValueError, match="per_tensor"):
        U.block_size_for((4, 8), "per_row")
    with pytest.raises(ValueError, match="multiple of 3"):
        U.block_size_for((4, 8), "per_group", 3)
    with pytest.raises(ValueError, match="group_size"):
        U.block_size_for((4, 8), "per_group")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        U.block_size_for((8,), "per_channel")
    with pytest.raises(ValueError, match="QTensor"):
        U.dequantize(np.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        U.sqnr_db(np.ones(3), np.ones(4))


def test_sqnr_db_by_hand():
    x = np.array([3.0, 4.0])  # signal power 25
    assert U.sqnr_db(x, x + np.array([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))
    assert U.sqnr_db(x, x) == math.inf


def test_rule_of_thumb_constants():
    assert U.rule_of_thumb_sqnr_db(8) == pytest.approx(49.92, abs=0.01)
    assert U.rule_of_thumb_sqnr_db(1) == pytest.approx(6.02 + 1.76, abs=0.01)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_theory_for_uniform_input_matches_the_closed_form(bits):
    # full-range uniform input: every cell's error is uniform over one step, so MSE = step^2 / 12
    # with step = 2a / (number of steps spanning the range): 2^b - 2 (symmetric), 2^b - 1 (asym)
    assert U.theoretical_sqnr_db(bits, "uniform") == pytest.approx(20 * math.log10(2 ** bits - 2), abs=1e-9)
    assert U.theoretical_sqnr_db(bits, "uniform", symmetric=False) == pytest.approx(
        20 * math.log10(2 ** bits - 1), abs=1e-9)
    # clipped to the midrise grid (levels at cell centres) it is exactly 6.02 dB per bit
    a = math.sqrt(3)
    assert U.theoretical_sqnr_db(bits, "uniform", a * (1 - 2.0 ** -bits), symmetric=False) == pytest.approx(
        20 * math.log10(2) * bits, abs=1e-9)


@pytest.mark.parametrize("levels_bits, mse", [(2, 0.1188), (3, 0.03744), (4, 0.01154)])
def test_optimal_uniform_gaussian_quantizer_matches_max_1960(levels_bits, mse):
    # J. Max, "Quantizing for minimum distortion" (1960), Table II: optimum uniform quantizer for a
    # unit Gaussian with 4, 8, 16 levels (our asymmetric grid is the even-level midrise grid)
    clip, sqnr = U.optimal_clip(levels_bits, "gaussian", symmetric=False)
    assert 10 ** (-sqnr / 10) == pytest.approx(mse, rel=2e-3)


def test_theory_against_scipy_quadrature():
    integrate = pytest.importorskip("scipy.integrate")
    stats = pytest.importorskip("scipy.stats")
    df, bits, clip = 5.0, 3, 2.5
    s = math.sqrt((df - 2) / df)
    pdf = lambda x: stats.t.pdf(x / s, df) / s  # noqa: E731
    levels = np.arange(-3, 4) * clip / 3
    q = lambda x: levels[np.argmin(np.abs(levels - x))]  # noqa: E731
    edges = list((levels[1:] + levels[:-1]) / 2)
    mse = 2 * integrate.quad(lambda x: (x - q(x)) ** 2 * pdf(x), 0, clip, points=[e for e in edges if e > 0],
                             limit=200)[0]
    mse += 2 * integrate.quad(lambda x: (x - clip) ** 2 * pdf(x), clip, np.inf)[0]
    g, o = U.theoretical_distortion(bits, "student_t", clip, df=df)
    assert g + o == pytest.approx(mse, rel=1e-6)


@pytest.mark.parametrize("dist, tol_db", [("gaussian", 0.1), ("laplace", 0.15), ("student_t", 0.5)])
def test_measured_sqnr_matches_theory(dist, tol_db):
    """Sampled data against the integral; heavy tails make the sample estimate noisier."""
    x = U.sample_distribution(dist, 400_000, seed=1)
    assert x.std() == pytest.approx(1.0, rel=0.03)
    bits, clip_sd = 4, 3.0
    ratio = clip_sd / np.abs(x).max()  # clip in (true, unit) standard deviations -> ratio of max|x|
    measured = U.sqnr_db(x, U.fake_quantize(x, bits, clip=float(ratio)))
    assert measured == pytest.approx(U.theoretical_sqnr_db(bits, dist, clip_sd), abs=tol_db)


def test_sine_obeys_the_rule_of_thumb_at_8_bits():
    assert U.theoretical_sqnr_db(8, "sine", symmetric=False) == pytest.approx(U.rule_of_thumb_sqnr_db(8), abs=0.1)
    with pytest.raises(ValueError, match="unbounded"):
        U.theoretical_sqnr_db(4, "gaussian")
    with pytest.raises(ValueError, match="dist must be one of"):
        U.theoretical_sqnr_db(4, "cauchy", 3.0)
