"""Exercises of chapter 3, *Uniform quantization and SQNR*."""

from __future__ import annotations

import numpy as np

from qlearn import uniform
from qlearn.exercises import Mismatch, call_student, compare_close, compare_equal, exercise

# Exercises 1-4 ask for numpy only: qlearn.uniform's quantizers and SQNR are off limits there.
NUMPY_ONLY = ("qlearn.uniform.sqnr_db", "qlearn.uniform.quantize", "qlearn.uniform.quantize_affine",
              "qlearn.uniform.dequantize", "qlearn.uniform.fake_quantize")
CLIP_GRID = np.round(np.arange(0.05, 1.0001, 0.05), 2)  # the ratios ch03.best_clip searches


def _data(rng, shape, heavy=False):
    x = rng.standard_t(4, shape) if heavy else rng.standard_normal(shape)
    return (x * rng.uniform(0.01, 2)).astype(np.float32)


@exercise("ch03.sqnr_db", hint="10 * log10(sum(x**2) / sum((x - x_hat)**2)), in float64",
          forbid=NUMPY_ONLY)
def _sqnr(fn):
    rng = np.random.default_rng()
    for _ in range(4):
        x = _data(rng, (int(rng.integers(10, 500)),))
        x_hat = x + rng.normal(0, rng.uniform(1e-3, 0.5), x.shape).astype(np.float32)
        compare_close("sqnr_db(x, x_hat)", call_student(fn, x, x_hat), uniform.sqnr_db(x, x_hat), rtol=1e-5)


@exercise("ch03.quantize_symmetric",
          hint="scale = max|x| / (2**(bits-1) - 1); codes = clip(rint(x / scale), -qmax, qmax) as int8",
          forbid=NUMPY_ONLY)
def _sym(fn):
    rng = np.random.default_rng()
    for bits in (2, 4, 8, int(rng.integers(2, 9))):
        x = _data(rng, (int(rng.integers(8, 300)),), heavy=True)
        got = call_student(fn, x, bits)
        exp = uniform.quantize(x, bits).codes
        compare_equal(f"codes of quantize_symmetric(x, bits={bits})",
                      np.asarray(got).astype(np.int64), exp.astype(np.int64))


@exercise("ch03.fake_quantize_asymmetric",
          hint="range [min(x,0), max(x,0)], scale = range/(2**bits-1), zero = -rint(min/scale), "
               "q = clip(rint(x/scale)+zero, 0, 2**bits-1), x_hat = (q-zero)*scale",
          forbid=NUMPY_ONLY)
def _asym(fn):
    rng = np.random.default_rng()
    for bits in (2, 3, 4, 8):
        x = _data(rng, (int(rng.integers(8, 300)),)) + np.float32(rng.uniform(-1, 1))
        got = call_student(fn, x, bits)
        exp = uniform.fake_quantize(x, bits, symmetric=False)
        scale = float(uniform.quantize(x, bits, symmetric=False).scale[0])
        compare_close(f"fake_quantize_asymmetric(x, bits={bits})", got, exp, rtol=0, atol=1e-3 * scale)


@exercise("ch03.per_group", hint="reshape W (rows, cols) to (rows, cols // g, g) and take max|.| over the last axis",
          forbid=NUMPY_ONLY)
def _group(fn):
    rng = np.random.default_rng()
    for bits, g in [(4, 32), (8, 16), (3, int(rng.choice([4, 8, 64])))]:
        W = _data(rng, (int(rng.integers(1, 9)), g * int(rng.integers(1, 6))), heavy=True)
        got = call_student(fn, W, bits, g)
        exp = uniform.fake_quantize(W, bits, block_size=uniform.block_size_for(W.shape, "per_group", g))
        scale = uniform.quantize(W, bits, block_size=(1, g)).scale
        compare_close(f"per_group_fake_quantize(W {W.shape}, bits={bits}, group_size={g})", got, exp,
                      rtol=0, atol=1e-3 * float(scale.min()))


def best_clip_ratio(x: np.ndarray, bits: int) -> float:
    """The ratio in CLIP_GRID with the highest SQNR (first one on ties)."""
    vals = [uniform.sqnr_db(x, uniform.fake_quantize(x, bits, clip=float(c))) for c in CLIP_GRID]
    return float(CLIP_GRID[int(np.argmax(vals))])


@exercise("ch03.best_clip", hint="try clip = 0.05, 0.10, ..., 1.00 with qlearn.uniform.fake_quantize and "
                                 "keep the one with the largest sqnr_db",
          forbid=("qlearn.exercises.ch03.best_clip_ratio",))
def _clip(fn):
    rng = np.random.default_rng()
    for bits in (3, 4):
        x = _data(rng, (20_000,), heavy=True)
        got = call_student(fn, x, bits)
        exp = best_clip_ratio(x, bits)
        try:
            ok = abs(float(got) - exp) < 1e-9
        except (TypeError, ValueError):
            raise Mismatch(f"best_clip(x, bits={bits})", exp, got) from None
        if not ok:
            raise Mismatch(f"best_clip(x, bits={bits}) (grid 0.05..1.00 step 0.05)", exp, got)
