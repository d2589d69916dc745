"""Chapter 4 exercises: calibration observers on activations."""

from __future__ import annotations

import numpy as np

from qlearn import calibration
from qlearn.exercises import Mismatch, call_student, compare_close, compare_equal, exercise

# "Use numpy only": qlearn's observers are what these exercises ask the student to write
# (calibration.fake_quantize_range stays allowed: exercise 3 uses it).
OBSERVERS = ("qlearn.calibration.minmax", "qlearn.calibration.percentile", "qlearn.calibration.mse_optimal",
             "qlearn.calibration.laplace_clip_factor", "qlearn.calibration.outlier_channels")


def _acts(seed: int, n: int = 400, f: int = 24) -> np.ndarray:
    """Laplace activations with two outlier channels, like a real LLM layer input."""
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=(n, f))
    x[:, rng.choice(f, 2, replace=False)] *= rng.uniform(10, 40)
    return x


@exercise("ch04.minmax_range", hint="symmetric: the range is [-a, a] with a = max |x| over every value",
          forbid=OBSERVERS)
def _minmax(fn):
    for seed in (1, 2, 3):
        x = _acts(seed)
        got = call_student(fn, x.copy(), what="minmax_range(x) should return the float a")
        compare_close(f"minmax_range(x) for seed {seed}", got, calibration.minmax(x).hi)


@exercise("ch04.percentile_range",
          hint="np.percentile(np.abs(x), p, method='higher'): the smallest data value with at least p% at or below it",
          forbid=OBSERVERS)
def _percentile(fn):
    for seed, p in ((4, 99.0), (5, 99.9), (6, 90.0)):
        x = _acts(seed)
        got = call_student(fn, x.copy(), p, what="percentile_range(x, p) should return the float a")
        compare_close(f"percentile_range(x, {p})", got, calibration.percentile(x, p).hi)
        outside = float(np.mean(np.abs(x) > float(got)))
        if outside > (100 - p) / 100:
            raise Mismatch(f"fraction of |x| above your clip for p={p}", f"<= {(100 - p) / 100}", outside)


@exercise("ch04.mse_clip",
          hint="try a = max|x| * k / 100 for k = 100, 99, ..., 1; keep the first a with the smallest squared error "
               "of calibration.fake_quantize_range(x, Range(-a, a), bits)",
          forbid=OBSERVERS)
def _mse(fn):
    for seed, bits in ((7, 4), (8, 3), (9, 8)):
        x = _acts(seed, n=300)
        got = call_student(fn, x.copy(), bits, what="mse_clip(x, bits) should return the float a")
        compare_close(f"mse_clip(x, bits={bits})", got, calibration.mse_optimal(x, bits).hi, rtol=1e-9)


@exercise("ch04.laplace_factor",
          hint="minimise 2 exp(-a) + a^2 / (3 * 4**bits) over a (Laplace with b = 1): a fine grid is enough",
          forbid=OBSERVERS)
def _laplace(answer):
    if callable(answer):
        for bits in (2, 4, 6):
            compare_close(f"laplace_factor({bits})", call_student(answer, bits), calibration.laplace_clip_factor(bits),
                          rtol=0, atol=0.01)
    else:
        raise Mismatch("answer should be a function laplace_factor(bits)", "a function", answer)


@exercise("ch04.outliers", hint="a channel's |max| over tokens; compare with ratio * the median of those maxima; "
                                "sort the indices by |max|, largest first",
          forbid=OBSERVERS)
def _outliers(fn):
    for seed in (10, 11):
        x = _acts(seed)
        got = call_student(fn, x.copy(), 6.0, what="outlier_channels(x, ratio) should return indices")
        compare_equal(f"outlier_channels(x, 6.0) for seed {seed}", np.asarray(got, dtype=np.int64),
                      calibration.outlier_channels(x, 6.0).astype(np.int64))
