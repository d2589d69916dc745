"""qlearn.kquants against ggml golden vectors (tests/data/kquants, from ggml d99724f2, x86-64
default build), numba vs numpy agreement, gguf-py cross-checks and input validation."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlearn import kquants as K

DATA = Path(__file__).resolve().parent / "data" / "kquants"
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ4_NL", "IQ4_XS"]
BACKENDS = ["numpy", "numba"]
_CACHE = {}


def oracle(t):
    if t not in _CACHE:
        _CACHE[t] = dict(np.load(DATA / f"{t}.npz"))
    return _CACHE[t]


def cases(t):
    return [str(c) for c in oracle(t)["cases"]]


ALL_CASES = [(t, c) for t in TYPES for c in cases(t)]
IMAT_CASES = [(t, c) for t, c in ALL_CASES if f"{c}__q_imat" in oracle(t)]


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# ---- layouts -------------------------------------------------------------------------------------
def test_qtypes_cover_the_twelve_types():
    assert list(K.QTYPES) == TYPES


@pytest.mark.parametrize("t", TYPES)
def test_layout_matches_ggml_sizes(t):
    z = oracle(t)
    qt = K.QTYPES[t]
    assert qt.block_size == int(z["meta_block_size"])
    assert qt.type_size == int(z["meta_type_size"])
    assert qt.ggml_type == int(z["meta_ggml_type"])
    assert qt.bits_per_weight == 8 * int(z["meta_type_size"]) / int(z["meta_block_size"])
    # every case's byte array has exactly type_size bytes per block
    x, q = z["gaussian__x"], z["gaussian__q_ref"]
    assert q.shape[1] == x.shape[1] // qt.block_size * qt.type_size


def test_layout_matches_gguf_package():
    gguf = pytest.importorskip("gguf")
    for t in TYPES:
        bs, ts = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t]]
        assert (K.QTYPES[t].block_size, K.QTYPES[t].type_size) == (bs, ts)


# ---- dequantize: every dq_* array, bitwise -------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t,c", ALL_CASES)
def test_dequantize_matches_ggml(t, c, backend):
    z = oracle(t)
    for var in ("ref", "imat", "chunk_noimat"):
        if f"{c}__q_{var}" not in z:
            continue
        got = K.dequantize(z[f"{c}__q_{var}"], t, backend=backend)
        exp = z[f"{c}__dq_{var}"]
        assert got.dtype == np.float32 and got.shape == exp.shape
        if t == "IQ4_NL" and var == "ref":
            # blocks with undefined bytes decode to +-0 whose sign ggml leaves undefined
            undefined = ~z[f"{c}__q_ref_defined"].astype(bool).reshape(-1, 18).all(axis=1)
            blk = np.repeat(undefined, 32).reshape(exp.shape)
            np.testing.assert_array_equal(got[blk], exp[blk])
            np.testing.assert_array_equal(bits(got)[~blk], bits(exp)[~blk])
        else:
            np.testing.assert_array_equal(bits(got), bits(exp), err_msg=f"{t} {c} dq_{var}")


# ---- quantize: q_ref, q_imat, q_chunk_noimat, byte for byte ---------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t,c", ALL_CASES)
def test_quantize_ref_matches_ggml(t, c, backend):
    z = oracle(t)
    got = K.quantize_ref(z[f"{c}__x"], t, backend=backend)
    exp = z[f"{c}__q_ref"]
    assert got.dtype == np.uint8 and got.shape == exp.shape
    if t == "IQ4_NL":
        defined = z[f"{c}__q_ref_defined"].astype(bool)
        np.testing.assert_array_equal(got[defined], exp[defined])
    else:
        np.testing.assert_array_equal(got, exp)
        # without an imatrix, quantize is the ref path for every type but IQ4_NL
        np.testing.assert_array_equal(K.quantize(z[f"{c}__x"], t, backend=backend), exp)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t,c", IMAT_CASES)
def test_quantize_imatrix_matches_ggml(t, c, backend):
    z = oracle(t)
    got = K.quantize(z[f"{c}__x"], t, z[f"{c}__imatrix"], backend=backend)
    np.testing.assert_array_equal(got, z[f"{c}__q_imat"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", cases("IQ4_NL"))
def test_iq4nl_quantize_matches_llama_quantize(c, backend):
    z = oracle("IQ4_NL")
    got = K.quantize(z[f"{c}__x"], "IQ4_NL", backend=backend)
    np.testing.assert_array_equal(got, z[f"{c}__q_chunk_noimat"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_q8_0_ignores_the_imatrix(backend):
    z = oracle("Q8_0")
    x = z["gaussian__x"]
    imat = np.random.default_rng(1).random(x.shape[1]).astype(np.float32)
    got = K.quantize(x, "Q8_0", imat, backend=backend)
    np.testing.assert_array_equal(got, z["gaussian__q_ref"])


def test_ref_and_imatrix_paths_differ_where_ggml_says():
    """The oracle's q_imat differs from q_ref for searching types: the imatrix path is real."""
    z = oracle("Q4_K")
    assert (z["gaussian__q_imat"] != z["gaussian__q_ref"]).any()
    x, imat = z["gaussian__x"], z["gaussian__imatrix"]
    assert (K.quantize(x, "Q4_K", imat) != K.quantize(x, "Q4_K")).any()


