"""qlearn.kernels: numba dequantize bit-exact with ggml, fused matvec accuracy, input checks."""

from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn import kernels

DATA = Path(__file__).parent / "data" / "kquants"
TYPES = kernels.SUPPORTED

# Byte offsets of the fp16 scale fields in each block: random bytes there could be NaN/Inf,
# so the random-block generator writes finite scales into them.
FP16_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "IQ4_NL": (0,), "IQ4_XS": (0,),
}


def _oracle(qtype):
    return np.load(DATA / f"{qtype}.npz")


def _variants(z):
    """(case, variant) pairs present in an oracle file: ref, imat, chunk_noimat."""
    out = []
    for case in z["cases"]:
        for var in ("ref", "imat", "chunk_noimat"):
            if f"{case}__q_{var}" in z.files:
                out.append((str(case), var))
    return out


ORACLE_CASES = [(t, c, v) for t in TYPES for (c, v) in _variants(_oracle(t))]


def random_blocks(rng, qtype, rows, cols, scale=0.01):
    """Valid random blocks: random code bytes, finite fp16 scales of magnitude ~scale."""
    bs, ts = kernels.block_info(qtype)
    q = rng.integers(0, 256, (rows, cols // bs, ts), dtype=np.uint8)
    for off in FP16_FIELDS[qtype]:
        d = (rng.uniform(0.5, 1.5, (rows, cols // bs)) * scale).astype(np.float16)
        q[:, :, off:off + 2] = d.view(np.uint8).reshape(rows, cols // bs, 2)
    return q.reshape(rows, cols // bs * ts)


def test_every_type_has_oracle_cases():
    assert {t for t, _, _ in ORACLE_CASES} == set(TYPES)
    assert len(ORACLE_CASES) >= 12 * 9 * 2 - 9  # ref + imat everywhere, no imat for Q8_0


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
@pytest.mark.parametrize("qtype,case,var", ORACLE_CASES)
def test_dequantize_bit_exact_vs_ggml(qtype, case, var, parallel):
    z = _oracle(qtype)
    q, want = z[f"{case}__q_{var}"], z[f"{case}__dq_{var}"]
    got = kernels.dequantize(q, qtype, parallel=parallel)
    assert got.dtype == np.float32 and got.shape == want.shape
    if qtype == "IQ4_NL" and var == "ref":
        # README: all-zero blocks of q_ref have undefined codes and a zero of undefined sign.
        zero = want == 0
        np.testing.assert_array_equal(got[zero], 0.0)
        assert np.array_equal(got[~zero].view(np.uint32), want[~zero].view(np.uint32))
    else:
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@settings(max_examples=40, deadline=None)
@given(qtype=st.sampled_from(TYPES), rows=st.integers(1, 5), nblocks=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1), log_scale=st.floats(-20, 10))
def test_dequantize_matches_gguf_py_on_random_blocks(qtype, rows, nblocks, seed, log_scale):
    bs, _ = kernels.block_info(qtype)
    rng = np.random.default_rng(seed)
    q = random_blocks(rng, qtype, rows, nblocks * 256, scale=float(np.exp2(log_scale)))
    want = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[qtype])
    got = kernels.dequantize(q, qtype)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(got, kernels.dequantize(q, qtype, parallel=False))


def test_dequantize_out_argument_and_enum_and_1d():
    z = _oracle("Q4_K")
    q, want = z["gaussian__q_ref"], z["gaussian__dq_ref"]
    out = np.full(want.shape, np.nan, dtype=np.float32)
    assert kernels.dequantize(q, gguf.GGMLQuantizationType.Q4_K, out=out) is out
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(kernels.dequantize(q[1], "q4_k"), want[1:2])


@pytest.mark.parametrize(
    "q,qtype,match",
    [
        (np.zeros((2, 143), np.uint8), "Q4_K", "multiple of 144 bytes"),
        (np.zeros((2, 0), np.uint8), "Q4_K", "positive multiple"),
        (np.zeros((2, 144), np.uint8), "Q7_K", "unknown or unsupported qtype"),
        (np.zeros((2, 144), np.uint8), "IQ2_XXS", "unknown or unsupported qtype"),
        (np.zeros((2, 144), np.float32), "Q4_K", "dtype float32"),
        (np.zeros((2, 2, 144), np.uint8), "Q4_K", r"\(rows, row_bytes\)"),
        ([1, 2, 3], "Q4_K", "numpy uint8 array"),
        (np.zeros((2, 144), np.uint8), 12, "type name"),
    ],
)
def test_dequantize_bad_input(q, qtype, match):
    with pytest.raises(ValueError, match=match):
        kernels.dequantize(q, qtype)


def test_dequantize_bad_out():
    q = np.zeros((2, 144), np.uint8)
    with pytest.raises(ValueError, match=r"shape \(2, 256\)"):
        kernels.dequantize(q, "Q4_K", out=np.empty((2, 255), np.float32))
    with pytest.raises(ValueError, match="float32"):
        kernels.dequantize(q, "Q4_K", out=np.empty((2, 256), np.float64))


# ------------------------------------------------------------------ activations ----------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nblocks=st.integers(1, 16), scale=st.floats(1e-6, 1e4))
def test_quantize_q8_0_equals_gguf_py(seed, nblocks, scale):
    x = (np.random.default_rng(seed).standard_normal(32 * nblocks) * scale).astype(np.float32)
    x[::7] = np.round(x[::7])  # some exact values / ties
    qs, d = kernels.quantize_q8_0(x)
    ref = gguf.quants.quantize(x.reshape(1, -1), gguf.GGMLQuantizationType.Q8_0).reshape(-1, 34)
    assert np.array_equal(qs, ref[:, 2:].view(np.int8).reshape(-1))
    assert np.array_equal(d, ref[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1))


def test_quantize_q8_0_ties_away_from_zero():
    # d = 127/127 = 1 for this block, so x*id are the half-integers themselves
    x = np.zeros(32, np.float32)
    x[0], x[1], x[2], x[3] = 127.0, 0.5, -0.5, 2.5
    qs, d = kernels.quantize_q8_0(x)
    assert d[0] == 1.0 and list(qs[:4]) == [127, 1, -1, 3]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nblocks=st.integers(1, 4), scale=st.floats(1e-3, 1e3))
def test_quantize_q8_k_properties(seed, nblocks, scale):
    x = (np.random.default_rng(seed).standard_normal(256 * nblocks) * scale).astype(np.float32)
    x[:256] = 0.0 if seed % 5 == 0 else x[:256]  # an all-zero block now and then
    qs, d, bsums = kernels.quantize_q8_k(x)
    assert qs.dtype == np.int8 and d.dtype == np.float32 and bsums.dtype == np.int16
    xb = x.reshape(-1, 256)
    for b in range(nblocks):
        if not xb[b].any():
            assert d[b] == 0 and not qs[256 * b:256 * (b + 1)].any()
            continue
        first = int(np.argmax(np.abs(xb[b])))
        assert qs[256 * b + first] == -127  # the extreme maps to -127 (ggml's negative scale)
        err = np.abs(xb[b].astype(np.float64) - d[b].astype(np.float64) * qs[256 * b:256 * (b + 1)])
        assert err.max() <= 0.5 * abs(float(d[b])) * (1 + 1e-5)
    np.testing.assert_array_equal(bsums, qs.reshape(-1, 16).astype(np.int64).sum(1))


# ------------------------------------------------------------------ matvec ----------------

# Tolerance of the fused kernels against a float64 dot of the same operands: float32 sums over
# at most a few thousand terms, relative to sum |w_i * x_i|.
MATVEC_RTOL = 1e-5


def _dequant_activations(qtype, x):
    if qtype in kernels._Q8_0_ACTIVATIONS:
        qs, d = kernels.quantize_q8_0(x)
        return qs.astype(np.float64) * np.repeat(d.astype(np.float64), 32), np.repeat(d.astype(np.float64), 32)
    qs, d, _ = kernels.quantize_q8_k(x)
    return qs.astype(np.float64) * np.repeat(d.astype(np.float64), 256), np.repeat(np.abs(d.astype(np.float64)), 256)


def _matvec_inputs(qtype, seed, rows=24, cols=1024):
    rng = np.random.default_rng(seed)
    if seed % 2:  # oracle bytes (real quantizer output)
        z = _oracle(qtype)
        q = z["outliers__q_ref"]
        cols = z["outliers__x"].shape[1]
    else:
        q = random_blocks(rng, qtype, rows, cols)
    x = (rng.standard_normal(cols) * rng.uniform(0.1, 10)).astype(np.float32)
    return q, x


@pytest.mark.parametrize("qtype", kernels.MATVEC_TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matvec_q8_equals_float64_dot_of_quantized_operands(qtype, seed):
    q, x = _matvec_inputs(qtype, seed)
    W = kernels.dequantize(q, qtype).astype(np.float64)
    xh, _ = _dequant_activations(qtype, x)
    y = kernels.matvec(q, qtype, x)
    assert y.dtype == np.float32 and y.shape == (q.shape[0],)
    ref = W @ xh
    scale = np.abs(W) @ np.abs(xh)
    assert np.all(np.abs(y - ref) <= MATVEC_RTOL * scale + 1e-30)
    assert np.array_equal(y, kernels.matvec(q, qtype, x, parallel=False))


@pytest.mark.parametrize("qtype", kernels.MATVEC_TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("parallel", [False, True])
def test_matvec_agrees_with_readable_reference(qtype, seed, parallel):
    """The fast numba kernels against matvec_reference (plain numpy, float64): the same exact
    integer sums, so they differ only by float32 rounding of the scale products."""
    q, x = _matvec_inputs(qtype, seed)
    W = kernels.dequantize(q, qtype).astype(np.float64)
    xh, _ = _dequant_activations(qtype, x)
    y = kernels.matvec(q, qtype, x, parallel=parallel)
    ref = kernels.matvec_reference(q, qtype, x)
    assert np.all(np.abs(y - ref) <= MATVEC_RTOL * (np.abs(W) @ np.abs(xh)) + 1e-30)


def test_matvec_reference_q4_k_integer_form_equals_dequantized_form():
    """The Q4_K reference's integer-sum form (scales applied after the sums) is the same
    number as dequantized weights times dequantized activations, to float64 rounding."""
    q, x = _matvec_inputs("Q4_K", 0)
    xh, _ = _dequant_activations("Q4_K", x)
    W = kernels.dequantize(q, "Q4_K").astype(np.float64)
    ref = kernels.matvec_reference(q, "Q4_K", x)
    assert np.allclose(ref, W @ xh, rtol=1e-12, atol=1e-12 * (np.abs(W) @ np.abs(xh)).max())


@pytest.mark.parametrize("qtype", kernels.MATVEC_TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matvec_q8_error_within_activation_rounding_bound(qtype, seed):
    q, x = _matvec_inputs(qtype, seed)
    W = kernels.dequantize(q, qtype).astype(np.float64)
    _, step = _dequant_activations(qtype, x)
    y = kernels.matvec(q, qtype, x)
    exact = W @ x.astype(np.float64)
    bound = np.abs(W) @ (step / 2) + MATVEC_RTOL * (np.abs(W) @ np.abs(x))
    assert np.all(np.abs(y - exact) <= bound)
    # and the activation rounding is a real (nonzero) effect the f32 path does not have
    y32 = kernels.matvec(q, qtype, x, activations="f32")
    assert np.all(np.abs(y32 - exact) <= MATVEC_RTOL * (np.abs(W) @ np.abs(x)))


@pytest.mark.parametrize("qtype", TYPES)
def test_matvec_f32_every_type(qtype):
    q, x = _matvec_inputs(qtype, 2, rows=8, cols=512)
    W = kernels.dequantize(q, qtype).astype(np.float64)
    for parallel in (True, False):
        y = kernels.matvec(q, qtype, x, activations="f32", parallel=parallel)
        assert np.all(np.abs(y - W @ x) <= MATVEC_RTOL * (np.abs(W) @ np.abs(x)))


def test_matvec_bad_input():
    q = np.zeros((4, 144 * 2), np.uint8)
    x = np.zeros(512, np.float32)
    with pytest.raises(ValueError, match=r"shape \(512,\).*got \(256,\)"):
        kernels.matvec(q, "Q4_K", x[:256])
    with pytest.raises(ValueError, match="float32, got float64"):
        kernels.matvec(q, "Q4_K", x.astype(np.float64))
    bad = x.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        kernels.matvec(q, "Q4_K", bad)
    with pytest.raises(ValueError, match="supports Q4_K, Q6_K, Q8_0, Q5_0, Q4_0, Q4_1, Q5_1, got Q5_K"):
        kernels.matvec(np.zeros((4, 176 * 2), np.uint8), "Q5_K", x)
    with pytest.raises(ValueError, match="activations must be one of"):
        kernels.matvec(q, "Q4_K", x, activations="int4")
    with pytest.raises(ValueError, match="multiple of 144 bytes"):
        kernels.matvec(q[:, :100], "Q4_K", x)
    with pytest.raises(ValueError, match="unknown or unsupported"):
        kernels.matvec(q, "Q4_Z", x)


@pytest.mark.parametrize("seed", range(6))
def test_quantize_activations_equals_numpy_quantizers(seed):
    """The one-pass numba activation quantizer gives the numpy quantizers' exact bits (ties,
    all-zero blocks and several block counts included)."""
    rng = np.random.default_rng(seed)
    n = 256 * int(rng.integers(1, 9))
    x = (rng.standard_normal(n) * rng.uniform(0.01, 100)).astype(np.float32)
    if seed % 2:
        x = np.round(x * 4) / 4  # many exact ties
    x[:256] *= seed % 3 != 0  # an all-zero block in some cases
    xq, xd, bs32 = kernels.quantize_activations(x, "Q4_K")
    qs, d, bsums = kernels.quantize_q8_k(x)
    assert np.array_equal(xq, qs) and np.array_equal(xd.view(np.uint32), d.view(np.uint32))
    assert np.array_equal(bs32, bsums.reshape(-1, 2).sum(axis=1))
    for qtype in ("Q8_0", "Q5_0"):
        xq, xd, _ = kernels.quantize_activations(x, qtype)
        qs, d = kernels.quantize_q8_0(x)
        assert np.array_equal(xq, qs) and np.array_equal(xd.view(np.uint32), d.view(np.uint32))
