"""Exercises of chapter 10, GGUF k-quants. Each check runs the student's code on fresh inputs
and compares it with qlearn.kquants."""
from __future__ import annotations

import numpy as np

from qlearn import kquants as K
from qlearn.exercises import Mismatch, call_student, compare_equal, exercise


def _rng():
    return np.random.default_rng()


@exercise("ch10.nearest_int", hint="add np.float32(12582912.0) (1.5*2**23) in float32, view the result "
                                   "as int32, keep the low 23 bits and subtract 2**22")
def nearest_int(fn):
    """fn(v: float32 array) -> int32 array: ggml's nearest_int (round half to even)."""
    rng = _rng()
    v = np.concatenate([rng.uniform(-1000, 1000, 200), np.arange(-20, 20) + 0.5]).astype(np.float32)
    got = call_student(fn, v.copy(), what="nearest_int(v)")
    compare_equal("nearest_int(v) (ties must go to the even integer)",
                  np.asarray(got).astype(np.int64), K.nearest_int(v).astype(np.int64))


@exercise("ch10.dequantize_q4_0", hint="d is the fp16 in bytes 0:2 (view as '<f2'); element e<16 is the low "
                                       "nibble of byte 2+e, element e>=16 the high nibble of byte 2+e-16; "
                                       "y = (q - 8) * d in float32")
def dequantize_q4_0(fn):
    """fn(block: (18,) uint8) -> (32,) float32."""
    x = (_rng().standard_normal((1, 32)) * 3).astype(np.float32)
    block = K.quantize(x, "Q4_0")[0]
    got = call_student(fn, block.copy(), what="dequantize_q4_0(block)")
    exp = K.dequantize(block[None, :], "Q4_0")[0]
    compare_equal("dequantize_q4_0(block)", np.asarray(got, dtype=np.float32), exp)


@exercise("ch10.scale_min_k4", hint="sub-blocks 0-3: scale = s[j] & 63, min = s[j+4] & 63; sub-blocks 4-7: "
                                    "low 4 bits in s[j+4] (scale low nibble, min high nibble), top 2 bits in "
                                    "s[j-4] >> 6 (scale) and s[j] >> 6 (min)")
def scale_min_k4(fn):
    """fn(scales: (12,) uint8) -> (scales (8,), mins (8,)) ints."""
    x = _rng().standard_normal((1, 256)).astype(np.float32)
    info = K.describe_block(K.quantize(x, "Q4_K"), "Q4_K")
    packed = info["bytes"][4:16].copy()
    got = call_student(fn, packed, what="scale_min_k4(scales)")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Mismatch("scale_min_k4 must return (scales, mins)", "a pair of 8-element arrays", got)
    compare_equal("6-bit scales", np.asarray(got[0]).astype(np.int64), info["sub_scales"].astype(np.int64))
    compare_equal("6-bit mins", np.asarray(got[1]).astype(np.int64), info["sub_mins"].astype(np.int64))


@exercise("ch10.q4k_bpw", hint="count the bits of one super-block: 2 fp16 super-scales, 8 scales and 8 mins "
                               "of 6 bits, 256 codes of 4 bits; divide by 256")
def q4k_bpw(answer):
    """answer: Q4_K bits per weight (a number)."""
    exp = K.QTYPES["Q4_K"].bits_per_weight
    try:
        ok = abs(float(answer) - exp) < 1e-9
    except (TypeError, ValueError):
        raise Mismatch("Q4_K bits per weight", exp, answer) from None
    if not ok:
        raise Mismatch("Q4_K bits per weight", exp, answer)


@exercise("ch10.imatrix", hint="the mean over tokens (axis 0) of the squared activations, one value per "
                               "input column, in float32")
def imatrix(fn):
    """fn(X: (tokens, in_features) float32) -> (in_features,) float32."""
    rng = _rng()
    X = (rng.standard_normal((64, 48)) * np.exp(rng.normal(0, 1, 48))).astype(np.float32)
    got = np.asarray(call_student(fn, X.copy(), what="imatrix(X)"), dtype=np.float64)
    exp = (X.astype(np.float64) ** 2).mean(axis=0)
    if got.shape != exp.shape:
        raise Mismatch("imatrix(X): wrong shape", exp.shape, got.shape)
    if not np.allclose(got, exp, rtol=1e-4):
        raise Mismatch("imatrix(X)", exp, got)
