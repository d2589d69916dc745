"""GGUF block quantization, byte-identical with ggml: legacy quants, k-quants and IQ4.

Every type splits a row into blocks of ``block_size`` weights and stores each block as
``type_size`` bytes: one or two fp16 scales, sometimes a few small integer sub-block scales,
and the integer codes. ``QTYPES`` describes each layout field by field; the byte counts and
bits per weight are computed from that description.

Public API
----------
- ``QTYPES``: dict name -> :class:`QType` (block_size, type_size, bits_per_weight, layout).
- ``quantize(x, qtype, imatrix=None)``: ggml ``quantize_<t>(x, nrow, ncols, imatrix)``, the
  bytes llama-quantize writes. ``x: (rows, cols) float32`` -> ``(rows, cols//block*type_size) uint8``.
- ``quantize_ref(x, qtype)``: ggml ``quantize_row_<t>_ref`` (differs from ``quantize(x, t)``
  only for IQ4_NL, whose reference path skips the scale search).
- ``dequantize(q, qtype, backend="numba")``: ``(rows, row_bytes) uint8`` -> ``(rows, cols) float32``.

Two implementations sit behind those functions: a readable numpy reference in this module
(vectorised over blocks, looping over the few elements of a block where ggml's float32
accumulation order matters) and numba kernels (:mod:`qlearn._kquants_numba`), one scalar loop
per block, which agree with it bit for bit.

Bit-exactness rules (ggml x86-64 default build): every operation is float32, rounded
separately (no FMA); sums run left to right; ``nearest_int`` is float32 round-half-to-even
through the 1.5*2^23 trick; fp16 scales are rounded to nearest-even and read back before
the codes are recomputed; codes of a sub-block whose scale rounds to zero keep the value the
search left (stale codes).
"""
from __future__ import annotations

import numpy as np

from qlearn import blocktypes, validate

F32 = np.float32

#: super-block length of every k-quant (ggml's QK_K)
QK_K = 256
#: a group whose max |x| is below this counts as all zeros (ggml's GROUP_MAX_EPS)
GROUP_MAX_EPS = F32(1e-15)
#: 1.5 * 2^23: adding it to |v| < 2^22 leaves round-half-even(v) in the low mantissa bits
ROUND_MAGIC = F32(12582912.0)
#: largest |x| accepted: beyond it ggml's float32 sums of squares (over up to 1e8 weights) can
#: overflow to inf and the bytes would depend on NaN propagation (real weights are far below)
MAX_ABS_INPUT = F32(1e15)
#: the 16 levels of IQ4_NL / IQ4_XS: a non-uniform 4-bit grid, denser near zero
IQ4_VALUES = blocktypes.IQ4_LEVELS  # defined once, in qlearn.blocktypes

# ---- search constants of the scale/min searches -------------------------------------------
# make_qkx2 (the `_ref` paths): try nstep+1 inverse scales (nmax + rmin + k*rdelta)/(max-min)
#: Q4_K ref: start one level below nmax (rmin=-1), step 0.1, 20 steps: stretch grid to [-1, +1] level
Q4K_SEARCH = (F32(-1.0), F32(0.1), 20)
#: Q5_K ref: 31 levels already fit finely, so a narrower sweep of half a level down, 15 steps
Q5K_SEARCH = (F32(-0.5), F32(0.1), 15)
#: Q2_K ref: only 4 levels, so the same narrow sweep as Q5_K but scored by absolute error (MAD)
Q2K_SEARCH = (F32(-0.5), F32(0.1), 15)
#: imatrix paths (make_qkx3): a wider, finer sweep (-0.9 .. +0.9 level, step 0.05, 36 steps)
IMAT_SEARCH = (F32(-0.9), F32(0.05), 36)
#: make_qx_quants tries nmax + 0.1*k for k in -9..9 (k=0 is the starting point)
QX_STEPS = range(-9, 10)
QX_STEP = F32(0.1)
#: make_qp_quants (super-scale of imatrix paths) tries nmax + 0.1*k for k in -4..4
QP_STEPS = range(-4, 5)
#: make_q3_quants / make_qp_quants: at most 5 coordinate-descent passes over the codes
REFINE_PASSES = 5
#: 6-bit sub-block scales and mins of Q4_K/Q5_K: largest code
SCALE6_MAX = 63
#: IQ4 scale search: try the 2*7+1 grids max/(values[0] + k), k in -7..7
IQ4_NTRY = 7


# ---- layouts: the one table in qlearn.blocktypes ----------------------------------------------
Field = blocktypes.Field      # one field of a block: count values of bits bits
QType = blocktypes.BlockType  # a GGUF block type (block_size, type_size, bits_per_weight, layout)
QTYPES: dict = blocktypes.GGUF_TYPES


# ---- validation ------------------------------------------------------------------------------
def _qtype(qtype) -> QType:
    if isinstance(qtype, QType):
        return qtype
    if qtype not in QTYPES:
        raise ValueError(f"unknown qtype {qtype!r}: expected one of {', '.join(QTYPES)}")
    return QTYPES[qtype]


def _check_x(x, t: QType) -> np.ndarray:
    x = validate.float32_array(x, "x", ndim=2, shape_doc="(rows, cols)", finite=False)
    if x.shape[1] % t.block_size:
        hint = "pad the row or pick a 32-element type" if t.block_size == QK_K else "pad the row"
        raise ValueError(f"cols must be a multiple of the block size {t.block_size} for {t.name}, "
                         f"got {x.shape[1]} ({hint})")
    validate.float32_array(x, "x")          # finite (after the block-size check, as before)
    amax = float(np.abs(x).max())
    if amax > MAX_ABS_INPUT:
        raise ValueError(f"|x| must be at most {float(MAX_ABS_INPUT):.0e} (float32 sums of squares would "
                         f"overflow), got {amax:.3e} (rescale the tensor)")
    return np.ascontiguousarray(x)


def _finite_min(a: np.ndarray):
    """The smallest finite value of ``a``, or None when it has none."""
    finite = a[np.isfinite(a)]
    return float(finite.min()) if finite.size else None


def _check_imatrix(imatrix, cols: int):
    if imatrix is None:
        return None
    imatrix = np.asarray(imatrix)
    if imatrix.dtype != np.float32:
        raise validate.ArgumentTypeError(f"imatrix must be float32, got {imatrix.dtype}")
    if imatrix.shape != (cols,):
        raise ValueError(f"imatrix must have one weight per column, shape ({cols},), got {imatrix.shape}")
    if not np.isfinite(imatrix).all() or (imatrix < 0).any():
        raise ValueError(f"imatrix must be finite and non-negative (mean squared activations), "
                         f"got minimum {_finite_min(imatrix)} and "
                         f"{int((~np.isfinite(imatrix)).sum())} NaN/Inf")
    return np.ascontiguousarray(imatrix)


