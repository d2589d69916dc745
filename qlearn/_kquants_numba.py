"""Numba kernels behind qlearn.kquants.quantize / quantize_ref.

Each ggml routine becomes one scalar loop per block, the same algorithm as the numpy
reference in :mod:`qlearn.kquants` (tests prove the bytes agree). Rules that keep the bits:

- every value is float32; integers enter arithmetic only through ``np.float32(l)`` (numba, like
  numpy, would otherwise promote int * float32 to float64);
- ``fastmath`` stays off, so LLVM neither contracts a*b+c into an FMA nor reassociates sums;
- ``nearest_int`` and the fp16 rounding are emulated exactly (see the helpers below).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from qlearn.kquants import (GROUP_MAX_EPS, IMAT_SEARCH, IQ4_NTRY, IQ4_VALUES, Q2K_SEARCH,
                            Q4K_SEARCH, Q5K_SEARCH, QK_K, QX_STEP, REFINE_PASSES, ROUND_MAGIC,
                            SCALE6_MAX)

F32 = np.float32
# error_model="numpy": x/0 gives inf/nan as in C instead of raising (and costs no zero check)
_jit = numba.njit(cache=True, fastmath=False, nogil=True, error_model="numpy")

_TWO23 = 8388608.0      # 2^23: s = v + 1.5*2^23 lies in [2^23, 2^24) when |v| < 2^22
_NEAREST_INT_EXACT = F32(4194303.0)  # ggml asserts |v| <= this; inside it the trick is exact RNE
_FP16_INF_FROM = 65520.0  # halfway between 65504 (largest fp16) and 65536: rounds (to even) to inf
_IQ4 = IQ4_VALUES.astype(np.float32)
_RMIN4, _RDELTA4, _NSTEP4 = Q4K_SEARCH
_RMIN5, _RDELTA5, _NSTEP5 = Q5K_SEARCH
_RMIN2, _RDELTA2, _NSTEP2 = Q2K_SEARCH
_RMINI, _RDELTAI, _NSTEPI = IMAT_SEARCH
_ZERO = F32(0.0)
_ONE = F32(1.0)


@_jit
def _nearest_int_wide(v):
    """nearest_int outside |v| <= 4194303: the low mantissa bits of v + 1.5*2^23 (ggml's garbage,
    clamped by every caller), emulated from frexp."""
    a = abs(float(v + ROUND_MAGIC))
    if math.isnan(a):
        return 0            # x86's default NaN 0x7FC00000 / 0xFFC00000 has mantissa 0x400000
    if a == 0.0 or math.isinf(a):
        return -0x400000
    m, e = math.frexp(a)
    return int((2.0 * m - 1.0) * _TWO23) - 0x400000


@numba.njit(cache=True, fastmath=False, nogil=True, error_model="numpy", inline="always")
def nearest_int(v):
    """ggml nearest_int(v) for float32 v: round half to even where ggml's trick is exact."""
    if abs(v) <= _NEAREST_INT_EXACT:
        return int(np.rint(v))
    return _nearest_int_wide(v)


@_jit
def fp16(v):
    """fp32 -> fp16 round to nearest even (subnormals, overflow to inf).
    Returns (bits, value read back as float32)."""
    a = abs(float(v))
    neg = v < 0 or (v == 0 and math.copysign(1.0, v) < 0)
    sign = 0x8000 if neg else 0
    if a == 0.0:
        return sign, F32(-0.0) if neg else F32(0.0)
    if a >= _FP16_INF_FROM:
        return sign | 0x7C00, F32(-np.inf) if neg else F32(np.inf)
    m, e = math.frexp(a)
    E = e - 1
    ulp = -24 if E < -14 else E - 10
    r = np.rint(math.ldexp(a, -ulp))
    val = math.ldexp(r, ulp)
    if E < -14:
        bits = int(r)
    else:
        bits = ((E + 15) << 10) + int(r) - 1024
    return sign | bits, F32(-val) if neg else F32(val)


@_jit
def _put16(out, pos, bits):
    out[pos] = bits & 0xFF
    out[pos + 1] = (bits >> 8) & 0xFF


@_jit
def _absmax(x):
    amax = _ZERO
    mx = _ZERO
    for i in range(x.shape[0]):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    return amax, mx


