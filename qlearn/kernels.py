"""Numba CPU kernels for GGUF (ggml) block formats: dequantize every type, fused matvec.

The on-disk block layouts are ggml's (see the chapter *GGUF k-quants* and ``qlearn.kquants``).
A quantized matrix is a ``uint8`` array ``q: (rows, row_bytes)`` holding the exact GGUF tensor
bytes, ``row_bytes = cols // block_size * type_size``.

- :func:`dequantize` ``(q, qtype) -> (rows, cols) float32`` for Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K
  Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS. Bit-identical to ggml's ``dequantize_row_<t>``: every
  float32 operation is done in ggml's C source order, rounded separately (``fastmath=False``,
  so LLVM may not fuse a multiply and an add into an FMA).
- :func:`matvec` ``(q, qtype, x) -> (rows,) float32`` for Q4_K, Q6_K and Q8_0, fused: the
  weights are never expanded to a float32 matrix. By default the activations are quantized
  to 8 bits first, exactly as ggml's CPU backend does (see :func:`matvec` for why).

Rows are processed in parallel with numba ``prange``; pass ``parallel=False`` for the
single-threaded kernel (what the benchmark compares against single-threaded C numbers).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

__all__ = [
    "SUPPORTED",
    "MATVEC_TYPES",
    "block_info",
    "dequantize",
    "matvec",
    "quantize_q8_k",
    "quantize_q8_0",
]

# --------------------------------------------------------------------------------------------
# Type table. Block size and bytes per block come from the gguf package (the format's own
# registry), so nothing here can drift from what GGUF files say.
# --------------------------------------------------------------------------------------------

SUPPORTED = (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ4_NL", "IQ4_XS",
)
MATVEC_TYPES = ("Q4_K", "Q6_K", "Q8_0")

# Integer ids the numba driver branches on (index into SUPPORTED).
_TID = {name: i for i, name in enumerate(SUPPORTED)}

QK_K = 256  # elements in a k-quant super-block
QK_LEGACY = 32  # elements in a legacy (Q4_0 ... Q8_0, IQ4_NL) block

# fp16 -> fp32 for all 65536 bit patterns (ggml keeps the same table). Exact: every fp16,
# subnormals, inf and NaN included, is representable in fp32.
_FP16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

# The 16 non-uniform levels of IQ4_NL / IQ4_XS (ggml's kvalues_iq4nl): denser near 0, where
# Gaussian-like weights concentrate.
IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
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
    """Return ``(block_size, type_size)``: elements per block and bytes per block of ``qtype``."""
    import gguf

    name = _qtype_name(qtype)
    bs, ts = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    return int(bs), int(ts)


# --------------------------------------------------------------------------------------------
# Per-row dequantizers. src: (row_bytes,) uint8, dst: (cols,) float32, lut: fp16 table.
# The arithmetic order of each line is ggml's (dequantize_row_<t> in ggml-quants.c).
# --------------------------------------------------------------------------------------------

_f32 = np.float32


@njit(cache=True, inline="always")
def _fp16(src, o, lut):
    """fp16 (little-endian) at byte offset o of src, as float32."""
    return lut[np.int64(src[o]) | (np.int64(src[o + 1]) << 8)]


@njit(cache=True)
def _row_q4_0(src, dst, lut):
    for i in range(dst.shape[0] // 32):
        o = i * 18
        d = _fp16(src, o, lut)
        for l in range(16):
            b = np.int32(src[o + 2 + l])
            dst[32 * i + l] = _f32((b & 15) - 8) * d
            dst[32 * i + 16 + l] = _f32((b >> 4) - 8) * d


@njit(cache=True)
def _row_q4_1(src, dst, lut):
    for i in range(dst.shape[0] // 32):
        o = i * 20
        d = _fp16(src, o, lut)
        m = _fp16(src, o + 2, lut)
        for l in range(16):
            b = np.int32(src[o + 4 + l])
            dst[32 * i + l] = _f32(b & 15) * d + m
            dst[32 * i + 16 + l] = _f32(b >> 4) * d + m


@njit(cache=True, inline="always")
def _u32(src, o):
    return (np.uint32(src[o]) | (np.uint32(src[o + 1]) << 8)
            | (np.uint32(src[o + 2]) << 16) | (np.uint32(src[o + 3]) << 24))


@njit(cache=True)
def _row_q5_0(src, dst, lut):
    for i in range(dst.shape[0] // 32):
        o = i * 22
        d = _fp16(src, o, lut)
        qh = _u32(src, o + 2)
        for l in range(16):
            b = np.int32(src[o + 6 + l])
            h0 = np.int32((qh >> l) & 1) << 4
            h1 = np.int32((qh >> (l + 16)) & 1) << 4
            dst[32 * i + l] = _f32(((b & 15) | h0) - 16) * d
            dst[32 * i + 16 + l] = _f32(((b >> 4) | h1) - 16) * d


@njit(cache=True)
def _row_q5_1(src, dst, lut):
    for i in range(dst.shape[0] // 32):
        o = i * 24
        d = _fp16(src, o, lut)
        m = _fp16(src, o + 2, lut)
        qh = _u32(src, o + 4)
        for l in range(16):
            b = np.int32(src[o + 8 + l])
            h0 = np.int32((qh >> l) & 1) << 4
            h1 = np.int32((qh >> (l + 16)) & 1) << 4
            dst[32 * i + l] = _f32((b & 15) | h0) * d + m
            dst[32 * i + 16 + l] = _f32((b >> 4) | h1) * d + m


@njit(cache=True)
def _row_q8_0(src, dst, lut):
    for i in range(dst.shape[0] // 32):
        o = i * 34
        d = _fp16(src, o, lut)
        for l in range(32):
            dst[32 * i + l] = _f32(np.int8(src[o + 2 + l])) * d


@njit(cache=True)
def _row_iq4_nl(src, dst, lut):
    levels = _IQ4_LEVELS_F32
    for i in range(dst.shape[0] // 32):
        o = i * 18
        d = _fp16(src, o, lut)
        for l in range(16):
            b = np.int32(src[o + 2 + l])
            dst[32 * i + l] = d * levels[b & 15]
            dst[32 * i + 16 + l] = d * levels[b >> 4]


@njit(cache=True)
def _row_q2_k(src, dst, lut):
    for i in range(dst.shape[0] // QK_K):
        o = i * 84
        d = _fp16(src, o + 80, lut)
        dmin = _fp16(src, o + 82, lut)
        for h in range(2):  # two halves of 128 elements, 32 qs bytes each
            for s in range(4):  # 2-bit plane s of those bytes
                for half in range(2):  # 16-element sub-block
                    j = 8 * h + 2 * s + half
                    sc = np.int32(src[o + j])
                    dl = d * _f32(sc & 15)
                    ml = dmin * _f32(sc >> 4)
                    base = o + 16 + 32 * h + 16 * half
                    out = QK_K * i + 128 * h + 32 * s + 16 * half
                    for l in range(16):
                        qv = (np.int32(src[base + l]) >> (2 * s)) & 3
                        dst[out + l] = dl * _f32(qv) - ml


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
def _row_q3_k(src, dst, lut):
    for i in range(dst.shape[0] // QK_K):
        o = i * 110
        d = _fp16(src, o + 108, lut)
        for h in range(2):
            for s in range(4):
                hbit = 4 * h + s  # bit of hmask that holds the high bit of these 32 elements
                for half in range(2):
                    j = 8 * h + 2 * s + half
                    dl = d * _f32(_q3_k_scale(src, o + 96, j) - 32)
                    base = 32 * h + 16 * half
                    out = QK_K * i + 128 * h + 32 * s + 16 * half
                    for l in range(16):
                        q2 = (np.int32(src[o + 32 + base + l]) >> (2 * s)) & 3
                        hm = (np.int32(src[o + 16 * half + l]) >> hbit) & 1
                        dst[out + l] = dl * _f32(q2 - 4 + 4 * hm)


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
def _row_q4_k(src, dst, lut):
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
            for l in range(32):
                dst[out + l] = d1 * _f32((np.int32(src[base + l]) >> shift) & 15) - m1


@njit(cache=True)
def _row_q5_k(src, dst, lut):
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
            for l in range(32):
                q = ((np.int32(src[base + l]) >> shift) & 15) | (((np.int32(src[o + 16 + l]) >> j) & 1) << 4)
                dst[out + l] = d1 * _f32(q) - m1


@njit(cache=True)
def _row_q6_k(src, dst, lut):
    for i in range(dst.shape[0] // QK_K):
        o = i * 210
        d = _fp16(src, o + 208, lut)
        for h in range(2):
            for s in range(4):
                for half in range(2):
                    j = 8 * h + 2 * s + half
                    dl = d * _f32(np.int8(src[o + 192 + j]))
                    lo_base = o + 64 * h + 32 * (s % 2) + 16 * half
                    hi_base = o + 128 + 32 * h + 16 * half
                    lo_shift = 4 * (s // 2)
                    out = QK_K * i + 128 * h + 32 * s + 16 * half
                    for l in range(16):
                        low4 = (np.int32(src[lo_base + l]) >> lo_shift) & 15
                        high2 = (np.int32(src[hi_base + l]) >> (2 * s)) & 3
                        dst[out + l] = dl * _f32((low4 | (high2 << 4)) - 32)


@njit(cache=True)
def _row_iq4_xs(src, dst, lut):
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
            for l in range(16):
                b = np.int32(src[base + l])
                dst[out + l] = dl * levels[b & 15]
                dst[out + 16 + l] = dl * levels[b >> 4]


@njit(cache=True, inline="always")
def _dequant_row(tid, src, dst, lut):
    if tid == 0:
        _row_q4_0(src, dst, lut)
    elif tid == 1:
        _row_q4_1(src, dst, lut)
    elif tid == 2:
        _row_q5_0(src, dst, lut)
    elif tid == 3:
        _row_q5_1(src, dst, lut)
    elif tid == 4:
        _row_q8_0(src, dst, lut)
    elif tid == 5:
        _row_q2_k(src, dst, lut)
    elif tid == 6:
        _row_q3_k(src, dst, lut)
    elif tid == 7:
        _row_q4_k(src, dst, lut)
    elif tid == 8:
        _row_q5_k(src, dst, lut)
    elif tid == 9:
        _row_q6_k(src, dst, lut)
    elif tid == 10:
        _row_iq4_nl(src, dst, lut)
    else:
        _row_iq4_xs(src, dst, lut)


@njit(cache=True, parallel=True)
def _dequant_parallel(q, tid, out, lut):
    for r in prange(q.shape[0]):
        _dequant_row(tid, q[r], out[r], lut)


@njit(cache=True)
def _dequant_serial(q, tid, out, lut):
    for r in range(q.shape[0]):
        _dequant_row(tid, q[r], out[r], lut)


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
    if q.ndim != 2:
        raise ValueError(f"q must be (rows, row_bytes) uint8, got shape {q.shape}")
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
    kernel(q, _TID[name], out, _FP16_TO_F32)
    return out