# ---- numba vs numpy on generated inputs ---------------------------------------------------------------
def _gen_x(seed, rows, nblocks, bs, kind, scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, nblocks * bs))
    if kind == 1:
        x = rng.standard_t(2, size=x.shape)
    elif kind == 2:
        x[rng.random(x.shape) < 0.3] = 0.0
    elif kind == 3:
        x = np.round(x * 4) / 2           # many exact ties
    elif kind == 4:
        x = np.abs(x)                     # all positive: min clamps to 0
    return (x * scale).astype(np.float32)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.sampled_from(TYPES), seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 3),
       nblocks=st.integers(1, 2), kind=st.integers(0, 4),
       scale=st.sampled_from([1e-6, 1e-3, 1.0, 7.5, 300.0, 3e4]), use_imat=st.booleans())
def test_numba_and_numpy_agree_bitwise(t, seed, rows, nblocks, kind, scale, use_imat):
    bs = K.QTYPES[t].block_size
    nblocks = nblocks if bs == K.QK_K else 8 * nblocks
    x = _gen_x(seed, rows, nblocks, bs, kind, scale)
    imat = None
    if use_imat:
        rng = np.random.default_rng(seed + 1)
        imat = (rng.random(x.shape[1]) ** 3).astype(np.float32)
        imat[rng.random(x.shape[1]) < 0.05] = 0.0
    a = K.quantize(x, t, imat, backend="numpy")
    b = K.quantize(x, t, imat, backend="numba")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(K.quantize_ref(x, t, backend="numpy"),
                                  K.quantize_ref(x, t, backend="numba"))
    np.testing.assert_array_equal(bits(K.dequantize(a, t, backend="numpy")),
                                  bits(K.dequantize(a, t, backend="numba")))


@settings(max_examples=20, deadline=None)
@given(t=st.sampled_from(TYPES), seed=st.integers(0, 2**32 - 1), kind=st.integers(0, 4))
def test_dequantize_matches_gguf_package(t, seed, kind):
    """gguf-py is an independent implementation of every dequantizer (and of the legacy
    quantizers): on fresh data our bytes and floats must agree with it."""
    gq = pytest.importorskip("gguf.quants")
    gguf = pytest.importorskip("gguf")
    bs = K.QTYPES[t].block_size
    x = _gen_x(seed, 2, 512 // bs, bs, kind, 2.0)
    q = K.quantize(x, t)
    qt = gguf.GGMLQuantizationType[t]
    np.testing.assert_array_equal(bits(K.dequantize(q, t, backend="numpy")), bits(gq.dequantize(q, qt)))
    if t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        np.testing.assert_array_equal(q, gq.quantize(x, qt))


def test_reconstruction_error_is_bounded():
    """Sanity of the round trip: more bits, less error; Q8_0 within half a step."""
    x = np.random.default_rng(7).standard_normal((4, 1024)).astype(np.float32)
    rmse = {t: float(np.sqrt(np.mean((K.dequantize(K.quantize(x, t), t) - x) ** 2))) for t in TYPES}
    assert rmse["Q2_K"] > rmse["Q3_K"] > rmse["Q4_K"] > rmse["Q5_K"] > rmse["Q6_K"] > rmse["Q8_0"]
    d = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    err = np.abs(K.dequantize(K.quantize(x, "Q8_0"), "Q8_0").reshape(-1, 32) - x.reshape(-1, 32))
    # half a step, plus 127 codes times the fp16 rounding of d (relative 2^-11)
    assert (err <= d * (0.5 + 127 * 2.0**-11) + 1e-7).all()


# ---- bit-exactness helpers -------------------------------------------------------------------------------
def test_nearest_int_is_float32_round_half_even():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 3.4999998, 4194303.0, -4194303.0], np.float32)
    np.testing.assert_array_equal(K.nearest_int(v), np.rint(v).astype(np.int32))