# ---- scalar building blocks (float32, vectorised over rows of blocks) -------------------------
def nearest_int(v) -> np.ndarray:
    """ggml nearest_int: round half to even in float32 by adding 1.5*2^23 and reading the
    mantissa. Exact for |v| <= 4194303; larger values give ggml's same garbage (then clamped).
    v: float32 array -> int32 array of the same shape."""
    s = np.asarray(np.asarray(v, dtype=F32) + ROUND_MAGIC, dtype=F32)
    return ((s.view(np.int32) & 0x7FFFFF) - 0x400000).astype(np.int32)


def fp16_round(v) -> np.ndarray:
    """fp32 -> fp16 (round to nearest even, subnormals, overflow to inf) -> fp32: the value
    ggml reads back with GGML_FP16_TO_FP32 after storing a scale."""
    with np.errstate(over="ignore"):
        return np.asarray(v, dtype=F32).astype(np.float16).astype(F32)


def _fp16_bytes(v) -> np.ndarray:
    """v: (B,) float32 -> (B, 2) uint8, little-endian IEEE half."""
    with np.errstate(over="ignore"):
        return np.asarray(v, dtype=F32).astype("<f2").reshape(-1, 1).view(np.uint8)


def _seqsum(terms: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over the last axis, starting from 0 as C does.
    terms: (B, n) float32 -> (B,) float32. (np.sum would sum pairwise: other bits.)"""
    s = np.zeros(terms.shape[:-1], dtype=F32)
    for i in range(terms.shape[-1]):
        s = s + terms[..., i]
    return s


def _absmax_signed(x: np.ndarray):
    """First element of largest |x| (strict >, so the first wins ties) and its |x|.
    x: (B, n) -> (amax (B,), max (B,))."""
    amax = np.zeros(x.shape[0], dtype=F32)
    mx = np.zeros(x.shape[0], dtype=F32)
    for i in range(x.shape[1]):
        ax = np.abs(x[:, i])
        take = ax > amax
        amax = np.where(take, ax, amax)
        mx = np.where(take, x[:, i], mx)
    return amax, mx


def _f(a) -> np.ndarray:
    return np.asarray(a, dtype=F32)


def _col(v) -> np.ndarray:
    return np.asarray(v, dtype=F32)[:, None]


def make_qx_quants(x: np.ndarray, nmax: int, w: np.ndarray | None = None):
    """Symmetric codes in [-nmax, nmax-1] with a weighted least-squares scale (ggml
    make_qx_quants, rmse_type 1). Tries 19 inverse scales -(nmax + 0.1k)/max.
    x: (B, n) float32, w: (B, n) weights (default x^2) -> scale (B,) float32, L (B, n) int32 in
    [0, 2*nmax) (code + nmax)."""
    w = x * x if w is None else w
    amax, mx = _absmax_signed(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)

    def codes(iscale):
        return np.clip(nearest_int(_col(iscale) * x), -nmax, nmax - 1)

    def sums(l):
        lf = _f(l)
        return _seqsum(w * x * lf), _seqsum(w * lf * lf)

    l = codes(F32(-nmax) / mx)
    L = l + nmax
    sumlx, suml2 = sums(l)
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, F32(1)), F32(0))
    best = scale * sumlx
    for k in QX_STEPS:
        if k == 0:
            continue
        l = codes(-(F32(nmax) + QX_STEP * F32(k)) / mx)
        slx, sl2 = sums(l)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        L = np.where(better[:, None], l + nmax, L)
        scale = np.where(better, slx / np.where(better, sl2, F32(1)), scale)
        best = np.where(better, scale * slx, best)
    scale = np.where(zero, F32(0), scale)
    L = np.where(zero[:, None], 0, L)
    return _f(scale), L.astype(np.int32)


def make_q3_quants(x: np.ndarray, nmax: int):
    """Q3_K ref: codes in [-nmax, nmax-1] from -nmax/max, then up to 5 coordinate-descent
    passes that move one code at a time when it improves the x^2-weighted fit
    (ggml make_q3_quants, do_rmse). x: (B, n) -> scale (B,), L (B, n) int32 (code + nmax)."""
    amax, mx = _absmax_signed(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    L = np.clip(nearest_int(_col(F32(-nmax) / mx) * x), -nmax, nmax - 1)
    w = x * x
    sumlx = _seqsum(w * x * _f(L))
    suml2 = _seqsum(w * _f(L) * _f(L))
    with np.errstate(all="ignore"):
        for _ in range(REFINE_PASSES):
            for i in range(x.shape[1]):
                wi, xi, li = w[:, i], x[:, i], _f(L[:, i])
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                new_l = np.clip(nearest_int(xi * sl2 / slx), -nmax, nmax - 1)
                nl = _f(new_l)
                slx2 = slx + wi * xi * nl
                sl22 = sl2 + wi * nl * nl
                take = ((slx > 0) & (new_l != L[:, i]) & (sl22 > 0)
                        & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                L[:, i] = np.where(take, new_l, L[:, i])
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1)), F32(0))
    scale = np.where(zero, F32(0), scale)
    L = np.where(zero[:, None], 0, L + nmax)
    return _f(scale), L.astype(np.int32)


def make_qkx_quants(x, w, nmax: int, rmin, rdelta, nstep: int, use_mad: bool):
    """Asymmetric codes in [0, nmax]: y = scale*L + min, min <= 0 (ggml make_qkx2/qkx3).
    Sweeps inverse scales (nmax + rmin + k*rdelta)/(max - min), k = 0..nstep, fits scale and
    min by weighted least squares for each candidate grid and keeps the lowest weighted error
    (squared, or absolute when use_mad).
    x, w: (B, n) float32 -> scale (B,), the_min (B,) = -min >= 0, L (B, n) int32."""
    n = x.shape[1]
    mn, mx = x[:, 0].copy(), x[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        mn = np.where(x[:, i] < mn, x[:, i], mn)
        mx = np.where(x[:, i] > mx, x[:, i], mx)
        sum_w = sum_w + w[:, i]
        sum_x = sum_x + w[:, i] * x[:, i]
    mn = np.where(mn > 0, F32(0), mn)
    flat = mx == mn
    rng = np.where(flat, F32(1), mx - mn)

    def err(scale, mn_, L):
        diff = _col(scale) * _f(L) + _col(mn_) - x
        return _seqsum(w * (np.abs(diff) if use_mad else diff * diff))

    iscale = F32(nmax) / rng
    scale = F32(1) / iscale
    L = np.clip(nearest_int(_col(iscale) * (x - _col(mn))), 0, nmax)
    best = err(scale, mn, L)
    with np.errstate(all="ignore"):
        for k in range(nstep + 1 if nstep >= 1 else 0):   # nstep < 1: keep the min/max grid
            # ggml keeps updating `min` inside the sweep: later grids start from the best min so far
            rng = np.where(flat, F32(1), mx - mn)
            iscale = (rmin + rdelta * F32(k) + F32(nmax)) / rng
            La = np.clip(nearest_int(_col(iscale) * (x - _col(mn))), 0, nmax)
            lf = _f(La)
            sum_l = _seqsum(w * lf)
            sum_l2 = _seqsum(w * lf * lf)
            sum_xl = _seqsum(w * lf * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            cur = err(this_scale, this_min, La)
            better = (D > 0) & (cur < best)
            L = np.where(better[:, None], La, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    scale = np.where(flat, F32(0), scale)
    L = np.where(flat[:, None], 0, L)
    return _f(scale), _f(-mn), L.astype(np.int32)


def make_qp_quants(x, nmax: int, qw):
    """Unsigned codes in [0, nmax] for non-negative values (the sub-block scales of the imatrix
    paths) with a qw-weighted scale: 8 extra grids (nmax + 0.1k)/max, then up to 5
    coordinate-descent passes (ggml make_qp_quants). Codes are kept as ggml's uint8.
    x, qw: (B, n) float32 -> scale (B,), L (B, n) int32 in [0, 255]."""
    mx = np.zeros(x.shape[0], dtype=F32)
    for i in range(x.shape[1]):
        mx = np.where(mx > x[:, i], mx, x[:, i])
    zero = mx < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)

    def mse(scale, L):
        diff = x - _col(scale) * _f(L)
        return _seqsum(qw * diff * diff)

    iscale = F32(nmax) / mx
    best = mse(F32(1) / iscale, nearest_int(_col(iscale) * x) & 0xFF)
    for k in QP_STEPS:
        if k == 0:
            continue
        isc = (QX_STEP * F32(k) + F32(nmax)) / mx
        e = mse(F32(1) / isc, np.minimum(nmax, nearest_int(_col(isc) * x)))
        better = e < best
        best = np.where(better, e, best)
        iscale = np.where(better, isc, iscale)
    lint = np.minimum(nmax, nearest_int(_col(iscale) * x))
    L = lint & 0xFF
    sumlx = _seqsum(qw * x * _f(lint))
    suml2 = _seqsum(qw * _f(lint) * _f(lint))
    with np.errstate(all="ignore"):
        for _ in range(REFINE_PASSES):
            for i in range(x.shape[1]):
                wi, xi, li = qw[:, i], x[:, i], _f(L[:, i])
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                new_l = np.minimum(nmax, nearest_int(xi * sl2 / slx))
                nl = _f(new_l)
                slx2 = slx + wi * xi * nl
                sl22 = sl2 + wi * nl * nl
                take = ((slx > 0) & (sl2 > 0) & (new_l != L[:, i])
                        & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                L[:, i] = np.where(take, new_l & 0xFF, L[:, i])
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1)), F32(0))
    scale = np.where(zero, F32(0), scale)
    L = np.where(zero[:, None], 0, L)
    return _f(scale), L.astype(np.int32)


def best_index_iq4(a) -> np.ndarray:
    """Index of the IQ4 level nearest to a (ties go up), as ggml best_index_int8.
    a: float32 array -> int32 array."""
    a = _f(a)
    vals = IQ4_VALUES.astype(F32)
    mu = np.clip(np.searchsorted(vals, a, side="right"), 1, len(vals) - 1)
    lower = (a - vals[mu - 1]) < (vals[mu] - a)
    idx = np.where(lower, mu - 1, mu)
    idx = np.where(a <= vals[0], 0, idx)
    idx = np.where(a >= vals[-1], len(vals) - 1, idx)
    return idx.astype(np.int32)


# ---- bit packing (numpy) -----------------------------------------------------------------------
def _pack_nibbles32(L):
    """(B, 32) codes -> (B, 16): element e<16 in the low nibble of byte e, e>=16 in the high."""
    L = L.astype(np.uint8)
    return (L[:, :16] & 15) | ((L[:, 16:] & 15) << 4)


def _pack_qh32(L):
    """(B, 32) 5-bit codes -> (B, 4) bytes of a little-endian u32 holding bit 4 of each code."""
    bits = ((L.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return np.bitwise_or.reduce(bits, axis=1).astype("<u4").reshape(-1, 1).view(np.uint8)


def _pack_2bit(L):
    """(B, 256) 2-bit codes -> (B, 64): element 128h+32s+l in bits 2s of byte 32h+l."""
    L = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _pack_4bit_k(L):
    """(B, 256) -> (B, 128): element 64c+32t+l in nibble t of byte 32c+l (Q4_K/Q5_K/IQ4_XS use
    the Q4_0 order per 32 instead; see _pack_iq4xs)."""
    L = L.astype(np.uint8).reshape(-1, 4, 2, 32)
    return ((L[:, :, 0] & 15) | ((L[:, :, 1] & 15) << 4)).reshape(-1, 128)


def _pack_scales_k4(ls, lm):
    """8 six-bit scales and mins (B, 8) -> (B, 12) bytes, ggml's Q4_K/Q5_K scale packing."""
    ls = ls.astype(np.uint8)
    lm = lm.astype(np.uint8)
    s = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    s[:, 0:4] = ls[:, 0:4]
    s[:, 4:8] = lm[:, 0:4]
    s[:, 8:12] = (ls[:, 4:8] & 15) | ((lm[:, 4:8] & 15) << 4)
    s[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    s[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return s


def _unpack_scales_k4(s):
    """(B, 12) -> scale (B, 8), min (B, 8) int32 (ggml get_scale_min_k4)."""
    s = s.astype(np.int32)
    sc = np.empty((s.shape[0], 8), np.int32)
    m = np.empty((s.shape[0], 8), np.int32)
    sc[:, :4] = s[:, 0:4] & 63
    m[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)
    m[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, m


def _pack_scales_q3(l):
    """16 six-bit scales (B, 16) in 0..63 -> (B, 12) bytes, ggml's Q3_K packing."""
    l = l.astype(np.uint8)
    s = np.zeros((l.shape[0], 12), dtype=np.uint8)
    s[:, 0:8] = (l[:, 0:8] & 15) | ((l[:, 8:16] & 15) << 4)
    for j in range(16):
        s[:, 8 + j % 4] |= (l[:, j] >> 4) << (2 * (j // 4))
    return s


def _unpack_scales_q3(s):
    """(B, 12) -> (B, 16) int32 six-bit scales in 0..63."""
    s = s.astype(np.int32)
    out = np.empty((s.shape[0], 16), np.int32)
    for j in range(16):
        low = s[:, j] & 15 if j < 8 else s[:, j - 8] >> 4
        out[:, j] = low | (((s[:, 8 + j % 4] >> (2 * (j // 4))) & 3) << 4)
    return out


def _fields(blocks, t: QType) -> dict:
    off = t.offsets()
    return {k: blocks[:, a:b] for k, (a, b) in off.items()}


def _half(b) -> np.ndarray:
    """(B, 2) uint8 -> (B, 1) float32."""
    return np.ascontiguousarray(b).view("<f2").astype(F32)


def _assemble(t: QType, **fields) -> np.ndarray:
    """Field arrays (B, nbytes) uint8 -> blocks (B, type_size) uint8 in layout order."""
    return np.concatenate([np.asarray(fields[f.name], dtype=np.uint8).reshape(-1, f.nbytes)
                           for f in t.layout], axis=1)


# ---- dequantize (numpy reference) ---------------------------------------------------------------
def _unpack_nibbles32(qs):
    qs = qs.astype(np.int32)
    return np.concatenate([qs & 15, qs >> 4], axis=1)


def _unpack_qh32(qh):
    u = np.ascontiguousarray(qh).view("<u4").astype(np.int64)  # (B, 1)
    return ((u >> np.arange(32)) & 1).astype(np.int32)


def _unpack_2bit(qs):
    qs = qs.astype(np.int32).reshape(-1, 2, 1, 32)
    return ((qs >> (2 * np.arange(4)).reshape(1, 1, 4, 1)) & 3).reshape(-1, QK_K)


def _unpack_4bit_k(qs):
    qs = qs.astype(np.int32).reshape(-1, 4, 1, 32)
    return ((qs >> (4 * np.arange(2)).reshape(1, 1, 2, 1)) & 15).reshape(-1, QK_K)


def _dq_blocks(blocks: np.ndarray, t: QType) -> np.ndarray:
    """blocks (B, type_size) uint8 -> (B, block_size) float32, the ggml evaluation order."""
    f = _fields(blocks, t)
    n = t.name
    if n in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"):
        d = _half(f["d"])
        q = _unpack_nibbles32(f["qs"])
        if n in ("Q5_0", "Q5_1"):
            q = q | (_unpack_qh32(f["qh"]) << 4)
        if n == "Q4_0":
            return _f(q - 8) * d
        if n == "Q5_0":
            return _f(q - 16) * d
        if n == "IQ4_NL":
            return d * IQ4_VALUES.astype(F32)[q]
        return _f(q) * d + _half(f["m"])
    if n == "Q8_0":
        return _f(f["qs"].view(np.int8)) * _half(f["d"])
    if n == "Q2_K":
        sc = f["scales"].astype(np.int32)
        dl = _half(f["d"]) * _f(sc & 15)        # (B, 16)
        ml = _half(f["dmin"]) * _f(sc >> 4)
        q = _f(_unpack_2bit(f["qs"])).reshape(-1, 16, 16)
        return (dl[:, :, None] * q - ml[:, :, None]).reshape(-1, QK_K)
    if n == "Q3_K":
        sc = _unpack_scales_q3(f["scales"])
        dl = _half(f["d"]) * _f(sc - 32)
        hm = f["hmask"].astype(np.int32)
        hbit = ((hm[:, None, :] >> np.arange(8).reshape(1, 8, 1)) & 1).reshape(-1, QK_K)
        q = _unpack_2bit(f["qs"]) - np.where(hbit == 1, 0, 4)
        return (dl[:, :, None] * _f(q).reshape(-1, 16, 16)).reshape(-1, QK_K)
    if n in ("Q4_K", "Q5_K"):
        sc, m = _unpack_scales_k4(f["scales"])
        d1 = _half(f["d"]) * _f(sc)
        m1 = _half(f["dmin"]) * _f(m)
        q = _unpack_4bit_k(f["qs"])
        if n == "Q5_K":
            qh = f["qh"].astype(np.int32)   # bit (2c+t) of qh[l] for e = 64c+32t+l
            q = q | ((((qh[:, None, :] >> np.arange(8).reshape(1, 8, 1)) & 1) << 4).reshape(-1, QK_K))
        return (d1[:, :, None] * _f(q).reshape(-1, 8, 32) - m1[:, :, None]).reshape(-1, QK_K)
    if n == "Q6_K":
        ql = f["ql"].astype(np.int32).reshape(-1, 2, 2, 32)     # [h, s%2, l]
        qh = f["qh"].astype(np.int32).reshape(-1, 2, 1, 32)
        low = np.stack([ql[:, :, 0] & 15, ql[:, :, 1] & 15, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        high = (qh >> (2 * np.arange(4)).reshape(1, 1, 4, 1)) & 3
        q = (low | (high << 4)) - 32                             # (B, 2, 4, 32)
        sc = _f(f["scales"].view(np.int8))                        # (B, 16)
        dsc = _half(f["d"]) * sc
        return (dsc[:, :, None] * _f(q).reshape(-1, 16, 16)).reshape(-1, QK_K)
    if n == "IQ4_XS":
        sh = np.ascontiguousarray(f["scales_h"]).view("<u2").astype(np.int32)   # (B, 1)
        sl = f["scales_l"].astype(np.int32)
        ib = np.arange(8)
        ls = ((sl[:, ib // 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
        dl = _half(f["d"]) * _f(ls - 32)
        q = _unpack_nibbles32(f["qs"].reshape(-1, 16)).reshape(-1, 8, 32)
        return (dl[:, :, None] * IQ4_VALUES.astype(F32)[q]).reshape(-1, QK_K)
    raise ValueError(f"no dequantizer for {n}")


def dequantize_numpy(q: np.ndarray, qtype) -> np.ndarray:
    """Readable reference dequantizer. q: (rows, row_bytes) uint8 -> (rows, cols) float32."""
    t = _qtype(qtype)
    q = _check_q(q, t)
    rows = q.shape[0]
    blocks = q.reshape(-1, t.type_size)
    return _dq_blocks(blocks, t).astype(F32).reshape(rows, -1)


def _check_q(q, t: QType) -> np.ndarray:
    if not isinstance(q, np.ndarray) or q.dtype != np.uint8:
        got = q.dtype if isinstance(q, np.ndarray) else type(q).__name__
        raise ValueError(f"q must be a uint8 numpy array (rows, row_bytes), got {got}")
    if q.ndim != 2 or q.size == 0:
        raise ValueError(f"q must be non-empty 2-D (rows, row_bytes), got shape {q.shape}")
    if q.shape[1] % t.type_size:
        raise ValueError(f"row_bytes must be a multiple of {t.type_size} bytes per {t.name} block, "
                         f"got {q.shape[1]} (is the qtype right?)")
    return np.ascontiguousarray(q)


# ---- quantize (numpy reference) ---------------------------------------------------------------
def _q_legacy_ref(xb: np.ndarray, t: QType) -> np.ndarray:
    """quantize_row_q4_0/q4_1/q5_0/q5_1/q8_0_ref. xb: (B, 32) float32 -> (B, type_size) uint8."""
    n = t.name
    with np.errstate(divide="ignore"):
        if n in ("Q4_0", "Q5_0"):
            _, mx = _absmax_signed(xb)
            d = mx / F32(-8 if n == "Q4_0" else -16)
            idv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0))
            shift, top = (F32(8.5), 15) if n == "Q4_0" else (F32(16.5), 31)
            # (int8_t)(x*id + 8.5): truncation toward zero = round half up in the shifted domain
            L = np.minimum(top, np.trunc(xb * _col(idv) + shift).astype(np.int32))
            out = {"d": _fp16_bytes(d), "qs": _pack_nibbles32(L)}
            if n == "Q5_0":
                out["qh"] = _pack_qh32(L)
            return _assemble(t, **out)
        if n in ("Q4_1", "Q5_1"):
            mn, mx = xb[:, 0].copy(), xb[:, 0].copy()
            for i in range(1, 32):
                mn = np.where(xb[:, i] < mn, xb[:, i], mn)
                mx = np.where(xb[:, i] > mx, xb[:, i], mx)
            d = (mx - mn) / F32(15 if n == "Q4_1" else 31)
            idv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0))
            L = np.trunc((xb - _col(mn)) * _col(idv) + F32(0.5)).astype(np.int32)
            if n == "Q4_1":
                L = np.minimum(15, L)
            out = {"d": _fp16_bytes(d), "m": _fp16_bytes(mn), "qs": _pack_nibbles32(L)}
            if n == "Q5_1":
                out["qh"] = _pack_qh32(L)
            return _assemble(t, **out)
        # Q8_0: roundf = ties away from zero
        amax = np.zeros(xb.shape[0], F32)
        for i in range(32):
            amax = np.maximum(amax, np.abs(xb[:, i]))
        d = amax / F32(127)
        idv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0))
        v = xb * _col(idv)
        # exact roundf: floor(|v|) plus one when the fraction is at least one half
        fl = np.floor(np.abs(v))
        frac = np.abs(v) - fl
        q = (np.sign(v) * (fl + (frac >= F32(0.5)))).astype(np.int32)
        return _assemble(t, d=_fp16_bytes(d), qs=q.astype(np.int8).view(np.uint8))


def _row_sigma2(x: np.ndarray) -> np.ndarray:
    """Legacy imatrix paths: sum(x^2)/n_per_row over the whole row. x: (rows, cols) -> (rows,)."""
    return _seqsum(x * x) / F32(x.shape[1])


def _q_legacy_imat(x: np.ndarray, t: QType, imatrix: np.ndarray) -> np.ndarray:
    """quantize_q4_0/q4_1/q5_0/q5_1 with quant_weights. x: (rows, cols) -> (rows*nb, type_size)."""
    rows, cols = x.shape
    sigma2 = np.repeat(_row_sigma2(x), cols // 32)
    xb = x.reshape(-1, 32)
    qw = np.tile(imatrix.reshape(-1, 32), (rows, 1))
    w = qw * np.sqrt(_col(sigma2) + xb * xb)
    n = t.name
    if n in ("Q4_0", "Q5_0"):
        d, L = make_qx_quants(xb, 8 if n == "Q4_0" else 16, w)
        out = {"d": _fp16_bytes(d), "qs": _pack_nibbles32(L)}
        if n == "Q5_0":
            out["qh"] = _pack_qh32(L)
        return _assemble(t, **out)
    d, the_min, L = make_qkx_quants(xb, w, 15 if n == "Q4_1" else 31, *IMAT_SEARCH, use_mad=False)
    out = {"d": _fp16_bytes(d), "m": _fp16_bytes(-the_min), "qs": _pack_nibbles32(L)}
    if n == "Q5_1":
        out["qh"] = _pack_qh32(L)
    return _assemble(t, **out)


def _requant_asym(xs, d, dm, nmax, L):
    """Recompute codes round((x + dm)/d) for sub-blocks with d != 0; others keep their stale codes.
    xs: (B, S, n), d, dm: (B, S) -> L (B, S, n)."""
    ok = d != 0
    with np.errstate(all="ignore"):
        l = np.clip(nearest_int((xs + dm[..., None]) / np.where(ok, d, F32(1))[..., None]), 0, nmax)
    return np.where(ok[..., None], l, L)


def _requant_sym(xs, d, lo, hi, L, offset):
    ok = d != 0
    with np.errstate(all="ignore"):
        l = np.clip(nearest_int(xs / np.where(ok, d, F32(1))[..., None]), lo, hi) + offset
    return np.where(ok[..., None], l, L)


def _superblock_sigma2(xs):
    """sum(x^2) over a 256 super-block, sequential. xs: (B, 256) -> (B,)."""
    return _seqsum(xs * xs)


def _k_asym_ref_search(xsub: np.ndarray, n: str, search=None):
    """The `_ref` sub-block search of Q2_K/Q4_K/Q5_K: weights and constants per type.
    xsub: (B, sub) float32 -> float scale (B,), -min (B,), codes (B, sub)."""
    nmax = {"Q2_K": 3, "Q4_K": 15, "Q5_K": 31}[n]
    if n == "Q2_K":
        w = np.abs(xsub)                                   # |x|: big weights matter more
        default, mad = Q2K_SEARCH, True
    else:
        av_x = np.sqrt(_seqsum(xsub * xsub) / F32(32))    # rms of the sub-block
        w = _col(av_x) + np.abs(xsub)
        default, mad = (Q4K_SEARCH if n == "Q4_K" else Q5K_SEARCH), False
    rmin, rdelta, nstep = default if search is None else search
    return make_qkx_quants(xsub, w, nmax, F32(rmin), F32(rdelta), int(nstep), use_mad=mad)


def subblock_scales(x: np.ndarray, qtype: str = "Q4_K", search=None):
    """Float sub-block scales and mins found by the `_ref` search of Q2_K/Q4_K/Q5_K, before they
    are rounded to 4 or 6 bits. x: (rows, cols) float32 -> scales, mins: (rows*cols//sub,) float32,
    codes (rows*cols//sub, sub) int32. search: (rmin, rdelta, nstep) to override the constants
    (nstep < 1 keeps the plain min/max grid)."""
    t = _qtype(qtype)
    if t.name not in ("Q2_K", "Q4_K", "Q5_K"):
        raise ValueError(f"subblock_scales covers Q2_K, Q4_K and Q5_K, got {t.name}")
    x = _check_x(x, t)
    return _k_asym_ref_search(x.reshape(-1, SUB_BLOCK_K[t.name]), t.name, search)


#: sub-block length of the asymmetric k-quants
SUB_BLOCK_K = {"Q2_K": 16, "Q4_K": 32, "Q5_K": 32}


def _q_k_asym(x: np.ndarray, t: QType, imatrix) -> np.ndarray:
    """Q2_K, Q4_K, Q5_K: scale and min per sub-block, both quantized against fp16 super-scales."""
    rows, cols = x.shape
    xs = x.reshape(-1, QK_K)
    B = xs.shape[0]
    n = t.name
    sub = 16 if n == "Q2_K" else 32
    S = QK_K // sub
    nmax = {"Q2_K": 3, "Q4_K": 15, "Q5_K": 31}[n]
    xsub = xs.reshape(B * S, sub)
    if imatrix is None:
        scales, mins, L = _k_asym_ref_search(xsub, n)
        scales, mins = scales.reshape(B, S), mins.reshape(B, S)
        max_scale = np.zeros(B, F32)
        max_min = np.zeros(B, F32)
        for j in range(S):
            max_scale = np.where(scales[:, j] > max_scale, scales[:, j], max_scale)
            max_min = np.where(mins[:, j] > max_min, mins[:, j], max_min)
        if n == "Q2_K":
            q4 = F32(15)   # sub-block scales and mins are 4-bit
            with np.errstate(all="ignore"):
                isc = q4 / max_scale
                imn = q4 / max_min
                ls = np.where(_col(max_scale > 0), nearest_int(_col(isc) * scales), 0)
                lm = np.where(_col(max_min > 0), nearest_int(_col(imn) * mins), 0)
            d = np.where(max_scale > 0, max_scale / q4, F32(0))
            dmin = np.where(max_min > 0, max_min / q4, F32(0))
            ls, lm = ls & 0xFF, lm & 0xFF
        else:
            top = F32(SCALE6_MAX)
            with np.errstate(divide="ignore"):
                inv_s = np.where(max_scale > 0, top / max_scale, F32(0))
                inv_m = np.where(max_min > 0, top / max_min, F32(0))
            ls = np.minimum(SCALE6_MAX, nearest_int(_col(inv_s) * scales) & 0xFF)
            lm = np.minimum(SCALE6_MAX, nearest_int(_col(inv_m) * mins) & 0xFF)
            d = max_scale / top
            dmin = max_min / top
    else:
        qw = np.tile(imatrix.reshape(-1, QK_K), (rows, 1)).reshape(B * S, sub)
        sumx2 = _superblock_sigma2(xs)
        sigma2 = sumx2 / F32(QK_K) if n == "Q2_K" else F32(2) * sumx2 / F32(QK_K)
        sig = np.repeat(sigma2, S)
        w = qw * np.sqrt(_col(sig) + xsub * xsub)
        sw = _seqsum(w).reshape(B, S)
        scales, mins, L = make_qkx_quants(xsub, w, nmax, *IMAT_SEARCH, use_mad=False)
        scales, mins = scales.reshape(B, S), mins.reshape(B, S)
        top = 15 if n == "Q2_K" else SCALE6_MAX
        d, ls = make_qp_quants(scales, top, sw)
        dmin, lm = make_qp_quants(mins, top, sw)
        if n == "Q5_K":
            ls, lm = np.minimum(SCALE6_MAX, ls), np.minimum(SCALE6_MAX, lm)
    dh, dminh = fp16_round(d), fp16_round(dmin)
    if n == "Q2_K":
        sc_bytes = (ls | (lm << 4)) & 0xFF
        lsr, lmr = sc_bytes & 15, sc_bytes >> 4
    else:
        sc_bytes = _pack_scales_k4(ls, lm)
        lsr, lmr = _unpack_scales_k4(sc_bytes)
    dsub = _col(dh) * _f(lsr)
    dmsub = _col(dminh) * _f(lmr)
    L = _requant_asym(xs.reshape(B, S, sub), dsub, dmsub, nmax, L.reshape(B, S, sub)).reshape(B, QK_K)
    if n == "Q2_K":
        return _assemble(t, scales=sc_bytes, qs=_pack_2bit(L), d=_fp16_bytes(d), dmin=_fp16_bytes(dmin))
    if n == "Q4_K":
        return _assemble(t, d=_fp16_bytes(d), dmin=_fp16_bytes(dmin), scales=sc_bytes, qs=_pack_4bit_k(L))
    qh = np.zeros((B, 32), np.uint8)
    Lr = L.reshape(B, 8, 32)
    for k in range(8):
        qh |= ((Lr[:, k] >> 4) & 1).astype(np.uint8) << k
    return _assemble(t, d=_fp16_bytes(d), dmin=_fp16_bytes(dmin), scales=sc_bytes, qh=qh,
                     qs=_pack_4bit_k(L & 15))


def _q3_pack(t, L, sc6, d):
    hmask = np.zeros((L.shape[0], 32), np.uint8)
    Lr = L.reshape(-1, 8, 32)
    for k in range(8):
        hmask |= (Lr[:, k] > 3).astype(np.uint8) << k
    L = np.where(L > 3, L - 4, L)
    return _assemble(t, hmask=hmask, qs=_pack_2bit(L), scales=_pack_scales_q3(sc6), d=_fp16_bytes(d))


def _q_q3k(x: np.ndarray, t: QType, imatrix) -> np.ndarray:
    """Q3_K: 16 signed 6-bit sub-block scales under one fp16 super-scale, 3-bit codes."""
    rows, cols = x.shape
    xs = x.reshape(-1, QK_K)
    B = xs.shape[0]
    xsub = xs.reshape(B * 16, 16)
    if imatrix is None:
        scales, L = make_q3_quants(xsub, 4)
        scales = scales.reshape(B, 16)
        amax = np.zeros(B, F32)
        max_scale = np.zeros(B, F32)
        for j in range(16):
            a = np.abs(scales[:, j])
            take = a > amax
            amax = np.where(take, a, amax)
            max_scale = np.where(take, scales[:, j], max_scale)
        nz = max_scale != 0
        with np.errstate(divide="ignore"):
            iscale = F32(-32) / np.where(nz, max_scale, F32(1))
        l = nearest_int(_col(iscale) * scales)
        l = ((l + 128) & 0xFF) - 128                   # (int8_t) before the clamp
        sc6 = np.where(_col(nz), np.clip(l, -32, 31) + 32, 0)
        d = np.where(nz, F32(1) / iscale, F32(0))
    else:
        qw = np.tile(imatrix.reshape(-1, QK_K), (rows, 1)).reshape(B * 16, 16)
        sigma2 = F32(2) * _superblock_sigma2(xs) / F32(QK_K)
        w = qw * np.sqrt(_col(np.repeat(sigma2, 16)) + xsub * xsub)
        sw = _seqsum(w).reshape(B, 16)
        scales, L = make_qx_quants(xsub, 4, w)
        d, sc6 = make_qx_quants(scales.reshape(B, 16), 32, sw)
    dsub = _col(fp16_round(d)) * _f(sc6 - 32)
    L = _requant_sym(xs.reshape(B, 16, 16), dsub, -4, 3, L.reshape(B, 16, 16), 4).reshape(B, QK_K)
    return _q3_pack(t, L, sc6, d)


def _q_q6k(x: np.ndarray, t: QType, imatrix) -> np.ndarray:
    """Q6_K: 16 int8 sub-block scales under one fp16 super-scale, 6-bit codes."""
    rows, cols = x.shape
    xs = x.reshape(-1, QK_K)
    B = xs.shape[0]
    xsub = xs.reshape(B * 16, 16)
    qw = None if imatrix is None else np.tile(imatrix.reshape(-1, QK_K), (rows, 1)).reshape(B * 16, 16)
    scales, L = make_qx_quants(xsub, 32, qw)
    scales = scales.reshape(B, 16)
    amax = np.zeros(B, F32)
    max_scale = np.zeros(B, F32)
    for j in range(16):
        a = np.abs(scales[:, j])
        take = a > amax
        amax = np.where(take, a, amax)
        max_scale = np.where(take, scales[:, j], max_scale)
    zero = amax < GROUP_MAX_EPS     # whole super-block written as zeros
    with np.errstate(divide="ignore"):
        iscale = F32(-128) / np.where(zero, F32(1), max_scale)
    d = np.where(zero, F32(0), F32(1) / iscale)
    sc = np.minimum(127, nearest_int(_col(iscale) * scales))
    sc = np.where(_col(zero), 0, sc)
    dsub = _col(fp16_round(d)) * _f(sc)
    L = _requant_sym(xs.reshape(B, 16, 16), dsub, -32, 31, L.reshape(B, 16, 16), 32).reshape(B, QK_K)
    L = np.where(_col(zero), 0, L).astype(np.uint8)
    Lr = L.reshape(B, 2, 4, 32)
    ql = np.concatenate([(Lr[:, :, 0] & 15) | ((Lr[:, :, 2] & 15) << 4),
                         (Lr[:, :, 1] & 15) | ((Lr[:, :, 3] & 15) << 4)], axis=2).reshape(B, 128)
    qh = ((Lr[:, :, 0] >> 4) | ((Lr[:, :, 1] >> 4) << 2) | ((Lr[:, :, 2] >> 4) << 4)
          | ((Lr[:, :, 3] >> 4) << 6)).reshape(B, 64)
    return _assemble(t, ql=ql, qh=qh, scales=sc.astype(np.int8).view(np.uint8), d=_fp16_bytes(d))


def _iq4_block_search(xb, w, ntry: int):
    """Scale of each 32-block for the IQ4 grid (ggml quantize_row_iq4_nl_impl, first part).
    xb, w: (B, 32) -> scale (B,), L (B, 32) from the first grid, zero (B,) all-zero blocks."""
    vals = IQ4_VALUES.astype(F32)
    amax, mx = _absmax_signed(xb)
    zero = amax < GROUP_MAX_EPS
    mxs = np.where(zero, F32(1), mx)
    d = -mxs / vals[0] if ntry > 0 else mxs / vals[0]
    idv = F32(1) / d

    def fit(idv):
        L = best_index_iq4(_col(idv) * xb)
        q = vals[L]
        return L, _seqsum(w * q * xb), _seqsum(w * q * q)

    L, sumqx, sumq2 = fit(idv)
    d = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1)), F32(0))
    best = d * sumqx
    for itry in range(-ntry, ntry + 1):
        _, sqx, sq2 = fit(F32(itry + int(IQ4_VALUES[0])) / mxs)
        better = (sq2 > 0) & (sqx * sqx > best * sq2)
        d = np.where(better, sqx / np.where(better, sq2, F32(1)), d)
        best = np.where(better, d * sqx, best)
    return np.where(zero, F32(0), d), L, zero


def _q_iq4nl(x: np.ndarray, t: QType, imatrix, ntry: int) -> np.ndarray:
    rows, cols = x.shape
    xb = x.reshape(-1, 32)
    if imatrix is None:
        w = xb * xb
    else:
        qw = np.tile(imatrix.reshape(-1, 32), (rows, 1))
        sigma2 = _seqsum(xb * xb) * (F32(2) / F32(32))
        w = qw * np.sqrt(_col(sigma2) + xb * xb)
    d, L, zero = _iq4_block_search(xb, w, ntry)
    if ntry > 0:
        with np.errstate(divide="ignore"):
            idv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0))
        L = best_index_iq4(_col(idv) * xb)
    else:
        # ggml's ref path leaves the codes of an all-zero block as they were: the previous block's
        # (undefined for the first block of a call; we use zeros). Only d = 0 is defined there.
        for b in np.flatnonzero(zero):
            L[b] = L[b - 1] if b > 0 else 0
    return _assemble(t, d=_fp16_bytes(d), qs=_pack_nibbles32(L))


def _q_iq4xs(x: np.ndarray, t: QType, imatrix) -> np.ndarray:
    rows, cols = x.shape
    xs = x.reshape(-1, QK_K)
    B = xs.shape[0]
    xb = xs.reshape(B * 8, 32)
    if imatrix is None:
        w = xb * xb
    else:
        qw = np.tile(imatrix.reshape(-1, QK_K), (rows, 1)).reshape(B * 8, 32)
        sigma2 = _superblock_sigma2(xs) * (F32(2) / F32(QK_K))
        w = qw * np.sqrt(_col(np.repeat(sigma2, 8)) + xb * xb)
    scales, _, _ = _iq4_block_search(xb, w, IQ4_NTRY)
    scales = scales.reshape(B, 8)
    amax = np.zeros(B, F32)
    max_scale = np.zeros(B, F32)
    for j in range(8):
        a = np.abs(scales[:, j])
        take = a > amax
        amax = np.where(take, a, amax)
        max_scale = np.where(take, scales[:, j], max_scale)
    d = -max_scale / F32(32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0))
        l = np.clip(nearest_int(_col(idv) * scales), -32, 31)
        dl = _col(d) * _f(l)
        idl = np.where(dl != 0, F32(1) / np.where(dl != 0, dl, F32(1)), F32(0))
    L = best_index_iq4(idl.reshape(B * 8, 1) * xb).reshape(B, 8, 32)
    l = l + 32
    ib = np.arange(8)
    sl = np.zeros((B, 4), np.uint8)
    for k in range(8):
        sl[:, k // 2] |= ((l[:, k] & 15) << (4 * (k % 2))).astype(np.uint8)
    sh = np.bitwise_or.reduce((l >> 4) << (2 * ib), axis=1).astype("<u2").reshape(-1, 1).view(np.uint8)
    qs = _pack_nibbles32(L.reshape(B * 8, 32)).reshape(B, 128)
    return _assemble(t, d=_fp16_bytes(d), scales_h=sh, scales_l=sl, qs=qs)


def _quantize_numpy(x: np.ndarray, t: QType, imatrix, ref: bool) -> np.ndarray:
    """Numpy reference quantizer. x validated (rows, cols) float32 -> (rows, row_bytes) uint8."""
    rows, cols = x.shape
    n = t.name
    if n in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        if imatrix is None or n == "Q8_0":
            blocks = _q_legacy_ref(x.reshape(-1, 32), t)
        else:
            blocks = _q_legacy_imat(x, t, imatrix)
    elif n in ("Q2_K", "Q4_K", "Q5_K"):
        blocks = _q_k_asym(x, t, imatrix)
    elif n == "Q3_K":
        blocks = _q_q3k(x, t, imatrix)
    elif n == "Q6_K":
        blocks = _q_q6k(x, t, imatrix)
    elif n == "IQ4_NL":
        blocks = _q_iq4nl(x, t, imatrix, -1 if ref else IQ4_NTRY)
    elif n == "IQ4_XS":
        blocks = _q_iq4xs(x, t, imatrix)
    else:  # pragma: no cover - QTYPES and this table are kept in sync
        raise ValueError(f"no quantizer for {n}")
    return blocks.reshape(rows, -1)


# ---- public API ---------------------------------------------------------------------------------
BACKENDS = ("numba", "numpy")


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None, backend: str = "numba") -> np.ndarray:
    """Quantize like ggml ``quantize_<t>(x, nrow, ncols, imatrix)`` (what llama-quantize writes).

    x: (rows, cols) float32, cols a multiple of the block size; imatrix: (cols,) float32
    importance weights (mean squared activations per input column) or None.
    Returns (rows, cols // block_size * type_size) uint8, the on-disk bytes.
    backend: "numba" (fast kernels) or "numpy" (readable reference); the bytes are identical.
    """
    t = _qtype(qtype)
    _check_backend(backend)
    x = _check_x(x, t)
    imatrix = _check_imatrix(imatrix, x.shape[1])
    if backend == "numba":
        from qlearn import _kquants_numba
        if _kquants_numba.supports(t.name):
            return _kquants_numba.quantize(x, t, imatrix, ref=False)
    return _quantize_numpy(x, t, imatrix, ref=False)


def quantize_ref(x: np.ndarray, qtype, backend: str = "numba") -> np.ndarray:
    """Quantize like ggml ``quantize_row_<t>_ref`` (the deterministic reference path).

    Equals ``quantize(x, qtype)`` for every type except IQ4_NL, whose reference skips the scale
    search (and leaves the codes of all-zero blocks undefined; we repeat the previous block's).
    x: (rows, cols) float32 -> (rows, row_bytes) uint8.
    """
    t = _qtype(qtype)
    _check_backend(backend)
    x = _check_x(x, t)
    if backend == "numba":
        from qlearn import _kquants_numba
        if _kquants_numba.supports(t.name):
            return _kquants_numba.quantize(x, t, None, ref=True)
    return _quantize_numpy(x, t, None, ref=True)


def dequantize(q: np.ndarray, qtype, backend: str = "numba") -> np.ndarray:
    """Dequantize GGUF blocks like ggml ``dequantize_row_<t>``, bit for bit.

    q: (rows, row_bytes) uint8 -> (rows, row_bytes // type_size * block_size) float32.
    backend "numba" uses ``qlearn.kernels.dequantize`` when it is available and falls back to
    the numpy reference otherwise; "numpy" is the readable reference.
    """
    t = _qtype(qtype)
    _check_backend(backend)
    q = _check_q(q, t)
    if backend == "numba":
        from qlearn import kernels

        return kernels.dequantize(q, t.name)
    return dequantize_numpy(q, t)


# ---- looking inside a block ---------------------------------------------------------------------------
#: elements per sub-block (the unit that owns one small scale) for each type
SUB_BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q2_K": 16, "Q3_K": 16,
             "Q4_K": 32, "Q5_K": 32, "Q6_K": 16, "IQ4_NL": 32, "IQ4_XS": 32}


def describe_block(q: np.ndarray, qtype, row: int = 0, block: int = 0) -> dict:
    """Decode one block of quantized bytes into its parts, for figures and explorers.

    q: (rows, row_bytes) uint8 from :func:`quantize`. Returns a dict with ``bytes``
    (type_size,) uint8; ``fields``: list of (name, start, stop, description); ``d`` and ``dmin``
    (float, dmin None when absent); ``sub_size``; ``sub_scales`` and ``sub_mins`` (integer codes
    per sub-block as stored, None when absent); ``codes`` (block_size,) int32 as stored
    (IQ4: indices into ``IQ4_VALUES``; Q3_K/Q6_K: signed); ``values`` (block_size,) float32,
    the dequantized block.
    """
    t = _qtype(qtype)
    q = _check_q(q, t)
    nblocks = q.shape[1] // t.type_size
    if isinstance(row, bool) or isinstance(block, bool) \
            or not isinstance(row, (int, np.integer)) or not isinstance(block, (int, np.integer)) \
            or not (0 <= row < q.shape[0] and 0 <= block < nblocks):
        raise ValueError(f"row/block must be in [0, {q.shape[0]}) x [0, {nblocks}), got ({row}, {block})")
    b = q[row, block * t.type_size:(block + 1) * t.type_size][None, :]
    f = _fields(b, t)
    n = t.name
    d = float(_half(f["d"])[0, 0])
    dmin = None
    sub_scales = sub_mins = None
    if n in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"):
        codes = _unpack_nibbles32(f["qs"])
        if n in ("Q5_0", "Q5_1"):
            codes = codes | (_unpack_qh32(f["qh"]) << 4)
        if "m" in f:
            dmin = float(_half(f["m"])[0, 0])
    elif n == "Q8_0":
        codes = f["qs"].view(np.int8).astype(np.int32)
    elif n == "Q2_K":
        sc = f["scales"].astype(np.int32)[0]
        sub_scales, sub_mins = sc & 15, sc >> 4
        dmin = float(_half(f["dmin"])[0, 0])
        codes = _unpack_2bit(f["qs"])
    elif n == "Q3_K":
        sub_scales = _unpack_scales_q3(f["scales"])[0] - 32
        hm = f["hmask"].astype(np.int32)
        hbit = ((hm[:, None, :] >> np.arange(8).reshape(1, 8, 1)) & 1).reshape(-1, QK_K)
        codes = _unpack_2bit(f["qs"]) - np.where(hbit == 1, 0, 4)
    elif n in ("Q4_K", "Q5_K"):
        sc, m = _unpack_scales_k4(f["scales"])
        sub_scales, sub_mins = sc[0], m[0]
        dmin = float(_half(f["dmin"])[0, 0])
        codes = _unpack_4bit_k(f["qs"])
        if n == "Q5_K":
            qh = f["qh"].astype(np.int32)
            codes = codes | ((((qh[:, None, :] >> np.arange(8).reshape(1, 8, 1)) & 1) << 4).reshape(-1, QK_K))
    elif n == "Q6_K":
        sub_scales = f["scales"].view(np.int8).astype(np.int32)[0]
        ql = f["ql"].astype(np.int32).reshape(-1, 2, 2, 32)
        qh = f["qh"].astype(np.int32).reshape(-1, 2, 1, 32)
        low = np.stack([ql[:, :, 0] & 15, ql[:, :, 1] & 15, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        codes = ((low | (((qh >> (2 * np.arange(4)).reshape(1, 1, 4, 1)) & 3) << 4)) - 32).reshape(-1, QK_K)
    else:  # IQ4_XS
        sh = int(np.ascontiguousarray(f["scales_h"]).view("<u2")[0, 0])
        sl = f["scales_l"].astype(np.int32)[0]
        ib = np.arange(8)
        sub_scales = (((sl[ib // 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4)) - 32
        codes = _unpack_nibbles32(f["qs"].reshape(-1, 16)).reshape(-1, QK_K)
    return {
        "qtype": n,
        "bytes": b[0].copy(),
        "fields": [(fl.name, *t.offsets()[fl.name], fl.what) for fl in t.layout],
        "d": d,
        "dmin": dmin,
        "sub_size": SUB_BLOCK[n],
        "sub_scales": None if sub_scales is None else np.asarray(sub_scales, np.int32),
        "sub_mins": None if sub_mins is None else np.asarray(sub_mins, np.int32),
        "codes": np.asarray(codes, np.int32).reshape(-1),
        "values": _dq_blocks(b, t)[0].astype(F32),
    }
