"""Numba CPU kernels for GGUF (ggml) block formats: dequantize every type, fused matvec.

The on-disk block layouts are ggml's (see the chapter *GGUF k-quants* and ``qlearn.kquants``).
A quantized matrix is a ``uint8`` array ``q: (rows, row_bytes)`` holding the exact GGUF tensor
bytes, ``row_bytes = cols // block_size * type_size``.

- :func:`dequantize` ``(q, qtype) -> (rows, cols) float32`` for Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K
  Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS. Bit-identical to ggml's ``dequantize_row_<t>``: every
  float32 operation is done in ggml's C source order, rounded separately (``fastmath=False``,
  so LLVM may not fuse a multiply and an add into an FMA).
- :func:`matvec` ``(q, qtype, x) -> (rows,) float32`` for Q4_K, Q6_K, Q8_0, Q5_0, Q4_0, Q4_1 and
  Q5_1, fused: the weights are never expanded to a float32 matrix. By default the activations
  are quantized to 8 bits first, exactly as ggml's CPU backend does (see :func:`matvec` for
  why). :func:`matvec_reference` is the same computation written plainly in numpy (integer sums
  per sub-block, then the scales), the readable version the fast kernels are tested against.
  Two fast backends (:func:`backend`): the compiled C kernels of ``qlearn/_ckernels.c``
  (AVX2 / AVX512-VNNI intrinsics with a portable C path, built at first use by
  :mod:`qlearn._cbuild` with the system compiler) and, without a compiler, the numba kernels
  of this module.

``dequantize`` runs rows in parallel with numba ``prange`` by default (``parallel=False`` for one
thread); ``matvec`` is single-threaded by default (``parallel=True`` to spread rows).
``benchmarks/bench_kquants.py`` times both against gguf-py and a float32 torch matvec.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from qlearn import _threads, blocktypes, validate

_threads.launch()  # numba's pool now, not at the first parallel kernel (which resets torch's)

__all__ = [
    "SUPPORTED",
    "MATVEC_TYPES",
    "block_info",
    "dequantize",
    "matvec",
    "quantize_q8_k",
    "quantize_q8_0",
    "quantize_activations",
    "matvec_reference",
    "backend",
    "backend_info",
    "fused_kernel",
]

# --------------------------------------------------------------------------------------------
# Type table. Block size and bytes per block come from qlearn.blocktypes (the one table; a test
# checks it against the gguf package's registry), so nothing here can drift.
# --------------------------------------------------------------------------------------------

SUPPORTED = (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ4_NL", "IQ4_XS",
)
MATVEC_TYPES = ("Q4_K", "Q6_K", "Q8_0", "Q5_0", "Q4_0", "Q4_1", "Q5_1")

# Integer ids the numba driver branches on (index into SUPPORTED).
_TID = {name: i for i, name in enumerate(SUPPORTED)}

QK_K = 256  # elements in a k-quant super-block
QK_LEGACY = 32  # elements in a legacy (Q4_0 ... Q8_0, IQ4_NL) block

# fp16 -> fp32 for all 65536 bit patterns (ggml keeps the same table). Exact: every fp16,
# subnormals, inf and NaN included, is representable in fp32.
_FP16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

# The 16 non-uniform levels of IQ4_NL / IQ4_XS (ggml's kvalues_iq4nl): denser near 0, where
# Gaussian-like weights concentrate.
IQ4_LEVELS = blocktypes.IQ4_LEVELS  # defined once, in qlearn.blocktypes
_IQ4_LEVELS_F32 = IQ4_LEVELS.astype(np.float32)


def _qtype_name(qtype) -> str:
    """Accept "Q4_K", "q4_k" or a ``gguf.GGMLQuantizationType``; return the canonical name."""
    name = getattr(qtype, "name", qtype)
    if not isinstance(name, str):
        raise ValueError(f"qtype must be a type name such as 'Q4_K' or a gguf.GGMLQuantizationType, got {qtype!r}")
    up = name.upper()
    if up not in _TID:
        raise ValueError(f"unknown or unsupported qtype {qtype!r}: expected one of {', '.join(SUPPORTED)}")
    return up


def block_info(qtype) -> tuple[int, int]:
    """Return ``(block_size, type_size)``: elements per block and bytes per block of ``qtype``
    (from :mod:`qlearn.blocktypes`, checked against gguf's registry by the tests)."""
    return blocktypes.block_info(_qtype_name(qtype))


# --------------------------------------------------------------------------------------------
# Per-row dequantizers. src: (row_bytes,) uint8, dst: (cols,) float32, lut: fp16 table.
# The arithmetic order of each line is ggml's (dequantize_row_<t> in ggml-quants.c).
#
# Speed note: every inner loop runs ``range(n32)`` where ``n32`` is the number 32 passed in at
# run time (:data:`_N32`). With a literal 32, LLVM fully unrolls the loop first and its
# straight-line (SLP) vectorizer then gives up, because it cannot prove that the uint8 input and
# the float32 output do not overlap. With a run-time trip count the loop vectorizer handles it
# and adds one cheap overlap check per loop: 2-4x faster, same bits. Sub-blocks of 16 elements
# (Q2_K, Q3_K, Q6_K) are done 32 at a time, picking the scale of each half with a select.
# --------------------------------------------------------------------------------------------

_f32 = np.float32
_N32 = 32  # the loop length handed to the kernels at run time (see the speed note above)


@njit(cache=True, inline="always")
def _fp16(src, o, lut):
    """fp16 (little-endian) at byte offset o of src, as float32."""
    return lut[np.int64(src[o]) | (np.int64(src[o + 1]) << 8)]


@njit(cache=True, inline="always")
def _u32(src, o):
    """uint32 (little-endian) at byte offset o of src."""
    return (np.uint32(src[o]) | (np.uint32(src[o + 1]) << 8)
            | (np.uint32(src[o + 2]) << 16) | (np.uint32(src[o + 3]) << 24))


@njit(cache=True)
def _row_q4_0(src, dst, lut, n32):
    for i in range(dst.shape[0] // 32):
        o = i * 18
        d = _fp16(src, o, lut)
        for l in range(n32 // 2):
            b = np.int32(src[o + 2 + l])
            dst[32 * i + l] = _f32((b & 15) - 8) * d
            dst[32 * i + 16 + l] = _f32((b >> 4) - 8) * d


@njit(cache=True)
def _row_q4_1(src, dst, lut, n32):
    for i in range(dst.shape[0] // 32):
        o = i * 20
        d = _fp16(src, o, lut)
        m = _fp16(src, o + 2, lut)
        for l in range(n32 // 2):
            b = np.int32(src[o + 4 + l])
            dst[32 * i + l] = _f32(b & 15) * d + m
            dst[32 * i + 16 + l] = _f32(b >> 4) * d + m


@njit(cache=True)
def _row_q5_0(src, dst, lut, n32):
    for i in range(dst.shape[0] // 32):
        o = i * 22
        d = _fp16(src, o, lut)
        qh = _u32(src, o + 2)
        for l in range(n32 // 2):
            b = np.int32(src[o + 6 + l])
            h0 = np.int32((qh >> l) & 1) << 4
            h1 = np.int32((qh >> (l + 16)) & 1) << 4
            dst[32 * i + l] = _f32(((b & 15) | h0) - 16) * d
            dst[32 * i + 16 + l] = _f32(((b >> 4) | h1) - 16) * d


@njit(cache=True)
def _row_q5_1(src, dst, lut, n32):
    for i in range(dst.shape[0] // 32):
        o = i * 24
        d = _fp16(src, o, lut)
        m = _fp16(src, o + 2, lut)
        qh = _u32(src, o + 4)
        for l in range(n32 // 2):
            b = np.int32(src[o + 8 + l])
            h0 = np.int32((qh >> l) & 1) << 4
            h1 = np.int32((qh >> (l + 16)) & 1) << 4
            dst[32 * i + l] = _f32((b & 15) | h0) * d + m
            dst[32 * i + 16 + l] = _f32((b >> 4) | h1) * d + m


@njit(cache=True)
def _row_q8_0(src, dst, lut, n32):
    for i in range(dst.shape[0] // 32):
        o = i * 34
        d = _fp16(src, o, lut)
        for l in range(n32):
            dst[32 * i + l] = _f32(np.int8(src[o + 2 + l])) * d


@njit(cache=True)
def _row_iq4_nl(src, dst, lut, n32):
    levels = _IQ4_LEVELS_F32
    for i in range(dst.shape[0] // 32):
        o = i * 18
        d = _fp16(src, o, lut)
        for l in range(n32 // 2):
            b = np.int32(src[o + 2 + l])
            dst[32 * i + l] = d * levels[b & 15]
            dst[32 * i + 16 + l] = d * levels[b >> 4]


@njit(cache=True)
def _row_q2_k(src, dst, lut, n32):
    for i in range(dst.shape[0] // QK_K):
        o = i * 84
        d = _fp16(src, o + 80, lut)
        dmin = _fp16(src, o + 82, lut)
        for h in range(2):  # two halves of 128 elements, 32 qs bytes each
            for s in range(4):  # 2-bit plane s of those bytes: 32 elements, two 16-element sub-blocks
                j = 8 * h + 2 * s
                sc0 = np.int32(src[o + j])
                sc1 = np.int32(src[o + j + 1])
                dl0 = d * _f32(sc0 & 15)
                ml0 = dmin * _f32(sc0 >> 4)
                dl1 = d * _f32(sc1 & 15)
                ml1 = dmin * _f32(sc1 >> 4)
                base = o + 16 + 32 * h
                out = QK_K * i + 128 * h + 32 * s
                for l in range(n32):
                    qv = _f32((np.int32(src[base + l]) >> (2 * s)) & 3)
                    dst[out + l] = (dl0 * qv - ml0) if l < 16 else (dl1 * qv - ml1)


@njit(cache=True, inline="always")
def _q3_k_scale(src, so, j):
    """6-bit scale of sub-block j (0..15) of a Q3_K block whose scales start at byte so."""
    if j < 8:
        low = np.int32(src[so + j]) & 15
    else:
        low = np.int32(src[so + j - 8]) >> 4
    high = (np.int32(src[so + 8 + (j % 4)]) >> (2 * (j // 4))) & 3
    return low | (high << 4)


@njit(cache=True)
def _row_q3_k(src, dst, lut, n32):
    for i in range(dst.shape[0] // QK_K):
        o = i * 110
        d = _fp16(src, o + 108, lut)
        for h in range(2):
            for s in range(4):
                hbit = 4 * h + s  # bit of hmask[l] holding the high bit of these 32 elements
                j = 8 * h + 2 * s
                dl0 = d * _f32(_q3_k_scale(src, o + 96, j) - 32)
                dl1 = d * _f32(_q3_k_scale(src, o + 96, j + 1) - 32)
                base = o + 32 + 32 * h
                out = QK_K * i + 128 * h + 32 * s
                for l in range(n32):
                    q2 = (np.int32(src[base + l]) >> (2 * s)) & 3
                    hm = (np.int32(src[o + l]) >> hbit) & 1
                    qv = _f32(q2 - 4 + 4 * hm)
                    dst[out + l] = (dl0 if l < 16 else dl1) * qv


@njit(cache=True, inline="always")
def _k4_scale_min(src, so, j):
    """(6-bit scale, 6-bit min) of sub-block j (0..7), Q4_K/Q5_K packing starting at byte so."""
    if j < 4:
        sc = np.int32(src[so + j]) & 63
        m = np.int32(src[so + j + 4]) & 63
    else:
        sc = (np.int32(src[so + j + 4]) & 15) | ((np.int32(src[so + j - 4]) >> 6) << 4)
        m = (np.int32(src[so + j + 4]) >> 4) | ((np.int32(src[so + j]) >> 6) << 4)
    return sc, m


@njit(cache=True)
def _row_q4_k(src, dst, lut, n32):
    for i in range(dst.shape[0] // QK_K):
        o = i * 144
        d = _fp16(src, o, lut)
        dmin = _fp16(src, o + 2, lut)
        for j in range(8):
            sc, m = _k4_scale_min(src, o + 4, j)
            d1 = d * _f32(sc)
            m1 = dmin * _f32(m)
            base = o + 16 + 32 * (j // 2)
            shift = 4 * (j % 2)
            out = QK_K * i + 32 * j
            for l in range(n32):
                dst[out + l] = d1 * _f32((np.int32(src[base + l]) >> shift) & 15) - m1


@njit(cache=True)
def _row_q5_k(src, dst, lut, n32):
    for i in range(dst.shape[0] // QK_K):
        o = i * 176
        d = _fp16(src, o, lut)
        dmin = _fp16(src, o + 2, lut)
        for j in range(8):
            sc, m = _k4_scale_min(src, o + 4, j)
            d1 = d * _f32(sc)
            m1 = dmin * _f32(m)
            base = o + 48 + 32 * (j // 2)
            shift = 4 * (j % 2)
            out = QK_K * i + 32 * j
            for l in range(n32):
                q = ((np.int32(src[base + l]) >> shift) & 15) | (((np.int32(src[o + 16 + l]) >> j) & 1) << 4)
                dst[out + l] = d1 * _f32(q) - m1


@njit(cache=True)
def _row_q6_k(src, dst, lut, n32):
    for i in range(dst.shape[0] // QK_K):
        o = i * 210
        d = _fp16(src, o + 208, lut)
        for h in range(2):
            for s in range(4):
                j = 8 * h + 2 * s
                dl0 = d * _f32(np.int8(src[o + 192 + j]))
                dl1 = d * _f32(np.int8(src[o + 193 + j]))
                lo_base = o + 64 * h + 32 * (s % 2)
                hi_base = o + 128 + 32 * h
                lo_shift = 4 * (s // 2)
                out = QK_K * i + 128 * h + 32 * s
                for l in range(n32):
                    low4 = (np.int32(src[lo_base + l]) >> lo_shift) & 15
                    high2 = (np.int32(src[hi_base + l]) >> (2 * s)) & 3
                    dst[out + l] = (dl0 if l < 16 else dl1) * _f32((low4 | (high2 << 4)) - 32)


@njit(cache=True)
def _row_iq4_xs(src, dst, lut, n32):
    levels = _IQ4_LEVELS_F32
    for i in range(dst.shape[0] // QK_K):
        o = i * 136
        d = _fp16(src, o, lut)
        scales_h = np.int32(src[o + 2]) | (np.int32(src[o + 3]) << 8)
        for ib in range(8):
            ls = ((np.int32(src[o + 4 + ib // 2]) >> (4 * (ib % 2))) & 15) | (((scales_h >> (2 * ib)) & 3) << 4)
            dl = d * _f32(ls - 32)
            base = o + 8 + 16 * ib
            out = QK_K * i + 32 * ib
            for l in range(n32 // 2):
                b = np.int32(src[base + l])
                dst[out + l] = dl * levels[b & 15]
                dst[out + 16 + l] = dl * levels[b >> 4]


@njit(cache=True)
def _dequant_row(tid, src, dst, lut, n32):
    if tid == 0:
        _row_q4_0(src, dst, lut, n32)
    elif tid == 1:
        _row_q4_1(src, dst, lut, n32)
    elif tid == 2:
        _row_q5_0(src, dst, lut, n32)
    elif tid == 3:
        _row_q5_1(src, dst, lut, n32)
    elif tid == 4:
        _row_q8_0(src, dst, lut, n32)
    elif tid == 5:
        _row_q2_k(src, dst, lut, n32)
    elif tid == 6:
        _row_q3_k(src, dst, lut, n32)
    elif tid == 7:
        _row_q4_k(src, dst, lut, n32)
    elif tid == 8:
        _row_q5_k(src, dst, lut, n32)
    elif tid == 9:
        _row_q6_k(src, dst, lut, n32)
    elif tid == 10:
        _row_iq4_nl(src, dst, lut, n32)
    else:
        _row_iq4_xs(src, dst, lut, n32)


@njit(cache=True, parallel=True)
def _dequant_parallel(q, tid, out, lut, n32):
    for r in prange(q.shape[0]):
        _dequant_row(tid, q[r], out[r], lut, n32)


@njit(cache=True)
def _dequant_serial(q, tid, out, lut, n32):
    for r in range(q.shape[0]):
        _dequant_row(tid, q[r], out[r], lut, n32)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_q(q, qtype) -> tuple[str, np.ndarray, int]:
    """Validate the quantized bytes; return (name, q as C-contiguous 2-D uint8, cols)."""
    name = _qtype_name(qtype)
    bs, ts = block_info(name)
    if isinstance(q, (bytes, bytearray, memoryview)):
        q = np.frombuffer(q, dtype=np.uint8)
    if not isinstance(q, np.ndarray):
        raise ValueError(f"q must be a numpy uint8 array of {name} block bytes, got {type(q).__name__}")
    if q.dtype != np.uint8:
        raise ValueError(
            f"q must hold the raw {name} block bytes as uint8, got dtype {q.dtype} "
            "(view the buffer with .view(np.uint8) if it is the right bytes)"
        )
    if q.ndim == 1:
        q = q.reshape(1, -1)
    if q.ndim != 2 or q.shape[0] == 0:
        raise ValueError(f"q must be (rows, row_bytes) uint8 with at least one row, got shape "
                         f"{q.shape}")
    row_bytes = q.shape[1]
    if row_bytes == 0 or row_bytes % ts != 0:
        raise ValueError(
            f"{name} rows must be a positive multiple of {ts} bytes (one {bs}-element block), "
            f"got {row_bytes} bytes per row (were these bytes produced for another type?)"
        )
    return name, np.ascontiguousarray(q), row_bytes // ts * bs


def dequantize(q, qtype, *, parallel: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """Dequantize GGUF block bytes to float32, bit-identical to ggml's ``dequantize_row_<t>``.

    q: (rows, row_bytes) uint8, the block bytes of one tensor (a 1-D array is one row).
    qtype: a name in :data:`SUPPORTED` or a ``gguf.GGMLQuantizationType``.
    parallel: True runs rows in parallel over numba's threads; False is single-threaded.
    out: optional (rows, cols) float32 C-contiguous array to write into (saves the allocation
        and its page faults when called in a loop).
    Returns (rows, cols) float32, cols = row_bytes // type_size * block_size.
    """
    name, q, cols = _check_q(q, qtype)
    shape = (q.shape[0], cols)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape
              and out.flags.c_contiguous):
        raise ValueError(
            f"out must be a C-contiguous float32 array of shape {shape}, got "
            f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
        )
    kernel = _dequant_parallel if parallel else _dequant_serial
    kernel(q, _TID[name], out, _FP16_TO_F32, _N32)
    return out


# --------------------------------------------------------------------------------------------
# Activation quantizers of ggml's CPU matvec (the "vec_dot_type" of each weight type)
# --------------------------------------------------------------------------------------------

Q8_MAX = 127  # largest int8 code used: symmetric [-127, 127], so -x quantizes to -q


def _check_x(x, cols: int, what: str = "x") -> np.ndarray:
    x = validate.float32_array(x, what, shape_doc=f"of shape ({cols},)", finite=False,
                               allow_empty=True)
    if x.ndim != 1 or x.shape[0] != cols:
        raise ValueError(
            f"{what} must have shape ({cols},) to match the matrix's {cols} columns, got {x.shape}"
        )
    return validate.float32_array(x, what)


def _check_activations(x, block: int, qtype: str) -> np.ndarray:
    """A finite, non-empty 1-D float32 numpy vector whose length is a multiple of ``block``."""
    x = validate.float32_array(x, "x", shape_doc=f"({qtype} quantizes a vector)", finite=False,
                               allow_empty=True)
    if x.ndim != 1 or x.shape[0] == 0 or x.shape[0] % block:
        raise ValueError(f"{qtype} needs a 1-D float32 vector whose length is a positive "
                         f"multiple of {block}, got shape {x.shape}")
    return validate.float32_array(x, "x")


def quantize_q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize activations to ggml's Q8_K (``quantize_row_q8_K_ref``): 256-element blocks.

    x: (n,) float32, n a multiple of 256.
    Returns ``qs: (n,) int8``, ``d: (n // 256,) float32`` (kept in float32, not fp16) and
    ``bsums: (n // 16,) int16`` (sum of each 16 codes, so a k-quant's min term costs one
    multiply per sub-block). Per block, with ``m`` the first entry of largest magnitude:
    ``iscale = -127 / m``, ``q = min(127, round_half_even(iscale * x))``, ``d = 1 / iscale``.
    (The minus sign is ggml's: it maps the extreme to -127 so no code is -128.)
    """
    x = _check_activations(x, QK_K, "Q8_K")
    xb = x.reshape(-1, QK_K)
    ax = np.abs(xb)
    first = np.argmax(ax, axis=1)  # strict '>' in ggml: the first largest |x| wins
    mx = xb[np.arange(xb.shape[0]), first]
    nz = mx != 0
    iscale = np.zeros(xb.shape[0], dtype=np.float32)
    iscale[nz] = np.float32(-Q8_MAX) / mx[nz]
    v = np.rint(iscale[:, None] * xb)  # float32 product, ties to even (ggml's nearest_int)
    qs = np.minimum(v, Q8_MAX).astype(np.int8)
    d = np.zeros(xb.shape[0], dtype=np.float32)
    d[nz] = np.float32(1) / iscale[nz]
    bsums = qs.reshape(-1, 16).astype(np.int16).sum(axis=1, dtype=np.int16)
    return qs.reshape(-1), d, bsums


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize activations to ggml's Q8_0 (``quantize_row_q8_0_ref``): 32-element blocks.

    x: (n,) float32, n a multiple of 32.
    Returns ``qs: (n,) int8`` and ``d: (n // 32,) float32`` holding the fp16-rounded scale
    (the value the dot product reads back). ``d = max|x| / 127``, ``q = roundf(x * (1/d))``
    with ties away from zero. Identical to ``gguf.quants.quantize(x, Q8_0)``.
    """
    x = _check_activations(x, QK_LEGACY, "Q8_0")
    xb = x.reshape(-1, QK_LEGACY)
    d = np.abs(xb).max(axis=1) / np.float32(Q8_MAX)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (xb * idv[:, None]).astype(np.float64)  # float32 product, then exact float64 rounding
    qs = np.trunc(v + np.copysign(0.5, v)).astype(np.int8)  # roundf: ties away from zero
    d16 = d.astype(np.float16).astype(np.float32)
    return qs.reshape(-1), d16


# --------------------------------------------------------------------------------------------
# Fused matvec kernels, q8 activations. Integer dot products per sub-block, as ggml's
# vec_dot_<t>_q8_<K|0>. The int16 casts tell LLVM the products fit 16 bits (|4-bit code *
# int8| <= 15*127, |6-bit code * int8| <= 32*128): numba otherwise computes integers in 64
# bits, and 16-bit SIMD multiplies (vpmaddwd / vpdpwssd) are 2-5x faster than 64-bit ones.
#
# What was timed (4096 x 4096, one thread, CPU time, ratios to a torch float32 matvec in the
# same run; session 3 on an AVX-512 VNNI EPYC):
# - Q4_K: the vector work (codes x activations) costs ~0.38 ms; unpacking the 6-bit scales and
#   mins one at a time (eight calls of _k4_scale_min) and summing pairs of 16-bsums cost more
#   than that. Reading the 12 scale bytes as three uint32 words and unpacking four 6-bit
#   fields per word with masks (ggml's kmask trick, :func:`_k4_unpack`), with the activation
#   sums per 32 precomputed once per vector (``bs32``), took it from ~2.9x to ~4.3x torch.
#   Two rows per pass (sharing the activation loads) gained < 5 %: not kept.
# - Q6_K: one int32 sum per super-block with every product scaled in-lane (the scale of each
#   16-element half picked with a select), instead of four sums reduced per half: 1.4x -> 1.65x.
# - Q8_0: per-block horizontal reductions dominate; float per-lane accumulators, two blocks
#   per pass, and pairs of products were all slower (0.2x-1.4x) in numba's codegen than the
#   plain loop with a run-time trip count kept here (~2.1x).
# About twenty further loop shapes were timed in session 2 (literal vs run-time trip
# counts, accumulator counts); LLVM vectorizes each differently.
# --------------------------------------------------------------------------------------------

_i16 = np.int16
_i32 = np.int32
_u32t = np.uint32
# ggml's masks for the 12 packed scale bytes of Q4_K/Q5_K (get_scale_min_k4 as word operations)
_KMASK1 = 0x3F3F3F3F  # low 6 bits of each byte: scales / mins 0-3
_KMASK2 = 0x0F0F0F0F  # low 4 bits of each byte: the low part of scales / mins 4-7
_KMASK3 = 0x03030303  # 2 bits per byte: the high part of scales / mins 4-7


@njit(cache=True, inline="always")
def _byte(u, k):
    """Byte k (0..3) of the uint32 u, as int16."""
    return _i16((u >> _u32t(8 * k)) & _u32t(255))


@njit(cache=True, inline="always")
def _k4_unpack(src, so):
    """The eight 6-bit scales and eight 6-bit mins of a Q4_K block, scale bytes at so.

    Returns four uint32 words (sc0-3, sc4-7, m0-3, m4-7), one 6-bit value per byte: the same
    fields as :func:`_k4_scale_min`, unpacked four at a time.
    """
    u0 = _u32(src, so)
    u1 = _u32(src, so + 4)
    u2 = _u32(src, so + 8)
    sc_lo = u0 & _u32t(_KMASK1)
    sc_hi = (u2 & _u32t(_KMASK2)) | (((u0 >> _u32t(6)) & _u32t(_KMASK3)) << _u32t(4))
    m_lo = u1 & _u32t(_KMASK1)
    m_hi = ((u2 >> _u32t(4)) & _u32t(_KMASK2)) | (((u1 >> _u32t(6)) & _u32t(_KMASK3)) << _u32t(4))
    return sc_lo, sc_hi, m_lo, m_hi


@njit(cache=True)
def _mv_row_q4_k(src, xq, xd, bs32, lut, n32):
    acc = _f32(0)
    for i in range(xq.shape[0] // QK_K):
        o = i * 144
        sc_lo, sc_hi, m_lo, m_hi = _k4_unpack(src, o + 4)
        k0, k1, k2, k3 = _byte(sc_lo, 0), _byte(sc_lo, 1), _byte(sc_lo, 2), _byte(sc_lo, 3)
        k4, k5, k6, k7 = _byte(sc_hi, 0), _byte(sc_hi, 1), _byte(sc_hi, 2), _byte(sc_hi, 3)
        qs = o + 16
        xo = QK_K * i
        # Byte qs[32c + l] holds elements 64c + l (low nibble, sub-block 2c) and 64c + 32 + l
        # (high nibble, sub-block 2c + 1). Each 4-bit code times its 6-bit scale fits int16
        # (15 * 63), so every term is an int16 x int16 product summed in int32 (vpdpwssd), and
        # one sum covers all eight sub-blocks: a single horizontal reduction per super-block.
        sumi = _i32(0)
        for l in range(32):
            b0 = _i16(src[qs + l])
            b1 = _i16(src[qs + 32 + l])
            b2 = _i16(src[qs + 64 + l])
            b3 = _i16(src[qs + 96 + l])
            sumi = _i32(sumi + _i32(_i16(_i16(b0 & 15) * k0)) * _i32(_i16(xq[xo + l])))
            sumi = _i32(sumi + _i32(_i16(_i16(b0 >> 4) * k1)) * _i32(_i16(xq[xo + 32 + l])))
            sumi = _i32(sumi + _i32(_i16(_i16(b1 & 15) * k2)) * _i32(_i16(xq[xo + 64 + l])))
            sumi = _i32(sumi + _i32(_i16(_i16(b1 >> 4) * k3)) * _i32(_i16(xq[xo + 96 + l])))
            sumi = _i32(sumi + _i32(_i16(_i16(b2 & 15) * k4)) * _i32(_i16(xq[xo + 128 + l])))
            sumi = _i32(sumi + _i32(_i16(_i16(b2 >> 4) * k5)) * _i32(_i16(xq[xo + 160 + l])))
            sumi = _i32(sumi + _i32(_i16(_i16(b3 & 15) * k6)) * _i32(_i16(xq[xo + 192 + l])))
            sumi = _i32(sumi + _i32(_i16(_i16(b3 >> 4) * k7)) * _i32(_i16(xq[xo + 224 + l])))
        # min term: m_j * (sum of the 32 activation codes of sub-block j), sums precomputed
        bo = 8 * i
        summ = (_i32(_byte(m_lo, 0)) * bs32[bo] + _i32(_byte(m_lo, 1)) * bs32[bo + 1]
                + _i32(_byte(m_lo, 2)) * bs32[bo + 2] + _i32(_byte(m_lo, 3)) * bs32[bo + 3]
                + _i32(_byte(m_hi, 0)) * bs32[bo + 4] + _i32(_byte(m_hi, 1)) * bs32[bo + 5]
                + _i32(_byte(m_hi, 2)) * bs32[bo + 6] + _i32(_byte(m_hi, 3)) * bs32[bo + 7])
        acc += xd[i] * (_fp16(src, o, lut) * _f32(sumi) - _fp16(src, o + 2, lut) * _f32(summ))
    return acc


@njit(cache=True, inline="always")
def _q6_code(low, high):
    """A Q6_K weight code in [-32, 31] from its 4 low bits and 2 high bits (int16)."""
    return _i16(_i16(low | (high << 4)) - 32)


@njit(cache=True)
def _mv_row_q6_k(src, xq, xd, bs32, lut, n32):
    acc = _f32(0)
    for i in range(xq.shape[0] // QK_K):
        o = i * 210
        sc = o + 192
        sumi = _i32(0)
        for h in range(2):  # 128 elements: ql[64h:64h+64], qh[32h:32h+32], scales[8h:8h+8]
            a0 = _i16(np.int8(src[sc + 8 * h]))  # scale of sub-block 8h + 2s + half is at
            a1 = _i16(np.int8(src[sc + 8 * h + 1]))  # sc + 8h + 2s + half
            a2 = _i16(np.int8(src[sc + 8 * h + 2]))
            a3 = _i16(np.int8(src[sc + 8 * h + 3]))
            a4 = _i16(np.int8(src[sc + 8 * h + 4]))
            a5 = _i16(np.int8(src[sc + 8 * h + 5]))
            a6 = _i16(np.int8(src[sc + 8 * h + 6]))
            a7 = _i16(np.int8(src[sc + 8 * h + 7]))
            lb = o + 64 * h
            hb = o + 128 + 32 * h
            xh = QK_K * i + 128 * h
            for l in range(32):  # plane s covers elements 128h + 32s + l
                first = l < 16  # which 16-element sub-block (scale) of the plane
                a = _i16(src[lb + l])  # low nibbles of planes s=0 (lo) and s=2 (hi)
                b = _i16(src[lb + 32 + l])  # planes s=1 (lo) and s=3 (hi)
                c = _i16(src[hb + l])  # the 2 high bits of all four planes
                w0 = _q6_code(a & 15, c & 3)
                w1 = _q6_code(b & 15, (c >> 2) & 3)
                w2 = _q6_code(a >> 4, (c >> 4) & 3)
                w3 = _q6_code(b >> 4, (c >> 6) & 3)
                sumi = _i32(sumi + _i32(_i16(w0 * _i16(xq[xh + l]))) * _i32(a0 if first else a1))
                sumi = _i32(sumi + _i32(_i16(w1 * _i16(xq[xh + 32 + l]))) * _i32(a2 if first else a3))
                sumi = _i32(sumi + _i32(_i16(w2 * _i16(xq[xh + 64 + l]))) * _i32(a4 if first else a5))
                sumi = _i32(sumi + _i32(_i16(w3 * _i16(xq[xh + 96 + l]))) * _i32(a6 if first else a7))
        acc += (_fp16(src, o + 208, lut) * xd[i]) * _f32(sumi)
    return acc


@njit(cache=True)
def _mv_row_q8_0(src, xq, xd, bs32, lut, n32):
    acc = _f32(0)
    for i in range(xq.shape[0] // QK_LEGACY):
        o = i * 34
        sumi = _i32(0)
        for l in range(n32):  # run-time trip count: vectorizes here, a literal 32 does not
            sumi = _i32(sumi + _i16(_i16(np.int8(src[o + 2 + l])) * _i16(xq[32 * i + l])))
        acc += _f32(sumi) * (_fp16(src, o, lut) * xd[i])
    return acc


@njit(cache=True)
def _mv_row_q5_0(src, xq, xd, bs32, lut, n32):
    # ggml's vec_dot_q5_0_q8_0: code = (4 low bits | high bit << 4) - 16, in [-16, 15]; the
    # high bits of elements l and 16 + l are bit l % 8 of qh bytes l // 8 and 2 + l // 8
    # (byte-wise shifts: 10 % faster here than shifting the 32-bit word by l)
    acc = _f32(0)
    n16 = n32 // 2
    for i in range(xq.shape[0] // QK_LEGACY):
        o = i * 22
        sumi = _i32(0)
        for l in range(n16):
            b = _i16(src[o + 6 + l])
            h0 = (_i16(src[o + 2 + (l >> 3)]) >> (l & 7)) & 1
            h1 = (_i16(src[o + 4 + (l >> 3)]) >> (l & 7)) & 1
            w0 = _i16(_i16((b & 15) | (h0 << 4)) - 16)
            w1 = _i16(_i16((b >> 4) | (h1 << 4)) - 16)
            sumi = _i32(sumi + _i16(w0 * _i16(xq[32 * i + l])) + _i16(w1 * _i16(xq[32 * i + 16 + l])))
        acc += _f32(sumi) * (_fp16(src, o, lut) * xd[i])
    return acc


@njit(cache=True)
def _mv_row_legacy(src, xq, xd, bs32, lut, n32, bsize, off, has_qh, has_min, zero):
    """Q4_0, Q4_1, Q5_1 (and Q5_0): ``code = nibble | fifth bit << 4`` (5-bit types, bits in
    the uint32 before the nibbles), weight ``d * (code - zero)`` (+ ``m`` for the types with a
    min, whose term is ``m * xd * (sum of the 32 activation codes)``, from ``bs32``)."""
    acc = _f32(0)
    n16 = n32 // 2
    for i in range(xq.shape[0] // QK_LEGACY):
        o = i * bsize
        qh = _u32(src, o + off - 4) if has_qh else _u32t(0)
        sumi = _i32(0)
        for l in range(n16):
            b = _i32(src[o + off + l])
            w0 = ((b & 15) | _i32(((qh >> _u32t(l)) & _u32t(1)) << _u32t(4))) - zero
            w1 = ((b >> 4) | _i32(((qh >> _u32t(l + 16)) & _u32t(1)) << _u32t(4))) - zero
            sumi = _i32(sumi + w0 * _i32(xq[32 * i + l]) + w1 * _i32(xq[32 * i + 16 + l]))
        acc += _f32(sumi) * (_fp16(src, o, lut) * xd[i])
        if has_min:
            acc += (_fp16(src, o + 2, lut) * xd[i]) * _f32(bs32[i])
    return acc


# (bytes per block, offset of the nibbles, 5-bit?, has a min?, zero code) of the legacy types
_LEGACY = {"Q4_0": (18, 2, False, False, 8), "Q4_1": (20, 4, False, True, 0),
           "Q5_1": (24, 8, True, True, 0)}


@njit(cache=True)
def _matvec_legacy_serial(q, xq, xd, bs32, lut, y, n32, bsize, off, has_qh, has_min, zero):
    for r in range(q.shape[0]):
        y[r] = _mv_row_legacy(q[r], xq, xd, bs32, lut, n32, bsize, off, has_qh, has_min, zero)


@njit(cache=True, parallel=True)
def _matvec_legacy_parallel(q, xq, xd, bs32, lut, y, n32, bsize, off, has_qh, has_min, zero):
    for r in prange(q.shape[0]):
        y[r] = _mv_row_legacy(q[r], xq, xd, bs32, lut, n32, bsize, off, has_qh, has_min, zero)


# One driver per type and threading mode: each compiles only when first used, and LLVM
# optimizes each row kernel in its own loop (dispatching on the type inside one shared
# driver made the Q6_K kernel 2x slower).


@njit(cache=True)
def _matvec_q4_k_serial(q, xq, xd, bsums, lut, y, n32):
    for r in range(q.shape[0]):
        y[r] = _mv_row_q4_k(q[r], xq, xd, bsums, lut, n32)


@njit(cache=True, parallel=True)
def _matvec_q4_k_parallel(q, xq, xd, bsums, lut, y, n32):
    for r in prange(q.shape[0]):
        y[r] = _mv_row_q4_k(q[r], xq, xd, bsums, lut, n32)


@njit(cache=True)
def _matvec_q6_k_serial(q, xq, xd, bsums, lut, y, n32):
    for r in range(q.shape[0]):
        y[r] = _mv_row_q6_k(q[r], xq, xd, bsums, lut, n32)


@njit(cache=True, parallel=True)
def _matvec_q6_k_parallel(q, xq, xd, bsums, lut, y, n32):
    for r in prange(q.shape[0]):
        y[r] = _mv_row_q6_k(q[r], xq, xd, bsums, lut, n32)


@njit(cache=True)
def _matvec_q8_0_serial(q, xq, xd, bsums, lut, y, n32):
    for r in range(q.shape[0]):
        y[r] = _mv_row_q8_0(q[r], xq, xd, bsums, lut, n32)


@njit(cache=True, parallel=True)
def _matvec_q8_0_parallel(q, xq, xd, bsums, lut, y, n32):
    for r in prange(q.shape[0]):
        y[r] = _mv_row_q8_0(q[r], xq, xd, bsums, lut, n32)


@njit(cache=True)
def _matvec_q5_0_serial(q, xq, xd, bsums, lut, y, n32):
    for r in range(q.shape[0]):
        y[r] = _mv_row_q5_0(q[r], xq, xd, bsums, lut, n32)


@njit(cache=True, parallel=True)
def _matvec_q5_0_parallel(q, xq, xd, bsums, lut, y, n32):
    for r in prange(q.shape[0]):
        y[r] = _mv_row_q5_0(q[r], xq, xd, bsums, lut, n32)


_MATVEC_Q8 = {
    ("Q4_K", False): _matvec_q4_k_serial, ("Q4_K", True): _matvec_q4_k_parallel,
    ("Q6_K", False): _matvec_q6_k_serial, ("Q6_K", True): _matvec_q6_k_parallel,
    ("Q8_0", False): _matvec_q8_0_serial, ("Q8_0", True): _matvec_q8_0_parallel,
    ("Q5_0", False): _matvec_q5_0_serial, ("Q5_0", True): _matvec_q5_0_parallel,
}


def _numba_kernel(name: str, parallel: bool):
    """The numba matvec of type ``name``: ``f(q, xq, xd, bs32, y)`` writes y (no checks)."""
    if name in _LEGACY:
        drv = _matvec_legacy_parallel if parallel else _matvec_legacy_serial
        args = _LEGACY[name]
        return lambda q, xq, xd, bs32, y: drv(q, xq, xd, bs32, _FP16_TO_F32, y, _N32, *args)
    drv = _MATVEC_Q8[name, bool(parallel)]
    return lambda q, xq, xd, bs32, y: drv(q, xq, xd, bs32, _FP16_TO_F32, y, _N32)


_Q8_0_ACTIVATIONS = ("Q8_0", "Q5_0", "Q4_0", "Q4_1", "Q5_1")  # weight types whose activations are Q8_0 (32-blocks)


@njit(cache=True)
def _quantize_q8_k_into(x, qs, d, bs32):
    """:func:`quantize_q8_k` in one pass (the same float32 operations), plus 32-sums of codes."""
    for i in range(x.shape[0] // QK_K):
        o = QK_K * i
        amax = _f32(0)
        mx = _f32(0)
        for l in range(QK_K):  # first entry of largest magnitude (strict >, as ggml)
            a = abs(x[o + l])
            if a > amax:
                amax = a
                mx = x[o + l]
        if amax == 0:
            d[i] = 0
            for l in range(QK_K):
                qs[o + l] = 0
            for j in range(8):
                bs32[8 * i + j] = 0
            continue
        iscale = _f32(-Q8_MAX) / mx
        for l in range(QK_K):
            qs[o + l] = np.int8(min(np.rint(iscale * x[o + l]), _f32(Q8_MAX)))
        d[i] = _f32(1) / iscale
        for j in range(8):
            t = _i32(0)
            for l in range(32):
                t += _i32(qs[o + 32 * j + l])
            bs32[8 * i + j] = t


@njit(cache=True)
def _quantize_q8_0_codes(x, qs, d, bs32):
    """The codes of :func:`quantize_q8_0` (float32 scale ``d`` before its fp16 rounding) and
    the sum of each block's 32 codes."""
    for i in range(x.shape[0] // QK_LEGACY):
        o = QK_LEGACY * i
        amax = _f32(0)
        for l in range(QK_LEGACY):
            amax = max(amax, abs(x[o + l]))
        di = amax / _f32(Q8_MAX)
        d[i] = di
        idv = _f32(1) / di if di != 0 else _f32(0)
        for l in range(QK_LEGACY):
            v = np.float64(x[o + l] * idv)  # float32 product, then exact float64 rounding
            qs[o + l] = np.int8(np.trunc(v + (0.5 if v >= 0 else -0.5)))  # ties away from zero
        t = _i32(0)
        for l in range(QK_LEGACY):
            t += _i32(qs[o + l])
        bs32[i] = t


def quantize_activations(x: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The activation operand of the q8 matvec of weight type ``qtype`` (no input checks).

    x: (cols,) float32, C-contiguous. Returns ``xq: (cols,) int8``, ``xd: (n_blocks,)
    float32`` and ``bs32: (cols // 32,) int32``, the sum of each 32 activation codes (used by
    the min terms of Q4_K, Q4_1 and Q5_1).
    Same values as :func:`quantize_q8_k` / :func:`quantize_q8_0` (tested, bit for bit), in
    one pass of the compiled quantizer (``qlearn/_ckernels.c``) or, without it, of numba
    instead of ten numpy passes (it runs once per linear and token during decoding).
    """
    from qlearn import _cbuild

    xq = np.empty(x.shape[0], dtype=np.int8)
    bs32 = np.empty(x.shape[0] // 32, dtype=np.int32)
    q8_0 = qtype in _Q8_0_ACTIVATIONS
    xd = np.empty(x.shape[0] // (QK_LEGACY if q8_0 else QK_K), dtype=np.float32)
    lib = _cbuild.load()
    if lib is not None:
        lib.qlearn_quantize_q8(ACT_KIND[q8_0], x.ctypes.data, x.shape[0], xq.ctypes.data,
                               xd.ctypes.data, bs32.ctypes.data)
        return xq, xd, bs32
    return _quantize_activations_numba(x, q8_0, xq, xd, bs32)


ACT_KIND = {False: 0, True: 1}  # Q8_K, Q8_0: the activation format ids of the C quantizer


def _quantize_activations_numba(x, q8_0, xq, xd, bs32):
    if q8_0:
        _quantize_q8_0_codes(x, xq, xd, bs32)
        return xq, xd.astype(np.float16).astype(np.float32), bs32
    _quantize_q8_k_into(x, xq, xd, bs32)
    return xq, xd, bs32


# --------------------------------------------------------------------------------------------
# Backends of the q8 matvec: the compiled C kernels (qlearn/_ckernels.c, built at first use by
# qlearn._cbuild with the system compiler) when a compiler is there, else the numba kernels
# above. Both compute the same exact integer block sums; they differ in float32 summation order.
# --------------------------------------------------------------------------------------------

BACKENDS = ("c", "numba")


def backend() -> str:
    """Which q8 matvec backend runs by default: "c" (the compiled kernels of
    ``qlearn/_ckernels.c``) or "numba" (no C compiler, a failed build, or ``QLEARN_NO_CC=1``).
    :func:`backend_info` says why and which SIMD path was compiled."""
    from qlearn import _cbuild

    return "c" if _cbuild.load() is not None else "numba"


def backend_info() -> dict:
    """``{"backend": "c" | "numba", "simd": ..., "path": ..., "compiler": ..., "flags": ...}``
    for the compiled kernels, or ``{"backend": "numba", "reason": ...}``."""
    from qlearn import _cbuild

    return {"backend": backend(), **_cbuild.status()}


def _threads(parallel: bool) -> int:
    return numba.get_num_threads() if parallel else 1


def _c_kernel(lib, name: str, parallel: bool):
    """The C matvec of type ``name`` as ``f(q, xq, xd, bs32, y)`` (no checks: callers validate
    shapes and dtypes, the C code trusts them)."""
    fn, tid, nthreads = lib.qlearn_matvec, _TID[name], _threads(parallel)
    bs = block_info(name)[0]

    def run(q, xq, xd, bs32, y):
        cols = xq.shape[0]
        rc = fn(tid, q.ctypes.data, q.shape[0], q.shape[1], cols, xq.ctypes.data, xd.ctypes.data,
                bs32.ctypes.data, y.ctypes.data, nthreads)
        if rc != 0:  # not reachable with validated inputs; never return garbage silently
            raise RuntimeError(f"qlearn C matvec failed with code {rc} for {name} ({bs}-blocks)")
    return run


def fused_kernel(qtype, *, parallel: bool = False, backend: str | None = None):
    """The raw q8 matvec of ``qtype`` as ``f(q, xq, xd, bs32, y)``: q (rows, row_bytes) uint8
    C-contiguous, ``xq, xd, bs32`` from :func:`quantize_activations`, y (rows,) float32 written
    in place. No input checks (the model's linears validate once, then call it per token).
    backend: "c", "numba" or None (the default of :func:`backend`).
    """
    from qlearn import _cbuild

    name = _qtype_name(qtype)
    if name not in MATVEC_TYPES:
        raise ValueError(f"the q8-activation matvec supports {', '.join(MATVEC_TYPES)}, got {name}")
    if backend not in (None,) + BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend in (None, "c"):
        lib = _cbuild.load()
        if lib is not None:
            return _c_kernel(lib, name, parallel)
        if backend == "c":
            raise ValueError(f"the C backend is not available: {_cbuild.status()['reason']}")
    return _numba_kernel(name, parallel)


def _matvec_q8(q: np.ndarray, qtype: str, x: np.ndarray, parallel: bool = False,
               y: np.ndarray | None = None, backend: str | None = None) -> np.ndarray:
    """:func:`matvec` with q8 activations, without input checks (callers have validated)."""
    if y is None:
        y = np.empty(q.shape[0], dtype=np.float32)
    xq, xd, bs32 = quantize_activations(x, qtype)
    fused_kernel(qtype, parallel=parallel, backend=backend)(q, xq, xd, bs32, y)
    return y


# --------------------------------------------------------------------------------------------
# Matvec with float32 activations: dequantize a tile of rows (exact ggml values) into a small
# buffer that stays in cache, then a BLAS float32 matvec on the tile. W is never materialised.
# --------------------------------------------------------------------------------------------

F32_TILE_BYTES = 1 << 20  # float32 tile size: 1 MiB stays in a core's L2 cache between the two passes


ACTIVATIONS = ("q8", "f32")


def matvec(q, qtype, x: np.ndarray, *, activations: str = "q8", parallel: bool = False,
           backend: str | None = None) -> np.ndarray:
    """Fused dequantize-and-multiply ``y = W @ x`` without materialising W in float32.

    q: (rows, row_bytes) uint8, the GGUF bytes of W: (rows, cols).
    qtype: a type in :data:`MATVEC_TYPES` (Q4_K, Q6_K, Q8_0, Q5_0, Q4_0, Q4_1, Q5_1; with
        ``activations="f32"`` every type in SUPPORTED).
    x: (cols,) float32, finite.
    Returns y: (rows,) float32.

    Activations. ``activations="q8"`` (default) is what llama.cpp's CPU backend does: x is first
    quantized to 8 bits (Q8_K blocks of 256 for Q4_K and Q6_K, Q8_0 blocks of 32 for Q8_0; see
    :func:`quantize_q8_k`, :func:`quantize_q8_0`), then every sub-block's dot product is an
    integer sum of (weight code) x (activation code), scaled once per (sub-)block. Integer
    multiply-adds are narrower and cheaper than float ones (16-bit lanes), the activation
    quantization costs microseconds for a 4096-vector, and the min term of Q4_K becomes
    ``m_j * sum(activation codes)``, precomputed once per vector (``bsums``). The price is a
    second rounding: each activation moves by at most half its block's step (max|x| / 254), so
    ``|y_q8 - W @ x| <= sum_i |W_i| * step_i / 2`` plus float32 rounding. The result is not
    bit-identical to a particular llama.cpp build (ggml's SIMD kernels order the float32 sums
    differently and its AVX Q8_0 activation quantizer rounds ties to even), but each block's
    integer sum is exact.

    ``activations="f32"`` keeps x in float32: tiles of rows are dequantized to their exact ggml
    values in a cache-sized buffer and multiplied by x with a float32 BLAS matvec. No
    activation error, but it writes and re-reads 4 bytes per weight.

    parallel: rows split over ``numba.get_num_threads()`` threads (True) or one thread (False,
        the default: one 4096x4096 product takes well under a millisecond, the scale at which
        waking threads on a shared machine can cost more than it saves).
    backend: for q8 activations, "c" (the compiled kernels of ``qlearn/_ckernels.c``), "numba"
        (the numba kernels of this module) or None: "c" when it could be built (see
        :func:`backend`). Both give the same exact integer block sums; the float32 sums of the
        scaled blocks are added in a different order (agreement within float32 rounding).

    Speed (4096 x 4096, one thread, AVX-512 EPYC, see ``benchmarks/bench_kquants.py``): the
    numba kernels are about 4x (Q4_K), 2x (Q8_0) and 1.6x (Q6_K) faster than a float32 ``torch``
    matvec on the same matrix (they read 4.5, 8.5 and 6.6 bits per weight instead of 32). The
    C kernels keep each block's partial sums in vector lanes (``maddubs`` / ``vpdpbusd`` +
    ``vpdpwssd`` with the scales, the pattern of ggml's hand-written SIMD), which LLVM does not
    generate from the numba loops; the benchmark prints both.
    """
    name, q, cols = _check_q(q, qtype)
    x = _check_x(x, cols)
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    y = np.empty(q.shape[0], dtype=np.float32)
    tid = _TID[name]
    if activations == "q8":
        if name not in MATVEC_TYPES:
            raise ValueError(
                f"the q8-activation matvec supports {', '.join(MATVEC_TYPES)}, got {name} "
                "(use activations='f32', or dequantize() and a float matmul)"
            )
        _matvec_q8(q, name, x, parallel, y, backend)
    else:
        tile = max(1, F32_TILE_BYTES // (4 * cols))
        buf = np.empty((min(tile, q.shape[0]), cols), dtype=np.float32)
        kernel = _dequant_parallel if parallel else _dequant_serial
        for r0 in range(0, q.shape[0], tile):
            r1 = min(q.shape[0], r0 + tile)
            w = buf[: r1 - r0]
            kernel(q[r0:r1], tid, w, _FP16_TO_F32, _N32)
            np.dot(w, x, out=y[r0:r1])
    return y


def _q4_k_fields(q: np.ndarray):
    """Split Q4_K bytes (rows, n_sb * 144) into their fields, one 6-bit value per entry.

    Returns ``d, dmin: (rows, n_sb) float64``, ``sc, m: (rows, n_sb, 8) int64`` (sub-block
    scales and mins) and ``codes: (rows, n_sb, 8, 32) int64`` (4-bit codes, sub-block-major).
    """
    rows = q.shape[0]
    b = q.reshape(rows, -1, 144)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    dmin = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    s = b[..., 4:16].astype(np.int64)  # 12 packed bytes: 8 scales and 8 mins of 6 bits
    sc = np.empty(s.shape[:-1] + (8,), dtype=np.int64)
    m = np.empty_like(sc)
    for j in range(4):  # sub-blocks 0-3: low 6 bits of bytes j and j + 4
        sc[..., j] = s[..., j] & 63
        m[..., j] = s[..., j + 4] & 63
    for j in range(4, 8):  # 4-7: 4 bits from byte j + 4, 2 high bits from the top of bytes j-4, j
        sc[..., j] = (s[..., j + 4] & 15) | ((s[..., j - 4] >> 6) << 4)
        m[..., j] = (s[..., j + 4] >> 4) | ((s[..., j] >> 6) << 4)
    qs = b[..., 16:144].astype(np.int64).reshape(rows, -1, 4, 32)
    # byte 32c + l: low nibble -> sub-block 2c, high nibble -> sub-block 2c + 1
    codes = np.stack([qs & 15, qs >> 4], axis=3).reshape(rows, -1, 8, 32)
    return d, dmin, sc, m, codes


def matvec_reference(q, qtype, x: np.ndarray) -> np.ndarray:
    """Readable numpy version of ``matvec(q, qtype, x)`` (q8 activations), in float64.

    q: (rows, row_bytes) uint8; qtype in :data:`MATVEC_TYPES`; x: (cols,) float32.
    Returns y: (rows,) float64.

    Q4_K is written out the way the fast kernel computes it: per super-block i and sub-block j,
    an exact integer sum ``sumi[i, j] = codes . xq`` and the activation codes' sum
    ``bsum[i, j]``, then ``y = sum_i xd_i * (d_i * sum_j sc_ij sumi_ij - dmin_i * sum_j m_ij bsum_ij)``.
    The other types use the equivalent form ``dequantize(q) @ (xq * xd)`` in float64. The fast
    kernels accumulate the same exact integer sums and differ only in float32 rounding of the
    scale products (see ``tests/test_kernels.py`` for the tolerance).
    """
    name, q, cols = _check_q(q, qtype)
    x = _check_x(x, cols)
    if name not in MATVEC_TYPES:
        raise ValueError(f"matvec_reference supports {', '.join(MATVEC_TYPES)}, got {name}")
    if name == "Q4_K":
        xq, xd, _ = quantize_q8_k(x)
        xq = xq.astype(np.int64).reshape(-1, 8, 32)  # (n_sb, 8 sub-blocks, 32)
        d, dmin, sc, m, codes = _q4_k_fields(q)
        sumi = (codes * xq).sum(axis=-1)  # (rows, n_sb, 8) exact integer dot products
        bsum = xq.sum(axis=-1)  # (n_sb, 8) activation-code sums for the min term
        per_sb = d * (sc * sumi).sum(-1) - dmin * (m * bsum).sum(-1)  # (rows, n_sb)
        return per_sb @ xd.astype(np.float64)
    if name in _Q8_0_ACTIVATIONS:
        xq, xd = quantize_q8_0(x)
        bs = QK_LEGACY
    else:
        xq, xd, _ = quantize_q8_k(x)
        bs = QK_K
    xh = xq.astype(np.float64) * np.repeat(xd.astype(np.float64), bs)
    return dequantize(q, name).astype(np.float64) @ xh