def test_numba_helpers_match_numpy():
    from qlearn import _kquants_numba as N
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.standard_normal(2000) * 10 ** rng.uniform(-9, 9, 2000),
                        [0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 6e-8, 2.98e-8, 1e-30]])
    v = v.astype(np.float32)
    for x in v:
        h, back = N.fp16(x)
        with np.errstate(over="ignore"):
            assert h == int(np.array([x], np.float32).astype("<f2").view(np.uint16)[0])
        assert np.array([back], np.float32).view(np.uint32)[0] == K.fp16_round(np.array([x])).view(np.uint32)[0]
        assert N.nearest_int(x) == K.nearest_int(np.array([x]))[0]


def test_numba_kernels_contain_no_fma():
    """fastmath is off, so LLVM must not fuse a*b+c (ggml's reference build does not). Cached code
    cannot be inspected, so each kernel is recompiled here without the cache."""
    import numba
    from qlearn import _kquants_numba as N
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    for t in TYPES:
        K.quantize(x, t, np.ones(256, np.float32))
    # callees loaded from the cache have no signatures of their own: call them once directly
    x32, i32 = x[0, :32].copy(), np.zeros(32, np.int32)
    N.make_qkx_quants(x32, np.abs(x32), 15, *K.Q4K_SEARCH, False, i32, np.zeros(64, np.float32))
    N._grid_codes(x32, np.float32(2), np.float32(-1), 15, np.zeros(32, np.float32))
    N._grid_sums(x32, np.abs(x32), np.ones(32, np.float32))
    N.make_qx_quants(x32, 8, x32 * x32, i32)
    N.make_qp_quants(np.abs(x32[:8]), 63, i32[:8], np.ones(8, np.float32))
    N.make_q3_quants(x32[:16], 4, i32[:16])
    for fn in (N.make_qkx_quants, N._grid_codes, N._grid_sums, N.make_qx_quants, N.make_qp_quants,
               N.make_q3_quants, N._k_asym, N._q3k, N._q6k, N._legacy_ref, N._legacy_imat, N._iq4nl,
               N._iq4xs):
        fresh = numba.njit(cache=False, fastmath=False, error_model="numpy")(fn.py_func)
        assert fn.signatures, fn.__name__
        for sig in fn.signatures:
            fresh.compile(sig)
            asm = fresh.inspect_asm(sig).lower()
            assert "mulss" in asm, f"{fn.__name__}: no float32 multiply found, inspection failed"
            assert "vfmadd" not in asm and "vfmsub" not in asm and "vfnmadd" not in asm, fn.__name__


