"""Exercises for chapter 2, number formats. Each checker runs the student's code on fresh inputs
and compares with :mod:`qlearn.formats`."""

from __future__ import annotations

import numpy as np

from qlearn import formats as F
from qlearn.exercises import Mismatch, call_student, compare_close, compare_equal, exercise

N_CODES = 300          # random FP16 codes per check: covers normals, subnormals and specials often
N_VALUES = 4000        # random float32 values per rounding check


def _rng() -> np.random.Generator:
    return np.random.default_rng()  # fresh inputs every check, so a memorised table cannot pass


@exercise("ch02.decode_fp16",
          hint="split the 16 bits: sign = code >> 15, E = (code >> 10) & 0x1F, M = code & 0x3FF; "
               "E == 0 is subnormal (no implied 1, exponent 1 - 15), E == 31 is inf/NaN")
def _decode_fp16(fn):
    rng = _rng()
    fixed = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0xC000, 0x7BFF, 0x7C00, 0xFC00, 0x7E00]
    codes = np.concatenate([fixed, rng.integers(0, 2 ** 16, N_CODES)]).astype(np.uint16)
    expected = F.decode(codes, "fp16").astype(np.float64)
    got = np.array([float(call_student(fn, int(c), what="decode_fp16(code: int) -> float"))
                    for c in codes])
    bad = ~((got == expected) | (np.isnan(got) & np.isnan(expected)))
    if bad.any():
        i = int(np.argmax(bad))
        raise Mismatch(f"decode_fp16({int(codes[i]):#06x}) (code bits {int(codes[i]):016b})",
                       float(expected[i]), float(got[i]))
    signs = np.signbit(got[(expected == 0)]) == np.signbit(expected[(expected == 0)])
    if not signs.all():
        raise Mismatch("the sign of zero: decode_fp16(0x8000)", -0.0, float(fn(0x8000)))


@exercise("ch02.bf16_epsilon", hint="epsilon is the gap between 1.0 and the next value: 2 ** -mantissa_bits")
def _bf16_epsilon(answer):
    compare_equal("BF16 machine epsilon", answer, F.FORMATS["bf16"].epsilon)


@exercise("ch02.format_limits",
          hint="bias = 2**(e-1) - 1; max = (2 - 2**-m) * 2**(2**e - 2 - bias); "
               "min normal = 2**(1 - bias); min subnormal = min normal * 2**-m; epsilon = 2**-m")
def _format_limits(fn):
    rng = _rng()
    shapes = {(5, 10), (8, 7), (5, 2), (8, 23)}
    while len(shapes) < 8:
        shapes.add((int(rng.integers(2, 9)), int(rng.integers(1, 24))))
    for e, m in sorted(shapes):
        ref = F.FormatSpec(f"e{e}m{m}", e, m)
        got = call_student(fn, e, m, what="format_limits(e, m) -> (max, min_normal, min_subnormal, epsilon)")
        compare_close(f"format_limits({e}, {m}) = (max, min_normal, min_subnormal, epsilon)",
                      got, np.array([ref.max, ref.min_normal, ref.min_subnormal, ref.epsilon]), rtol=1e-12)


def _bf16_inputs(rng) -> np.ndarray:
    """Random float32 over many magnitudes, plus exact ties and the neighbours of ties."""
    x = (rng.standard_normal(N_VALUES) * np.exp2(rng.integers(-40, 40, N_VALUES))).astype(np.float32)
    ties = ((rng.integers(0, 2 ** 15, 500).astype(np.uint32) << 16) | 0x8000).view(np.float32)
    ties = ties[np.isfinite(ties)]
    return np.concatenate([x, ties, np.nextafter(ties, np.float32(0)),
                           np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-40], np.float32)])


@exercise("ch02.round_to_bf16",
          hint="bits = x.view(np.uint32); look at the low 16 bits: above 0x8000 round up, below keep, "
               "exactly 0x8000 round up only if bit 16 is 1; then shift right by 16")
def _round_to_bf16(fn):
    x = _bf16_inputs(_rng())
    got = call_student(fn, x.copy(), what="round_to_bf16(x: float32 array) -> uint16 codes")
    expected = F.encode(x, "bf16")
    g = np.asarray(got)
    if g.shape != expected.shape:
        raise Mismatch("round_to_bf16(x): shape", expected.shape, g.shape)
    g = g.astype(np.int64)
    bad = g != expected.astype(np.int64)
    if bad.any():
        i = int(np.argmax(bad))
        raise Mismatch(f"round_to_bf16 of {x[i]!r} (float32 bits {int(x[i:i + 1].view(np.uint32)[0]):#010x})",
                       f"{int(expected[i]):#06x}", f"{int(g[i]):#06x}")


@exercise("ch02.first_missing_integer",
          hint="with m stored mantissa bits there are m + 1 significant bits; past 2**(m+1) the spacing is 2")
def _first_missing_integer(fn):
    for name in ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2"):
        f = F.FORMATS[name]
        ints = np.arange(0, min(f.max, 2 ** 14) + 1, dtype=np.float32)
        expected = int(ints[F.round_to(ints, name) != ints][0])  # brute force with qlearn
        got = call_student(fn, f.mantissa_bits, what="first_missing_integer(mantissa_bits) -> int")
        compare_equal(f"first_missing_integer({f.mantissa_bits})  ({name})", got, expected)