# ---- the searches ------------------------------------------------------------------------------
@_jit
def make_qx_quants(x, nmax, w, L):
    """Symmetric codes + weighted LSQ scale (rmse_type 1). L receives code + nmax."""
    n = x.shape[0]
    amax, mx = _absmax(x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return _ZERO
    fn = F32(nmax)
    iscale = F32(-nmax) / mx
    sumlx = _ZERO
    suml2 = _ZERO
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        lf = F32(l)
        sumlx += w[i] * x[i] * lf
        suml2 += w[i] * lf * lf
    scale = sumlx / suml2 if suml2 != 0 else _ZERO
    best = scale * sumlx
    for k in range(-9, 10):
        if k == 0:
            continue
        iscale = -(fn + QX_STEP * F32(k)) / mx
        sumlx = _ZERO
        suml2 = _ZERO
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            lf = F32(l)
            sumlx += w[i] * x[i] * lf
            suml2 += w[i] * lf * lf
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[i])
                L[i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@_jit
def make_q3_quants(x, nmax, L):
    """Q3_K ref sub-block search (do_rmse): L receives code + nmax."""
    n = x.shape[0]
    amax, mx = _absmax(x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return _ZERO
    iscale = F32(-nmax) / mx
    sumlx = _ZERO
    suml2 = _ZERO
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l
        w = x[i] * x[i]
        lf = F32(l)
        sumlx += w * x[i] * lf
        suml2 += w * lf * lf
    for _ in range(REFINE_PASSES):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            li = F32(L[i])
            slx = sumlx - w * x[i] * li
            if slx > 0:
                sl2 = suml2 - w * li * li
                new_l = nearest_int(x[i] * sl2 / slx)
                new_l = max(-nmax, min(nmax - 1, new_l))
                if new_l != L[i]:
                    nl = F32(new_l)
                    slx += w * x[i] * nl
                    sl2 += w * nl * nl
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > 0 else _ZERO


@_jit
def make_qkx_quants(x, w, nmax, rmin, rdelta, nstep, use_mad, L, Laux):
    """Asymmetric codes in [0, nmax] (make_qkx2 / make_qkx3). Returns (scale, -min).
    x, w: (n,) float32; L: (n,) int32 receives the codes; Laux: (2n,) float32 scratch."""
    n = x.shape[0]
    mn = x[0]
    mx = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w += w[i]
        sum_x += w[i] * x[i]
    if mn > 0:
        mn = _ZERO
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return _ZERO, -mn
    fn = F32(nmax)
    iscale = fn / (mx - mn)
    scale = _ONE / iscale
    best = _ZERO
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        l = max(0, min(nmax, l))
        L[i] = l
        diff = scale * F32(l) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best += w[i] * diff
    if nstep < 1:
        return scale, -mn
    # Software pipelining, same operations in the same order as ggml: the sums of grid k+1 are
    # accumulated in the loop that measures the error of grid k, guessing that grid k does not win
    # (then `mn` is unchanged and the guess is exact); when it wins, grid k+1 is redone from the
    # new min. The independent float32 chains then overlap instead of waiting on each other.
    cur_buf = Laux[:n]
    nxt_buf = Laux[n:2 * n]
    _grid_codes(x, (rmin + rdelta * F32(0) + fn) / (mx - mn), mn, nmax, cur_buf)
    sum_l, sum_l2, sum_xl = _grid_sums(x, w, cur_buf)
    for k in range(nstep + 1):
        has_next = k < nstep
        if has_next:
            _grid_codes(x, (rmin + rdelta * F32(k + 1) + fn) / (mx - mn), mn, nmax, nxt_buf)
        n_l = _ZERO
        n_l2 = _ZERO
        n_xl = _ZERO
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = _ZERO
                this_scale = sum_xl / sum_l2
            cur = _ZERO
            if has_next:
                for i in range(n):
                    diff = this_scale * cur_buf[i] + this_min - x[i]
                    diff = abs(diff) if use_mad else diff * diff
                    cur += w[i] * diff
                    lf = nxt_buf[i]
                    n_l += w[i] * lf
                    n_l2 += w[i] * lf * lf
                    n_xl += w[i] * lf * x[i]
            else:
                for i in range(n):
                    diff = this_scale * cur_buf[i] + this_min - x[i]
                    diff = abs(diff) if use_mad else diff * diff
                    cur += w[i] * diff
            if cur < best:
                for i in range(n):
                    L[i] = int(cur_buf[i])
                best = cur
                scale = this_scale
                mn = this_min
                if has_next:   # the guess assumed the old min: redo grid k+1 from the new one
                    _grid_codes(x, (rmin + rdelta * F32(k + 1) + fn) / (mx - mn), mn, nmax, nxt_buf)
                    n_l, n_l2, n_xl = _grid_sums(x, w, nxt_buf)
        elif has_next:
            n_l, n_l2, n_xl = _grid_sums(x, w, nxt_buf)
        cur_buf, nxt_buf = nxt_buf, cur_buf
        sum_l = n_l
        sum_l2 = n_l2
        sum_xl = n_xl
    return scale, -mn


@_jit
def _grid_codes(x, iscale, mn, nmax, out):
    """out[i] = clamp(nearest_int(iscale*(x[i] - mn)), 0, nmax) as float32. When every argument is
    inside nearest_int's exact range (checked on the largest: rounding is monotonic) the loop is
    branch-free and vectorises."""
    n = x.shape[0]
    span = _ZERO
    for i in range(n):
        span = max(span, abs(x[i] - mn))
    if iscale * span <= _NEAREST_INT_EXACT:
        fn = F32(nmax)
        for i in range(n):
            out[i] = min(max(np.rint(iscale * (x[i] - mn)), _ZERO), fn)
    else:
        for i in range(n):
            out[i] = F32(max(0, min(nmax, nearest_int(iscale * (x[i] - mn)))))


@_jit
def _grid_sums(x, w, lf):
    """Sequential float32 sums of w*l, w*l*l and w*l*x (ggml's order)."""
    sum_l = _ZERO
    sum_l2 = _ZERO
    sum_xl = _ZERO
    for i in range(x.shape[0]):
        sum_l += w[i] * lf[i]
        sum_l2 += w[i] * lf[i] * lf[i]
        sum_xl += w[i] * lf[i] * x[i]
    return sum_l, sum_l2, sum_xl


@_jit
def make_qp_quants(x, nmax, L, qw):
    """Unsigned codes for non-negative x (the super-block scale search); L holds uint8 values."""
    n = x.shape[0]
    mx = _ZERO
    for i in range(n):
        mx = mx if mx > x[i] else x[i]
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return _ZERO
    fn = F32(nmax)
    iscale = fn / mx
    scale = _ONE / iscale
    best = _ZERO
    for i in range(n):
        l = nearest_int(iscale * x[i]) & 0xFF
        diff = x[i] - scale * F32(l)
        best += qw[i] * diff * diff
    for k in range(-4, 5):
        if k == 0:
            continue
        isc = (QX_STEP * F32(k) + fn) / mx
        sc = _ONE / isc
        mse = _ZERO
        for i in range(n):
            l = min(nmax, nearest_int(isc * x[i]))
            diff = x[i] - sc * F32(l)
            mse += qw[i] * diff * diff
        if mse < best:
            best = mse
            iscale = isc
    sumlx = _ZERO
    suml2 = _ZERO
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF
        lf = F32(l)
        sumlx += qw[i] * x[i] * lf
        suml2 += qw[i] * lf * lf
    for _ in range(REFINE_PASSES):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            li = F32(L[i])
            slx = sumlx - w * x[i] * li
            sl2 = suml2 - w * li * li
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    nl = F32(new_l)
                    slx += w * x[i] * nl
                    sl2 += w * nl * nl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else _ZERO


@_jit
def best_index_iq4(a):
    """Nearest IQ4 level (ties go up), ggml best_index_int8."""
    if a <= _IQ4[0]:
        return 0
    if a >= _IQ4[15]:
        return 15
    ml = 0
    mu = 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if a < _IQ4[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if a - _IQ4[mu - 1] < _IQ4[mu] - a else mu


# ---- packing --------------------------------------------------------------------------------------
@_jit
def _pack_nib32(L, out, pos):
    for j in range(16):
        out[pos + j] = (L[j] & 15) | ((L[j + 16] & 15) << 4)


@_jit
def _pack_qh32(L, out, pos):
    qh = 0
    for j in range(32):
        qh |= ((L[j] >> 4) & 1) << j
    for k in range(4):
        out[pos + k] = (qh >> (8 * k)) & 0xFF


@_jit
def _pack_2bit(L, out, pos):
    for h in range(2):
        for l in range(32):
            e = 128 * h + l
            out[pos + 32 * h + l] = ((L[e] & 3) | ((L[e + 32] & 3) << 2) | ((L[e + 64] & 3) << 4)
                                     | ((L[e + 96] & 3) << 6))


@_jit
def _pack_4bit_k(L, out, pos):
    for c in range(4):
        for l in range(32):
            out[pos + 32 * c + l] = (L[64 * c + l] & 15) | ((L[64 * c + 32 + l] & 15) << 4)


@_jit
def _pack_scales_k4(ls, lm, out, pos):
    for j in range(8):
        if j < 4:
            out[pos + j] = ls[j] & 0xFF
            out[pos + j + 4] = lm[j] & 0xFF
        else:
            out[pos + j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4)
            out[pos + j - 4] |= ((ls[j] >> 4) << 6) & 0xFF
            out[pos + j] |= ((lm[j] >> 4) << 6) & 0xFF


@_jit
def _scale_min_k4(j, s, pos):
    if j < 4:
        return s[pos + j] & 63, s[pos + j + 4] & 63
    return ((s[pos + j + 4] & 0xF) | ((s[pos + j - 4] >> 6) << 4),
            (s[pos + j + 4] >> 4) | ((s[pos + j] >> 6) << 4))


# ---- legacy 32-element types ------------------------------------------------------------------------
@_jit
def _legacy_ref(x, kind, out):
    """quantize_row_q4_0/q4_1/q5_0/q5_1/q8_0_ref over a flat x. kind: 0..4 in that order."""
    nb = x.shape[0] // 32
    tsz = (18, 20, 22, 24, 34)[kind]
    L = np.empty(32, np.int32)
    for b in range(nb):
        xb = x[32 * b:32 * b + 32]
        p = tsz * b
        if kind == 0 or kind == 2:
            amax, mx = _absmax(xb)
            d = mx / F32(-8.0 if kind == 0 else -16.0)
            idv = _ONE / d if d != 0 else _ZERO
            shift = F32(8.5) if kind == 0 else F32(16.5)
            top = 15 if kind == 0 else 31
            for j in range(32):
                L[j] = min(top, int(xb[j] * idv + shift))
            bits, _ = fp16(d)
            _put16(out, p, bits)
            if kind == 0:
                _pack_nib32(L, out, p + 2)
            else:
                _pack_qh32(L, out, p + 2)
                _pack_nib32(L, out, p + 6)
        elif kind == 1 or kind == 3:
            mn = xb[0]
            mx = xb[0]
            for j in range(1, 32):
                if xb[j] < mn:
                    mn = xb[j]
                if xb[j] > mx:
                    mx = xb[j]
            d = (mx - mn) / F32(15.0 if kind == 1 else 31.0)
            idv = _ONE / d if d != 0 else _ZERO
            for j in range(32):
                l = int((xb[j] - mn) * idv + F32(0.5))
                L[j] = min(15, l) if kind == 1 else l
            bits, _ = fp16(d)
            _put16(out, p, bits)
            bits, _ = fp16(mn)
            _put16(out, p + 2, bits)
            if kind == 1:
                _pack_nib32(L, out, p + 4)
            else:
                _pack_qh32(L, out, p + 4)
                _pack_nib32(L, out, p + 8)
        else:
            amax = _ZERO
            for j in range(32):
                amax = max(amax, abs(xb[j]))
            d = amax / F32(127.0)
            idv = _ONE / d if d != 0 else _ZERO
            bits, _ = fp16(d)
            _put16(out, p, bits)
            for j in range(32):
                v = xb[j] * idv
                fl = np.floor(abs(v))
                q = int(fl) + (1 if abs(v) - fl >= F32(0.5) else 0)   # roundf: ties away from 0
                q = -q if v < 0 else q
                out[p + 2 + j] = q & 0xFF


@_jit
def _legacy_imat(x, kind, qwrow, out):
    """quantize_q4_0/q4_1/q5_0/q5_1 with quant_weights, one row. kind as in _legacy_ref."""
    n = x.shape[0]
    nb = n // 32
    tsz = (18, 20, 22, 24)[kind]
    sumx2 = _ZERO
    for j in range(n):
        sumx2 += x[j] * x[j]
    sigma2 = sumx2 / F32(n)
    L = np.empty(32, np.int32)
    Laux = np.empty(64, np.float32)
    w = np.empty(32, np.float32)
    for b in range(nb):
        xb = x[32 * b:32 * b + 32]
        p = tsz * b
        for j in range(32):
            w[j] = qwrow[32 * b + j] * np.sqrt(sigma2 + xb[j] * xb[j])
        if kind == 0 or kind == 2:
            d = make_qx_quants(xb, 8 if kind == 0 else 16, w, L)
            bits, _ = fp16(d)
            _put16(out, p, bits)
            if kind == 0:
                _pack_nib32(L, out, p + 2)
            else:
                _pack_qh32(L, out, p + 2)
                _pack_nib32(L, out, p + 6)
        else:
            d, the_min = make_qkx_quants(xb, w, 15 if kind == 1 else 31, _RMINI, _RDELTAI, _NSTEPI,
                                         False, L, Laux)
            bits, _ = fp16(d)
            _put16(out, p, bits)
            bits, _ = fp16(-the_min)
            _put16(out, p + 2, bits)
            if kind == 1:
                _pack_nib32(L, out, p + 4)
            else:
                _pack_qh32(L, out, p + 4)
                _pack_nib32(L, out, p + 8)


# ---- k-quants -------------------------------------------------------------------------------------------
@_jit
def _k_asym_block(xs, qw, use_imat, kind, out, p, L, Laux, w, scales, mins, sw, Ls, Lm):
    """One 256 super-block of Q2_K (kind 0), Q4_K (1) or Q5_K (2), ref or imatrix path."""
    sub = 16 if kind == 0 else 32
    S = QK_K // sub
    nmax = (3, 15, 31)[kind]
    if use_imat:
        sumx2 = _ZERO
        for j in range(QK_K):
            sumx2 += xs[j] * xs[j]
        sigma2 = sumx2 / F32(QK_K) if kind == 0 else F32(2.0) * sumx2 / F32(QK_K)
        for j in range(S):
            xj = xs[sub * j:sub * j + sub]
            sumw = _ZERO
            for l in range(sub):
                w[l] = qw[sub * j + l] * np.sqrt(sigma2 + xj[l] * xj[l])
                sumw += w[l]
            sw[j] = sumw
            scales[j], mins[j] = make_qkx_quants(xj, w[:sub], nmax, _RMINI, _RDELTAI, _NSTEPI, False,
                                                 L[sub * j:sub * j + sub], Laux)
        top = 15 if kind == 0 else SCALE6_MAX
        d = make_qp_quants(scales[:S], top, Ls, sw[:S])
        dmin = make_qp_quants(mins[:S], top, Lm, sw[:S])
        if kind == 2:
            for j in range(S):
                Ls[j] = min(SCALE6_MAX, Ls[j])
                Lm[j] = min(SCALE6_MAX, Lm[j])
    else:
        max_scale = _ZERO
        max_min = _ZERO
        for j in range(S):
            xj = xs[sub * j:sub * j + sub]
            if kind == 0:
                for l in range(sub):
                    w[l] = abs(xj[l])
                rmin, rdelta, nstep = _RMIN2, _RDELTA2, _NSTEP2
            else:
                sum_x2 = _ZERO
                for l in range(sub):
                    sum_x2 += xj[l] * xj[l]
                av_x = np.sqrt(sum_x2 / F32(32.0))
                for l in range(sub):
                    w[l] = av_x + abs(xj[l])
                if kind == 1:
                    rmin, rdelta, nstep = _RMIN4, _RDELTA4, _NSTEP4
                else:
                    rmin, rdelta, nstep = _RMIN5, _RDELTA5, _NSTEP5
            scales[j], mins[j] = make_qkx_quants(xj, w[:sub], nmax, rmin, rdelta, nstep, kind == 0,
                                                 L[sub * j:sub * j + sub], Laux)
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        if kind == 0:
            q4 = F32(15.0)
            if max_scale > 0:
                isc = q4 / max_scale
                for j in range(S):
                    Ls[j] = nearest_int(isc * scales[j]) & 0xFF
                d = max_scale / q4
            else:
                for j in range(S):
                    Ls[j] = 0
                d = _ZERO
            if max_min > 0:
                imn = q4 / max_min
                for j in range(S):
                    Lm[j] = nearest_int(imn * mins[j]) & 0xFF
                dmin = max_min / q4
            else:
                for j in range(S):
                    Lm[j] = 0
                dmin = _ZERO
        else:
            top = F32(SCALE6_MAX)
            inv_s = top / max_scale if max_scale > 0 else _ZERO
            inv_m = top / max_min if max_min > 0 else _ZERO
            for j in range(S):
                Ls[j] = min(SCALE6_MAX, nearest_int(inv_s * scales[j]) & 0xFF)
                Lm[j] = min(SCALE6_MAX, nearest_int(inv_m * mins[j]) & 0xFF)
            d = max_scale / top
            dmin = max_min / top
    dbits, dh = fp16(d)
    mbits, mh = fp16(dmin)
    if kind == 0:
        for j in range(S):
            out[p + j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
        sc_pos = p
        _put16(out, p + 80, dbits)
        _put16(out, p + 82, mbits)
    else:
        _put16(out, p, dbits)
        _put16(out, p + 2, mbits)
        sc_pos = p + 4
        for k in range(12):
            out[sc_pos + k] = 0
        _pack_scales_k4(Ls, Lm, out, sc_pos)
    for j in range(S):
        if kind == 0:
            sc = out[sc_pos + j] & 0xF
            m = out[sc_pos + j] >> 4
        else:
            sc, m = _scale_min_k4(j, out, sc_pos)
        dd = dh * F32(sc)
        if dd == 0:
            continue       # stale codes: keep what the search chose
        dm = mh * F32(m)
        for ii in range(sub):
            l = nearest_int((xs[sub * j + ii] + dm) / dd)
            L[sub * j + ii] = max(0, min(nmax, l))
    if kind == 0:
        _pack_2bit(L, out, p + 16)
    elif kind == 1:
        _pack_4bit_k(L, out, p + 16)
    else:
        for l in range(32):
            out[p + 16 + l] = 0
        for c in range(4):
            for l in range(32):
                lo = L[64 * c + l]
                hi = L[64 * c + 32 + l]
                if lo > 15:
                    out[p + 16 + l] |= 1 << (2 * c)
                if hi > 15:
                    out[p + 16 + l] |= 1 << (2 * c + 1)
                out[p + 48 + 32 * c + l] = (lo & 15) | ((hi & 15) << 4)


@_jit
def _k_asym(x, qw, use_imat, kind, out):
    """x: (rows, cols) float32; out: (rows, row_bytes) uint8."""
    tsz = (84, 144, 176)[kind]
    L = np.zeros(QK_K, np.int32)
    Laux = np.zeros(64, np.float32)
    w = np.zeros(32, np.float32)
    scales = np.zeros(16, np.float32)
    mins = np.zeros(16, np.float32)
    sw = np.zeros(16, np.float32)
    Ls = np.zeros(16, np.int32)
    Lm = np.zeros(16, np.int32)
    rows, cols = x.shape
    nb = cols // QK_K
    for r in range(rows):
        for b in range(nb):
            _k_asym_block(x[r, QK_K * b:QK_K * b + QK_K], qw[QK_K * b:QK_K * b + QK_K], use_imat, kind,
                          out[r], tsz * b, L, Laux, w, scales, mins, sw, Ls, Lm)


@_jit
def _q3k(x, qw, use_imat, out):
    L = np.zeros(QK_K, np.int32)
    w = np.zeros(16, np.float32)
    scales = np.zeros(16, np.float32)
    sw = np.zeros(16, np.float32)
    Ls = np.zeros(16, np.int32)
    rows, cols = x.shape
    nb = cols // QK_K
    for r in range(rows):
        for b in range(nb):
            xs = x[r, QK_K * b:QK_K * b + QK_K]
            o = out[r]
            p = 110 * b
            if use_imat:
                sumx2 = _ZERO
                for j in range(QK_K):
                    sumx2 += xs[j] * xs[j]
                sigma2 = F32(2.0) * sumx2 / F32(QK_K)
                for j in range(16):
                    sumw = _ZERO
                    for l in range(16):
                        w[l] = qw[QK_K * b + 16 * j + l] * np.sqrt(sigma2 + xs[16 * j + l] * xs[16 * j + l])
                        sumw += w[l]
                    sw[j] = sumw
                    scales[j] = make_qx_quants(xs[16 * j:16 * j + 16], 4, w, L[16 * j:16 * j + 16])
                d = make_qx_quants(scales, 32, sw, Ls)
            else:
                amax = _ZERO
                max_scale = _ZERO
                for j in range(16):
                    scales[j] = make_q3_quants(xs[16 * j:16 * j + 16], 4, L[16 * j:16 * j + 16])
                    a = abs(scales[j])
                    if a > amax:
                        amax = a
                        max_scale = scales[j]
                if max_scale != 0:
                    iscale = F32(-32.0) / max_scale
                    for j in range(16):
                        l = nearest_int(iscale * scales[j])
                        l = ((l + 128) & 0xFF) - 128        # (int8_t) before the clamp
                        Ls[j] = max(-32, min(31, l)) + 32
                    d = _ONE / iscale
                else:
                    for j in range(16):
                        Ls[j] = 0
                    d = _ZERO
            bits, dh = fp16(d)
            _put16(o, p + 108, bits)
            for k in range(12):
                o[p + 96 + k] = 0
            for j in range(16):
                l = Ls[j]
                if j < 8:
                    o[p + 96 + j] = l & 0xF
                else:
                    o[p + 96 + j - 8] |= (l & 0xF) << 4
                o[p + 96 + 8 + j % 4] |= ((l >> 4) << (2 * (j // 4))) & 0xFF
            for j in range(16):
                dd = dh * F32(Ls[j] - 32)
                if dd == 0:
                    continue
                for ii in range(16):
                    l = nearest_int(xs[16 * j + ii] / dd)
                    L[16 * j + ii] = max(-4, min(3, l)) + 4
            for k in range(32):
                o[p + k] = 0
            for j in range(QK_K):
                if L[j] > 3:
                    o[p + j % 32] |= 1 << (j // 32)
                    L[j] -= 4
            _pack_2bit(L, o, p + 32)


@_jit
def _q6k(x, qw, use_imat, out):
    L = np.zeros(QK_K, np.int32)
    w = np.zeros(16, np.float32)
    scales = np.zeros(16, np.float32)
    rows, cols = x.shape
    nb = cols // QK_K
    for r in range(rows):
        for b in range(nb):
            xs = x[r, QK_K * b:QK_K * b + QK_K]
            o = out[r]
            p = 210 * b
            amax = _ZERO
            max_scale = _ZERO
            for j in range(16):
                xj = xs[16 * j:16 * j + 16]
                if use_imat:
                    for l in range(16):
                        w[l] = qw[QK_K * b + 16 * j + l]
                else:
                    for l in range(16):
                        w[l] = xj[l] * xj[l]
                scales[j] = make_qx_quants(xj, 32, w, L[16 * j:16 * j + 16])
                a = abs(scales[j])
                if a > amax:
                    amax = a
                    max_scale = scales[j]
            if amax < GROUP_MAX_EPS:
                for k in range(210):
                    o[p + k] = 0
                continue
            iscale = F32(-128.0) / max_scale
            bits, dh = fp16(_ONE / iscale)
            _put16(o, p + 208, bits)
            for j in range(16):
                s = min(127, nearest_int(iscale * scales[j]))
                o[p + 192 + j] = s & 0xFF
            for j in range(16):
                s = o[p + 192 + j]
                s = s - 256 if s > 127 else s
                dd = dh * F32(s)
                if dd == 0:
                    continue
                for ii in range(16):
                    l = nearest_int(xs[16 * j + ii] / dd)
                    L[16 * j + ii] = max(-32, min(31, l)) + 32
            for h in range(2):
                for l in range(32):
                    e = 128 * h + l
                    o[p + 64 * h + l] = (L[e] & 15) | ((L[e + 64] & 15) << 4)
                    o[p + 64 * h + 32 + l] = (L[e + 32] & 15) | ((L[e + 96] & 15) << 4)
                    o[p + 128 + 32 * h + l] = ((L[e] >> 4) | ((L[e + 32] >> 4) << 2) | ((L[e + 64] >> 4) << 4)
                                               | ((L[e + 96] >> 4) << 6))


# ---- IQ4 ------------------------------------------------------------------------------------------------
@_jit
def _iq4_search(xb, w, ntry, L):
    """Scale of one 32-block on the IQ4 grid; L gets the codes of the first grid. Returns
    (scale, is_zero)."""
    amax, mx = _absmax(xb)
    if amax < GROUP_MAX_EPS:
        return _ZERO, True
    d = -mx / _IQ4[0] if ntry > 0 else mx / _IQ4[0]
    idv = _ONE / d
    sumqx = _ZERO
    sumq2 = _ZERO
    for j in range(32):
        l = best_index_iq4(idv * xb[j])
        L[j] = l
        q = _IQ4[l]
        sumqx += w[j] * q * xb[j]
        sumq2 += w[j] * q * q
    d = sumqx / sumq2 if sumq2 > 0 else _ZERO
    best = d * sumqx
    for itry in range(-ntry, ntry + 1):
        idv = F32(itry + int(IQ4_VALUES[0])) / mx
        sumqx = _ZERO
        sumq2 = _ZERO
        for j in range(32):
            q = _IQ4[best_index_iq4(idv * xb[j])]
            sumqx += w[j] * q * xb[j]
            sumq2 += w[j] * q * q
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            d = sumqx / sumq2
            best = d * sumqx
    return d, False


@_jit
def _iq4nl(x, qw, use_imat, ntry, out):
    """x: (rows, cols); the ref path (ntry < 0) keeps L across blocks like ggml."""
    L = np.zeros(32, np.int32)
    w = np.zeros(32, np.float32)
    rows, cols = x.shape
    nb = cols // 32
    for r in range(rows):
        for b in range(nb):
            xb = x[r, 32 * b:32 * b + 32]
            p = 18 * b
            if use_imat:
                s2 = _ZERO
                for j in range(32):
                    s2 += xb[j] * xb[j]
                sigma2 = s2 * (F32(2.0) / F32(32.0))
                for j in range(32):
                    w[j] = qw[32 * b + j] * np.sqrt(sigma2 + xb[j] * xb[j])
            else:
                for j in range(32):
                    w[j] = xb[j] * xb[j]
            d, _ = _iq4_search(xb, w, ntry, L)
            bits, _ = fp16(d)
            _put16(out[r], p, bits)
            if ntry > 0:
                idv = _ONE / d if d != 0 else _ZERO
                for j in range(32):
                    L[j] = best_index_iq4(idv * xb[j])
            _pack_nib32(L, out[r], p + 2)


@_jit
def _iq4xs(x, qw, use_imat, out):
    L = np.zeros(32, np.int32)
    w = np.zeros(32, np.float32)
    scales = np.zeros(8, np.float32)
    rows, cols = x.shape
    nb = cols // QK_K
    for r in range(rows):
        for b in range(nb):
            xs = x[r, QK_K * b:QK_K * b + QK_K]
            o = out[r]
            p = 136 * b
            sigma2 = _ZERO
            if use_imat:
                for j in range(QK_K):
                    sigma2 += xs[j] * xs[j]
                sigma2 = sigma2 * (F32(2.0) / F32(QK_K))
            amax = _ZERO
            max_scale = _ZERO
            for ib in range(8):
                xb = xs[32 * ib:32 * ib + 32]
                for j in range(32):
                    if use_imat:
                        w[j] = qw[QK_K * b + 32 * ib + j] * np.sqrt(sigma2 + xb[j] * xb[j])
                    else:
                        w[j] = xb[j] * xb[j]
                scales[ib], _ = _iq4_search(xb, w, IQ4_NTRY, L)
                a = abs(scales[ib])
                if a > amax:
                    amax = a
                    max_scale = scales[ib]
            d = -max_scale / F32(32.0)
            bits, _ = fp16(d)
            _put16(o, p, bits)
            idv = _ONE / d if d != 0 else _ZERO
            sh = 0
            for k in range(4):
                o[p + 4 + k] = 0
            for ib in range(8):
                l = nearest_int(idv * scales[ib])
                l = max(-32, min(31, l))
                dl = d * F32(l)
                idl = _ONE / dl if dl != 0 else _ZERO
                for j in range(32):
                    L[j] = best_index_iq4(idl * xs[32 * ib + j])
                _pack_nib32(L, o, p + 8 + 16 * ib)
                l += 32
                o[p + 4 + ib // 2] |= (l & 0xF) << (4 * (ib % 2))
                sh |= (l >> 4) << (2 * ib)
            _put16(o, p + 2, sh)


# ---- dispatch ---------------------------------------------------------------------------------------------
_LEGACY = {"Q4_0": 0, "Q4_1": 1, "Q5_0": 2, "Q5_1": 3, "Q8_0": 4}
_KASYM = {"Q2_K": 0, "Q4_K": 1, "Q5_K": 2}
_NAMES = set(_LEGACY) | set(_KASYM) | {"Q3_K", "Q6_K", "IQ4_NL", "IQ4_XS"}


def supports(name: str) -> bool:
    """Whether a numba kernel exists for this type (all 12 types here)."""
    return name in _NAMES


def quantize(x: np.ndarray, t, imatrix, ref: bool) -> np.ndarray:
    """x: (rows, cols) float32 validated; imatrix (cols,) float32 or None -> (rows, row_bytes) uint8."""
    rows, cols = x.shape
    out = np.zeros((rows, cols // t.block_size * t.type_size), np.uint8)
    use = imatrix is not None
    qw = imatrix if use else np.zeros(cols, np.float32)
    n = t.name
    if n in _LEGACY:
        if use and n != "Q8_0":
            for r in range(rows):
                _legacy_imat(x[r], _LEGACY[n], qw, out[r])
        else:
            _legacy_ref(x.reshape(-1), _LEGACY[n], out.reshape(-1))
    elif n in _KASYM:
        _k_asym(x, qw, use, _KASYM[n], out)
    elif n == "Q3_K":
        _q3k(x, qw, use, out)
    elif n == "Q6_K":
        _q6k(x, qw, use, out)
    elif n == "IQ4_NL":
        _iq4nl(x, qw, use, -1 if ref else IQ4_NTRY, out)
    elif n == "IQ4_XS":
        _iq4xs(x, qw, use, out)
    return out