# ---- bad input ------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_error():
    x = np.ones((2, 256), np.float32)
    with pytest.raises(ValueError, match="multiple of the block size 256 for Q4_K, got 1000"):
        K.quantize(np.ones((1, 1000), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        K.quantize_ref(np.ones((1, 40), np.float32), "Q8_0")
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 3] = bad
        with pytest.raises(ValueError, match="finite"):
            K.quantize(y, "Q6_K")
    with pytest.raises(ValueError, match="at most 1e\\+15"):
        K.quantize(np.full((1, 32), 1e20, np.float32), "Q8_0")
    with pytest.raises(ValueError, match="float32, got float64"):
        K.quantize(x.astype(np.float64), "Q4_0")
    with pytest.raises(ValueError, match="numpy float32 array"):
        K.quantize(x.tolist(), "Q4_0")
    with pytest.raises(ValueError, match="2-D"):
        K.quantize(x.reshape(-1), "Q4_0")
    with pytest.raises(ValueError, match="non-empty"):
        K.quantize(np.ones((0, 256), np.float32), "Q4_0")
    with pytest.raises(ValueError, match="unknown qtype 'Q4_X'"):
        K.quantize(x, "Q4_X")
    with pytest.raises(ValueError, match="unknown qtype"):
        K.dequantize(np.zeros((1, 18), np.uint8), "F16")
    with pytest.raises(ValueError, match=r"one weight per column, shape \(256,\), got \(128,\)"):
        K.quantize(x, "Q4_K", np.ones(128, np.float32))
    with pytest.raises(ValueError, match="imatrix must be float32"):
        K.quantize(x, "Q4_K", np.ones(256))
    with pytest.raises(ValueError, match="finite and non-negative"):
        K.quantize(x, "Q4_K", np.full(256, np.nan, np.float32))
    with pytest.raises(ValueError, match="multiple of 144 bytes per Q4_K block, got 100"):
        K.dequantize(np.zeros((1, 100), np.uint8), "Q4_K")
    with pytest.raises(ValueError, match="uint8"):
        K.dequantize(np.zeros((1, 144), np.int8), "Q4_K")
    with pytest.raises(ValueError, match="backend must be one of"):
        K.dequantize(np.zeros((1, 144), np.uint8), "Q4_K", backend="cuda")


@pytest.mark.parametrize("t", TYPES)
def test_describe_block_decodes_the_bytes(t):
    z = oracle(t)
    q = z["gaussian__q_ref"]
    qt = K.QTYPES[t]
    blk = 1
    info = K.describe_block(q, t, row=1, block=blk)
    np.testing.assert_array_equal(info["bytes"], q[1, blk * qt.type_size:(blk + 1) * qt.type_size])
    exp = z["gaussian__dq_ref"][1, blk * qt.block_size:(blk + 1) * qt.block_size]
    np.testing.assert_array_equal(bits(info["values"]), bits(exp))
    assert sum(b - a for _, a, b, _ in info["fields"]) == qt.type_size
    if t == "Q4_K":  # y = (d*sc)*q - dmin*m, sub-block by sub-block
        sc = np.repeat(info["sub_scales"], 32).astype(np.float32)
        m = np.repeat(info["sub_mins"], 32).astype(np.float32)
        y = np.float32(info["d"]) * sc * info["codes"].astype(np.float32) - np.float32(info["dmin"]) * m
        np.testing.assert_array_equal(bits(y), bits(exp))
    with pytest.raises(ValueError, match="row/block"):
        K.describe_block(q, t, row=0, block=10**6)


def test_block_figure_draws_each_layout_kind():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from qlearn.explorers import kquants as E
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    for t in ("Q4_0", "Q4_1", "Q2_K", "Q6_K"):   # one scale, scale+min, sub-block scales+mins, scales
        fig = E.plot_block(x, t, block=0)
        assert len(fig.axes) == 3
        plt.close(fig)


def test_subblock_search_beats_min_max_and_nstep0_is_min_max():
    x = np.random.default_rng(5).standard_normal((8, 256)).astype(np.float32)
    s0, m0, _ = K.subblock_scales(x, "Q4_K", search=(-1.0, 0.1, 0))
    xs = x.reshape(-1, 32)
    lo = np.minimum(xs.min(axis=1), 0).astype(np.float32)
    np.testing.assert_array_equal(s0, np.float32(1) / (np.float32(15) / (xs.max(axis=1) - lo)))
    np.testing.assert_array_equal(m0, -lo)
    s, m, L = K.subblock_scales(x, "Q4_K")
    w = np.sqrt((xs ** 2).mean(axis=1, keepdims=True)) + np.abs(xs)

    def werr(s, m, L):
        return float((w * (s[:, None] * L - m[:, None] - xs) ** 2).sum())
    _, _, L0 = K.subblock_scales(x, "Q4_K", search=(-1.0, 0.1, 0))
    assert werr(s, m, L) < werr(s0, m0, L0)
    with pytest.raises(ValueError, match="Q2_K, Q4_K and Q5_K"):
        K.subblock_scales(x, "Q6_K")


def test_numba_dequantize_uses_the_kernels_module_when_present(monkeypatch):
    """The seam to qlearn.kernels (helper module): backend="numba" dispatches to its dequantize."""
    import sys
    import types

    import qlearn
    calls = []
    fake = types.ModuleType("qlearn.kernels")

    def dequantize(q, qtype):
        calls.append(qtype)
        return K.dequantize_numpy(q, qtype)
    fake.dequantize = dequantize
    monkeypatch.setitem(sys.modules, "qlearn.kernels", fake)
    monkeypatch.setattr(qlearn, "kernels", fake, raising=False)
    q = oracle("Q6_K")["gaussian__q_ref"]
    out = K.dequantize(q, "Q6_K")
    assert calls == ["Q6_K"]
    np.testing.assert_array_equal(bits(out), bits(oracle("Q6_K")["gaussian__dq_ref"]))
