"""Calibration: choosing the clipping range of activations from a sample of real inputs.

A uniform quantizer with b bits maps a range [lo, hi] onto 2^b levels. Values outside are clipped
(clipping error), values inside are rounded (rounding error, growing with the range). An *observer*
looks at calibration activations and picks the range:

* ``minmax``     -- the extremes: no clipping, but one outlier stretches the grid for everyone.
* ``meanabs``    -- a multiple of mean |x|: the multiple that minimises the MSE if x were Laplace
                    distributed (ACIQ, Banner et al. 2019), computed by :func:`laplace_clip_factor`.
* ``percentile`` -- the p-th percentile of |x| (or the two tails): clips a stated fraction.
* ``mse``        -- searches the clip that minimises the quantization MSE on the data itself.
* ``kl``         -- TensorRT's entropy calibration: the clip whose quantized histogram is closest
                    (Kullback-Leibler divergence) to the original histogram.

Every observer returns a :class:`Range`. :func:`fake_quantize_range` applies it; :func:`sqnr_db`
and :func:`layer_output_error` measure the damage. Arrays are numpy or torch; all math in float64
numpy for the search, results as Python floats.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from qlearn import uniform, validate

__all__ = ["Range", "OBSERVERS", "observe", "minmax", "meanabs", "percentile", "mse_optimal", "kl_entropy",
           "laplace_clip_factor", "fake_quantize_range", "sqnr_db", "layer_output_error", "channel_stats",
           "outlier_channels", "error_vs_calibration_size", "Observer"]

OBSERVERS = ("minmax", "meanabs", "percentile", "mse", "kl")
DEFAULT_PERCENTILE = 99.99   # a common choice (e.g. NVIDIA's pytorch-quantization examples)
MSE_GRID = 100               # candidate clips, as fractions 1/MSE_GRID .. 1 of the min-max range
KL_BINS = 2048               # TensorRT's histogram resolution for entropy calibration
OUTLIER_RATIO = 6.0          # a channel is an outlier when its |max| exceeds this many times the median channel's


@dataclasses.dataclass(frozen=True)
class Range:
    """Clipping range [lo, hi] (floats; lo == -hi when symmetric) chosen by ``method``."""

    lo: float
    hi: float
    method: str = ""

    @property
    def width(self) -> float:
        return self.hi - self.lo


def _as_array(x, name: str = "x", ndim: tuple = (1, 2)) -> np.ndarray:
    if hasattr(x, "detach"):
        if x.is_complex() or not x.is_floating_point():
            raise validate.ArgumentTypeError(f"{name} must be a floating-point array of "
                                             f"activations, got dtype {x.dtype}")
        x = x.detach().cpu().numpy()            # keeps float64 (validate.float_array casts to f32)
    return validate.float_array(x, name, ndim=ndim, dtype=np.float64)


def _check_bits(bits: int) -> int:
    lo, hi = validate.BITS_RANGE["calibration"]
    return validate.bits(bits, lo=lo, hi=hi)


def _check_range(rng) -> Range:
    if not isinstance(rng, Range):
        raise TypeError(f"rng must be a calibration.Range (from an observer), got "
                        f"{type(rng).__name__}")
    lo = validate.number(rng.lo, "rng.lo")
    hi = validate.number(rng.hi, "rng.hi")
    if lo > hi:
        raise ValueError(f"rng must have lo <= hi, got lo={lo}, hi={hi}")
    return rng


def fake_quantize_range(x, rng: Range, bits: int = 8, symmetric: bool = True) -> np.ndarray:
    """Quantize x to ``bits`` over [rng.lo, rng.hi] and back. Returns float64 numpy, x's shape.

    symmetric: :mod:`qlearn.uniform`'s ``"symmetric"`` grid, levels -(2^(b-1)-1) .. 2^(b-1)-1
    times scale = max(|lo|, |hi|) / (2^(b-1)-1) (zero exact); otherwise ``"asymmetric"``: 2^b
    levels from min(lo, 0) to max(hi, 0) with an integer zero point. Computed in float64.
    A zero-width range maps everything to 0.
    """
    x = _as_array(x, ndim=(1, 2, 3))
    bits = _check_bits(bits)
    rng = _check_range(rng)
    symmetric = validate.flag(symmetric, "symmetric")
    mapping = "symmetric" if symmetric else "asymmetric"
    a = max(abs(rng.lo), abs(rng.hi))
    if a == 0 or (not symmetric and min(rng.lo, 0.0) == max(rng.hi, 0.0)):
        return np.zeros_like(x)
    scale, zero = uniform.qparams_from_range(np.array([rng.lo]), np.array([rng.hi]), bits,
                                             mapping, dtype=np.float64)
    shape1 = (1,) * x.ndim
    q = uniform.quantize_affine(x, scale.reshape(shape1), zero.reshape(shape1), bits,
                                mapping=mapping, dtype=np.float64)
    return uniform.dequantize_affine(q.codes, q.scale, q.zero_point, q.block_size, mapping,
                                     bits=bits, dtype=np.float64)


def sqnr_db(x, x_hat) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum x^2 / sum (x - x_hat)^2) in dB (inf if exact)."""
    x, x_hat = _as_array(x, ndim=(1, 2, 3)), _as_array(x_hat, "x_hat", ndim=(1, 2, 3))
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {x.shape} and {x_hat.shape}")
    noise = float(((x - x_hat) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((x ** 2).sum()) / noise)


# ---------------------------------------------------------------- observers
def minmax(x, symmetric: bool = True) -> Range:
    """[min, max] of x, or [-max|x|, max|x|] when symmetric."""
    symmetric = validate.flag(symmetric, "symmetric")
    x = _as_array(x)
    if symmetric:
        a = float(np.abs(x).max())
        return Range(-a, a, "minmax")
    return Range(float(x.min()), float(x.max()), "minmax")


def laplace_clip_factor(bits: int) -> float:
    """alpha / b minimising the expected MSE of symmetric b-bit quantization of a Laplace(0, b) variable.

    MSE(alpha) = clipping 2 b^2 exp(-alpha/b) + rounding alpha^2 / (3 * 4^bits) (step 2 alpha / 2^bits,
    uniform error step^2/12). Solved numerically (ACIQ gives 2.83, 3.89, 5.03 for 2, 3, 4 bits).
    """
    bits = _check_bits(bits)
    a = np.linspace(0.5, 40, 200_000)
    mse = 2 * np.exp(-a) + a ** 2 / (3 * 4.0 ** bits)
    return float(a[np.argmin(mse)])


def meanabs(x, bits: int = 8, symmetric: bool = True) -> Range:
    """Symmetric clip ``laplace_clip_factor(bits) * mean|x - centre|`` (centre 0, or the mean if asymmetric)."""
    symmetric = validate.flag(symmetric, "symmetric")
    x = _as_array(x)
    c = 0.0 if symmetric else float(x.mean())
    a = laplace_clip_factor(bits) * float(np.abs(x - c).mean())
    lo, hi = c - a, c + a
    # never wider than the data: a clip beyond the extremes only wastes levels
    return Range(max(lo, float(x.min()) if not symmetric else -float(np.abs(x).max())),
                 min(hi, float(x.max()) if not symmetric else float(np.abs(x).max())), "meanabs")


def percentile(x, p: float = DEFAULT_PERCENTILE, symmetric: bool = True) -> Range:
    """Clip so that at most (100 - p)% of the values fall outside.

    symmetric: a = p-th percentile of |x| (rounded up to a data value), range [-a, a]; otherwise
    the (100-p)/2 % tail is cut on each side.
    """
    p = validate.number(p, "percentile p", lo=0.0, hi=100.0, lo_open=True)
    symmetric = validate.flag(symmetric, "symmetric")
    x = _as_array(x)
    if symmetric:
        a = float(np.percentile(np.abs(x), p, method="higher"))
        return Range(-a, a, "percentile")
    tail = (100 - p) / 2
    return Range(float(np.percentile(x, tail, method="lower")), float(np.percentile(x, 100 - tail, method="higher")),
                 "percentile")


def mse_optimal(x, bits: int = 8, symmetric: bool = True, grid: int = MSE_GRID) -> Range:
    """The clip, among ``grid`` shrinkings k/grid (k = 1..grid) of the min-max range, with the least
    quantization MSE on x. The full min-max range is a candidate, so this is never worse than minmax."""
    x = _as_array(x)
    bits = _check_bits(bits)
    full = minmax(x, symmetric)
    best, best_err = full, math.inf
    for k in range(grid, 0, -1):
        f = k / grid
        r = Range(full.lo * f, full.hi * f, "mse")
        err = float(((x - fake_quantize_range(x, r, bits, symmetric)) ** 2).sum())
        if err < best_err:
            best, best_err = r, err
    return Range(best.lo, best.hi, "mse")


def _merge_and_expand(ref: np.ndarray, n_levels: int) -> np.ndarray:
    """Merge histogram ``ref`` into n_levels groups of consecutive bins, then spread each group's mass
    evenly over the group's originally non-empty bins (empty bins stay empty)."""
    i = len(ref)
    starts = (np.arange(n_levels) * i) // n_levels               # group k covers bins starts[k]..starts[k+1]-1
    level = np.repeat(np.arange(n_levels), np.diff(np.append(starts, i)))
    nonzero = ref > 0
    mass = np.add.reduceat(ref, starts)
    count = np.add.reduceat(nonzero.astype(np.float64), starts)
    return np.where(nonzero, mass[level] / np.maximum(count[level], 1), 0.0)


def kl_entropy(x, bits: int = 8, bins: int = KL_BINS) -> Range:
    """TensorRT-style entropy calibration (symmetric): histogram |x| into ``bins`` bins; for each
    candidate threshold i (from 2^(bits-1) bins up), P = the first i bins with the tail mass folded into
    bin i, Q = P merged into 2^(bits-1) levels and spread back; pick the i minimising KL(P || Q)."""
    x = _as_array(x)
    bits = _check_bits(bits)
    bins = validate.integer(bins, "bins", lo=1)
    n_levels = 2 ** (bits - 1)
    a = np.abs(x).ravel()
    top = float(a.max())
    if top == 0:
        return Range(0.0, 0.0, "kl")
    bins = max(bins, n_levels)
    hist, edges = np.histogram(a, bins=bins, range=(0, top))
    hist = hist.astype(np.float64)
    best_i, best_kl = bins, math.inf
    for i in range(n_levels, bins + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        q = _merge_and_expand(hist[:i], n_levels)   # Q is built from the unfolded slice, as TensorRT does
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        pn, qn = p / p_sum, q / q_sum
        mask = pn > 0
        if np.any(qn[mask] == 0):  # P has mass where Q has none (only the folded tail bin): smooth
            qn = np.where(qn == 0, 1e-12, qn)  # tiny mass, the convention of common implementations
        kl = float((pn[mask] * np.log(pn[mask] / qn[mask])).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    t = float(edges[best_i])
    return Range(-t, t, "kl")


def observe(x, method: str = "minmax", bits: int = 8, symmetric: bool = True,
            p: float = DEFAULT_PERCENTILE) -> Range:
    """Dispatch to an observer by name (one of OBSERVERS). x: (tokens, features) or flat activations."""
    validate.choice(method, "method", OBSERVERS)
    bits = _check_bits(bits)
    symmetric = validate.flag(symmetric, "symmetric")
    if method == "minmax":
        return minmax(x, symmetric)
    if method == "meanabs":
        return meanabs(x, bits, symmetric)
    if method == "percentile":
        return percentile(x, p, symmetric)
    if method == "mse":
        return mse_optimal(x, bits, symmetric)
    if method == "kl":
        if not symmetric:
            raise ValueError("the kl observer is symmetric only (as in TensorRT); pass symmetric=True")
        return kl_entropy(x, bits)
    raise ValueError(f"unknown observer {method!r}; expected one of {OBSERVERS}")


class Observer:
    """Accumulates calibration batches, then picks a range: ``obs.update(x1); obs.update(x2); obs.range()``.

    Each batch is (tokens, features) with the same feature count. ``max_values`` keeps a seeded random
    subsample when more arrive (memory bound; minmax is still exact).
    """

    def __init__(self, method: str = "minmax", bits: int = 8, symmetric: bool = True,
                 p: float = DEFAULT_PERCENTILE, max_values: int = 2_000_000, seed: int = 0):
        if method not in OBSERVERS:
            raise ValueError(f"unknown observer {method!r}; expected one of {OBSERVERS}")
        self.method, self.bits, self.p = method, _check_bits(bits), p
        self.symmetric = validate.flag(symmetric, "symmetric")
        self.max_values, self._rng = max_values, np.random.default_rng(seed)
        self.features: int | None = None
        self._chunks: list[np.ndarray] = []
        self._min, self._max = math.inf, -math.inf

    def update(self, x) -> "Observer":
        x = _as_array(x, ndim=(2,))
        if self.features is None:
            self.features = x.shape[1]
        elif x.shape[1] != self.features:
            raise ValueError(f"expected {self.features} features per token (as in the first batch), "
                             f"got {x.shape[1]} (shape {x.shape}); feed one linear's inputs per observer")
        self._min, self._max = min(self._min, float(x.min())), max(self._max, float(x.max()))
        self._chunks.append(x.ravel())
        total = sum(c.size for c in self._chunks)
        if total > self.max_values:
            flat = np.concatenate(self._chunks)
            self._chunks = [self._rng.choice(flat, self.max_values, replace=False)]
        return self

    def range(self) -> Range:
        if not self._chunks:
            raise ValueError("no calibration data: call update(x) with activations before range()")
        if self.method == "minmax":
            a = max(abs(self._min), abs(self._max))
            return Range(-a, a, "minmax") if self.symmetric else Range(self._min, self._max, "minmax")
        return observe(np.concatenate(self._chunks), self.method, self.bits, self.symmetric, self.p)


# ---------------------------------------------------------------- measuring
def layer_output_error(x, W, rng: Range, bits: int = 8, symmetric: bool = True) -> dict:
    """Error of a linear layer's output when only its input activations are quantized with ``rng``.

    x: (tokens, in_features); W: (out_features, in_features). Returns {"sqnr_db": output SQNR in dB,
    "rel_mse": ||y - y_hat||^2 / ||y||^2, "clipped": fraction of inputs outside the range}.
    """
    x = _as_array(x, ndim=(2,))
    W = _as_array(W, "W", ndim=(2,))
    if W.shape[1] != x.shape[1]:
        raise ValueError(f"W has {W.shape[1]} input features but x has {x.shape[1]} "
                         f"(expected W: (out_features, {x.shape[1]}))")
    x_hat = fake_quantize_range(x, rng, bits, symmetric)
    y, y_hat = x @ W.T, x_hat @ W.T
    noise = float(((y - y_hat) ** 2).sum())
    sig = float((y ** 2).sum())
    clipped = float(((x < rng.lo) | (x > rng.hi)).mean())
    return {"sqnr_db": math.inf if noise == 0 else 10 * math.log10(sig / noise),
            "rel_mse": noise / sig if sig else 0.0, "clipped": clipped}


def channel_stats(x) -> dict:
    """Per-feature statistics of activations x: (tokens, features).

    Returns {"absmax", "mean", "std", "p99"} each (features,) float64, p99 the 99th percentile of |x|.
    """
    x = _as_array(x, ndim=(2,))
    a = np.abs(x)
    return {"absmax": a.max(0), "mean": x.mean(0), "std": x.std(0), "p99": np.percentile(a, 99, axis=0)}


def outlier_channels(x, ratio: float = OUTLIER_RATIO) -> np.ndarray:
    """Indices of features whose |max| exceeds ``ratio`` times the median feature's |max| (sorted, largest first)."""
    ratio = validate.number(ratio, "ratio", lo=1.0, hint="a channel is an outlier when its "
                            "|max| is ratio times the median channel's")
    absmax = channel_stats(x)["absmax"]
    idx = np.nonzero(absmax > ratio * np.median(absmax))[0]
    return idx[np.argsort(-absmax[idx])]


def error_vs_calibration_size(calib, test, sizes, method: str = "minmax", bits: int = 8,
                              symmetric: bool = True, W=None, p: float = DEFAULT_PERCENTILE) -> dict:
    """How many calibration tokens are enough: the range is fitted on the first n rows of ``calib``
    for each n in sizes, then judged on held-out ``test`` rows (SQNR of test activations in dB, or of
    the layer output x W^T if W is given). Returns {"sizes": list, "sqnr_db": list, "hi": list}."""
    calib = _as_array(calib, "calib", ndim=(2,))
    test = _as_array(test, "test", ndim=(2,))
    if calib.shape[1] != test.shape[1]:
        raise ValueError(f"calib and test must have the same feature count, got {calib.shape[1]} and {test.shape[1]}")
    out = {"sizes": [], "sqnr_db": [], "hi": []}
    for n in sizes:
        if not (1 <= n <= len(calib)):
            raise ValueError(f"calibration sizes must be in 1..{len(calib)} (rows of calib), got {n}")
        r = observe(calib[:n], method, bits, symmetric, p)
        if W is None:
            s = sqnr_db(test, fake_quantize_range(test, r, bits, symmetric))
        else:
            s = layer_output_error(test, W, r, bits, symmetric)["sqnr_db"]
        out["sizes"].append(int(n))
        out["sqnr_db"].append(s)
        out["hi"].append(r.hi)
    return out
