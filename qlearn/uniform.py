"""Uniform (affine) quantization: the integer grid every other method in the book builds on.

A uniform quantizer maps a real number ``x`` to an integer code ``q`` on an evenly spaced grid
and back::

    q     = clamp(round(x / scale) + zero_point, qmin, qmax)        (quantize)
    x_hat = (q - zero_point) * scale                                 (dequantize)

Two choices define it:

* **Symmetric or asymmetric.** Symmetric quantization fixes ``zero_point = 0`` and uses the
  *restricted* code range ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (for 8 bits: -127..127, never
  -128), so the grid is symmetric around zero and ``scale = clip * max|x| / (2**(bits-1) - 1)``.
  Restricting the range wastes one of ``2**bits`` codes but makes ``+max|x|`` and ``-max|x|``
  equally representable (PyTorch's ``qint8`` symmetric observers, SmoothQuant and LLM.int8()
  make the same choice). Asymmetric quantization uses the full unsigned range ``[0, 2**bits - 1]``
  over ``[min(x, 0), max(x, 0)]`` (scaled by ``clip``), with an integer ``zero_point`` so that the
  real value 0 is exactly representable (the torchao / GPTQ convention; AWQ does *not* widen the
  range to include 0).
* **Granularity**, said in exactly one way: a ``block_size`` tuple with one entry per dimension
  of ``x`` (the torchao convention). Each block of that shape gets its own scale (and zero
  point): per-tensor is ``x.shape``, per-channel of an ``(out, in)`` weight is ``(1, in)`` (one
  scale per output row), per-group of ``g`` is ``(1, g)``, per-block e.g. ``(32, 32)``.
  :func:`block_size_for` builds the common ones.

Rounding is round-half-to-even (``np.rint`` / ``torch.round``), as in PyTorch, GPTQ and AWQ.
Everything is computed in float32, like the production tools.

The module also measures quantization quality (:func:`sqnr_db`) and predicts it
(:func:`theoretical_sqnr_db`: numerical integration of the granular and overload distortion of
this exact grid for uniform, Gaussian, Laplace, Student-t and sine-wave inputs), next to the
textbook rule :func:`rule_of_thumb_sqnr_db` = 6.02 n + 1.76 dB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from qlearn import validate
from qlearn.validate import ArgumentTypeError

__all__ = ["QTensor", "Mapping", "MAPPINGS", "choose_qparams", "qparams_from_range",
           "quantize", "quantize_affine", "dequantize", "dequantize_affine", "fake_quantize",
           "block_size_for", "code_range", "sqnr_db", "rule_of_thumb_sqnr_db",
           "theoretical_distortion", "theoretical_sqnr_db", "optimal_clip",
           "sample_distribution", "GRANULARITIES", "DISTRIBUTIONS", "MIN_BITS", "MAX_BITS"]

MIN_BITS = 2  # 1-bit "uniform" grids are sign functions, a different topic (binarization)
MAX_BITS = 8  # codes are stored in (u)int8
GRANULARITIES = ("per_tensor", "per_channel", "per_group")
DISTRIBUTIONS = ("uniform", "gaussian", "laplace", "student_t", "sine")
DEFAULT_T_DF = 5.0  # Student-t degrees of freedom: heavy tails, but finite kurtosis (needs df > 4)
ALL_ZERO_SCALE = 1.0  # scale used for a block that is all zeros: any positive value gives codes 0


# --- validation --------------------------------------------------------------------------------

def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _to_numpy_float32(x: Any, name: str = "x", keep_float64: bool = False) -> np.ndarray:
    """Validate ``x`` (numpy array, torch tensor or nested list of floats) and return float32
    (float64 input stays float64 with ``keep_float64``)."""
    if _is_torch(x):
        if x.is_complex() or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype} "
                             f"(convert with {name}.float())")
        import torch

        keep = keep_float64 and x.dtype == torch.float64
        arr = x.detach().to("cpu").numpy() if keep else x.detach().to("cpu").float().numpy()
    else:
        arr = np.asarray(x)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} must be a floating-point array (float16/32/64), got dtype "
                             f"{arr.dtype} (convert with {name}.astype(np.float32))")
        if not (keep_float64 and arr.dtype == np.float64):
            arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar "
                         f"(wrap it: np.array([{name}]))")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} must be finite, got {n_bad} NaN/Inf value(s) of {arr.size} "
                         f"(find them with np.argwhere(~np.isfinite({name})))")
    return arr


def _check_bits(bits: Any) -> int:
    return validate.bits(bits, "bits", *validate.BITS_RANGE["uniform"])


def _check_clip(clip: Any) -> float:
    if not isinstance(clip, (int, float, np.floating, np.integer)) or not 0.0 < clip <= 1.0:
        raise ValueError(f"clip is the fraction of the range kept and must be in (0, 1], got {clip!r} "
                         f"(1.0 keeps the full min/max range)")
    return float(clip)


def _check_block_size(shape: tuple[int, ...], block_size: Any) -> tuple[int, ...]:
    if block_size is None:
        return tuple(shape)
    bs = tuple(block_size)
    if len(bs) != len(shape):
        raise ValueError(f"block_size needs one entry per dimension of x: expected length "
                         f"{len(shape)} for shape {tuple(shape)}, got {bs} of length {len(bs)} "
                         f"(per-group of a 2-D weight is (1, group_size))")
    for d, (n, b) in enumerate(zip(shape, bs)):
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ValueError(f"block_size entries must be positive integers, got {bs}")
        if n % b:
            raise ValueError(f"block_size must divide the shape {tuple(shape)}, got {bs}: "
                             f"dimension {d} has {n} elements, not a multiple of {b} (pad x or "
                             f"pick a divisor of {n})")
    return tuple(int(b) for b in bs)


def code_range(bits: int, symmetric: bool = True, mapping: str | None = None) -> tuple[int, int]:
    """The integer codes ``(qmin, qmax)``: restricted ``(-(2^(b-1)-1), 2^(b-1)-1)`` when symmetric,
    ``(0, 2^b - 1)`` when asymmetric; ``mapping`` (a key of :data:`MAPPINGS`) overrides
    ``symmetric``."""
    return _mapping(mapping, symmetric).code_range(bits)


# --- granularity -------------------------------------------------------------------------------

def block_size_for(shape: tuple[int, ...], granularity: str,
                   group_size: int | None = None) -> tuple[int, ...]:
    """The ``block_size`` tuple for a named granularity.

    Args:
        shape: shape of the tensor, e.g. ``(out_features, in_features)``.
        granularity: ``"per_tensor"`` (one scale: ``shape``), ``"per_channel"`` (one scale per
            output row of a weight: ``(1, ..., 1, shape[-1])``, needs ``len(shape) >= 2``) or
            ``"per_group"`` (groups of ``group_size`` consecutive elements along the last axis:
            ``(1, ..., 1, group_size)``).
        group_size: only for ``"per_group"``; must divide ``shape[-1]``.

    Returns:
        ``tuple[int, ...]`` of ``len(shape)`` entries, to pass as ``block_size=``.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r} "
                         f"(for 2-D blocks pass block_size=(rows, cols) directly)")
    if granularity != "per_group" and group_size is not None:
        raise ValueError(f"group_size is only used with granularity 'per_group', got "
                         f"group_size={group_size} with {granularity!r}")
    if granularity == "per_tensor":
        return shape
    lead = (1,) * (len(shape) - 1)
    if granularity == "per_channel":
        if len(shape) < 2:
            raise ValueError(f"per_channel needs at least 2 dimensions (out, in), got shape {shape} "
                             f"(a 1-D vector is one channel: use 'per_tensor')")
        return lead + (shape[-1],)
    if group_size is None or isinstance(group_size, bool) \
            or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"per_group needs a positive group_size, got {group_size!r} (e.g. 128)")
    if shape[-1] % int(group_size):
        raise ValueError(f"group_size must divide the last dimension, got {group_size}: "
                         f"{shape[-1]} is not a multiple of {group_size} (pad the rows or pick "
                         f"a divisor of {shape[-1]})")
    return lead + (int(group_size),)


def _blocked(x: np.ndarray, block_size: tuple[int, ...]) -> np.ndarray:
    """View ``x`` of shape (d0, d1, ...) as (d0/b0, b0, d1/b1, b1, ...)."""
    new = []
    for n, b in zip(x.shape, block_size):
        new += [n // b, b]
    return x.reshape(new)


def _block_axes(ndim: int) -> tuple[int, ...]:
    return tuple(range(1, 2 * ndim, 2))


def _expand(p: np.ndarray, ndim: int) -> np.ndarray:
    """Per-block parameter (n0, n1, ...) -> broadcastable (n0, 1, n1, 1, ...)."""
    return np.expand_dims(p, _block_axes(ndim))


# --- mappings: the integer grids upstream tools use ---------------------------------------------

@dataclass(frozen=True)
class Mapping:
    """One integer grid: which codes exist, how a block's range becomes a scale and zero point.

    Fields:
        name: the key in :data:`MAPPINGS`.
        signed: codes are signed (int8) around a zero point of 0, else unsigned (uint8) 0..2^b-1.
        widen_to_zero: the block range is widened to contain 0 (so 0 is exactly a level).
        range_floor: the block range (absmax or max - min) is floored at this before dividing
            (0.0: no floor; a zero-range block then gets the mapping's empty rule).
        upstream: the tools whose arithmetic this mapping reproduces.
        rule: one line stating scale and zero point.
    """

    name: str
    signed: bool
    widen_to_zero: bool
    range_floor: float
    upstream: str
    rule: str

    def code_range(self, bits: int) -> tuple[int, int]:
        """``(qmin, qmax)`` for ``bits`` (restricted signed range, or 0..2^b-1)."""
        bits = _check_bits(bits)
        if self.signed:
            return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        return 0, 2 ** bits - 1

    def fixed_zero_point(self, bits: int) -> int | None:
        """The zero point every block has (``None`` when it is chosen per block)."""
        if self.name == "symmetric":
            return 0
        if self.name == "symmetric_offset":
            return 2 ** (_check_bits(bits) - 1)
        return None


AWQ_SCALE_FLOOR = 1e-5  # llm-awq/AutoAWQ clamp max - min at 1e-5 before dividing by 2^b - 1
EMPTY_RANGE = 1.0       # GPTQ's quantizer gives an all-zero block the range [-1, 1]

MAPPINGS: dict[str, Mapping] = {m.name: m for m in (
    Mapping("symmetric", True, True, 0.0,
            "PyTorch qint8 symmetric observers, SmoothQuant, LLM.int8() (bitsandbytes)",
            "codes -(2^(b-1)-1)..2^(b-1)-1, zero 0, scale = clip * max|x| / (2^(b-1)-1); "
            "an all-zero block gets scale 1"),
    Mapping("symmetric_offset", False, True, 0.0,
            "the GPTQ reference (IST-DASLab/gptq, AutoGPTQ sym=True)",
            "codes 0..2^b-1, zero 2^(b-1), scale = 2 * max|x| / (2^b-1) (range [-m, m]; a block "
            "with no negative value keeps [0, max]); an all-zero block gets [-1, 1]"),
    Mapping("asymmetric", False, True, 0.0,
            "GPTQ sym=False, torchao asymmetric",
            "codes 0..2^b-1, range [min(x, 0), max(x, 0)] * clip, scale = range / (2^b-1), "
            "zero = round(-min / scale); an all-zero block gets [-1, 1]"),
    Mapping("asymmetric_minmax", False, False, AWQ_SCALE_FLOOR,
            "AWQ (llm-awq pseudo_quantize_tensor, AutoAWQ)",
            "codes 0..2^b-1, range [min(x), max(x)] * clip NOT widened to 0, scale = "
            "max(range, 1e-5) / (2^b-1), zero = clamp(-round(min / scale), 0, 2^b-1)"),
)}


def _mapping(mapping: Any, symmetric: Any = True) -> Mapping:
    """Resolve a mapping name (``None``: from the legacy ``symmetric`` flag)."""
    if mapping is None:
        if not isinstance(symmetric, (bool, np.bool_)):
            raise ArgumentTypeError(f"symmetric must be True or False, got {symmetric!r}")
        return MAPPINGS["symmetric" if symmetric else "asymmetric"]
    if isinstance(mapping, Mapping):
        return mapping
    if not isinstance(mapping, str) or mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {tuple(MAPPINGS)}, got {mapping!r}")
    return MAPPINGS[mapping]


def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype (the compute precision) must be float32 or float64, got {dt}")
    return dt


def _check_floor(range_floor: Any) -> float:
    if isinstance(range_floor, bool) or not isinstance(range_floor, (int, float, np.floating)) \
            or not (0.0 <= float(range_floor) < math.inf):
        raise ValueError(f"range_floor must be a finite number >= 0, got {range_floor!r}")
    return float(range_floor)


# --- quantize / dequantize ---------------------------------------------------------------------

@dataclass
class QTensor:
    """A uniformly quantized tensor (the one result convention every method extends).

    Fields:
        codes: ``shape`` int8 (signed mapping) or uint8 (the others) integer codes.
        scale: ``(shape[0] // block_size[0], shape[1] // block_size[1], ...)`` float32, one per block.
        zero_point: same shape as ``scale``, int32 (all zeros for ``"symmetric"``).
        bits: bit width, 2..8.
        symmetric: True for the restricted symmetric grid (``mapping == "symmetric"``).
        block_size: the block shape each scale covers (see the module docstring).
        shape: shape of the original tensor.
        mapping: the grid's name in :data:`MAPPINGS`.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    symmetric: bool
    block_size: tuple[int, ...]
    shape: tuple[int, ...]
    mapping: str | None = None

    def __post_init__(self) -> None:
        if self.mapping is None:
            self.mapping = "symmetric" if self.symmetric else "asymmetric"

    def dequantize(self) -> np.ndarray:
        """Same as :func:`dequantize` (``shape`` float32)."""
        return dequantize(self)


def _range_array(v: Any, name: str, dt: np.dtype) -> np.ndarray:
    if _is_torch(v):
        v = v.detach().to("cpu").numpy()
    if isinstance(v, (float, np.floating)):
        v = np.asarray(v)
    if not isinstance(v, np.ndarray) or v.dtype.kind != "f":
        raise ArgumentTypeError(f"{name} must be a float array of block minima/maxima, got "
                                f"{getattr(v, 'dtype', type(v).__name__)}")
    return v.astype(dt, copy=False)


def qparams_from_range(lo: Any, hi: Any, bits: int, mapping: str = "symmetric",
                       clip: float = 1.0, *, range_floor: float | None = None,
                       dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of each block from its raw ``min`` (``lo``) and ``max`` (``hi``).

    This is the policy half of the core (the mechanism is :func:`quantize_affine`); the
    arithmetic of each mapping follows its upstream tool operation by operation (see
    :data:`MAPPINGS`), so the results are the same float32 bits.

    Args:
        lo, hi: per-block minimum and maximum, same shape (any), ``lo <= hi``.
        bits: 2..8. mapping: a key of :data:`MAPPINGS`. clip: fraction of the range kept, (0, 1].
        range_floor: overrides the mapping's floor on the range (SmoothQuant: 1e-5 on absmax).
        dtype: compute precision, float32 (default, as the tools) or float64.
    Returns:
        ``(scale, zero_point)``: ``lo.shape`` ``dtype`` (positive) and int32.
    """
    if mapping is None:
        raise ValueError(f"mapping must be one of {tuple(MAPPINGS)}, got None")
    m = _mapping(mapping)
    bits = _check_bits(bits)
    clip = _check_clip(clip)
    dt = _check_dtype(dtype)
    floor = m.range_floor if range_floor is None else _check_floor(range_floor)
    lo, hi = _range_array(lo, "lo", dt), _range_array(hi, "hi", dt)
    if lo.shape != hi.shape:
        raise ValueError(f"lo and hi must have the same shape, got {lo.shape} and {hi.shape}")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError("lo and hi must be finite, got a block min/max of NaN or Inf")
    if (lo > hi).any():
        raise ValueError("lo must be <= hi in every block, got a block with lo > hi")
    qmin, qmax = m.code_range(bits)
    c = dt.type(clip)
    zero = dt.type(0)
    with np.errstate(over="ignore"):
        if m.name == "symmetric":
            absmax = np.maximum(np.abs(lo), np.abs(hi)) * c
            if floor > 0:
                absmax = np.maximum(absmax, dt.type(floor))
            scale = absmax / dt.type(qmax)
            zero_point = np.zeros(scale.shape, np.int32)
        else:
            if m.widen_to_zero:
                xmin, xmax = np.minimum(lo, zero), np.maximum(hi, zero)
            else:
                xmin, xmax = lo, hi
            if m.name == "symmetric_offset":
                xmax = np.maximum(np.abs(xmin), xmax)
                xmin = np.where(xmin < 0, -xmax, xmin)
            if m.widen_to_zero:
                empty = (xmin == 0) & (xmax == 0)
                xmin = np.where(empty, dt.type(-EMPTY_RANGE), xmin)
                xmax = np.where(empty, dt.type(EMPTY_RANGE), xmax)
            xmin, xmax = xmin * c, xmax * c
            span = xmax - xmin
            if floor > 0:
                span = np.maximum(span, dt.type(floor))
            scale = span / dt.type(qmax - qmin)
            if not np.isfinite(scale).all():
                raise ValueError("the range max(x) - min(x) overflows float32 (values near "
                                 "3.4e38); rescale x before quantizing")
            safe = np.where(scale > 0, scale, dt.type(ALL_ZERO_SCALE))
            if m.name == "symmetric_offset":
                zero_point = np.full(scale.shape, 2 ** (bits - 1), np.int32)
            else:
                zero_point = np.clip(-np.rint(xmin / safe), qmin, qmax).astype(np.int32)
    scale = np.where(scale > 0, scale, dt.type(ALL_ZERO_SCALE)).astype(dt)
    return scale, zero_point


def choose_qparams(x: Any, bits: int, block_size: tuple[int, ...] | None = None,
                   mapping: str = "symmetric", clip: float = 1.0, *,
                   range_floor: float | None = None,
                   dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of every block of ``x`` for a named grid (torchao's
    ``choose_qparams_affine``, with this package's mappings).

    Args:
        x: any shape, float (numpy or torch), finite and non-empty.
        bits: 2..8. block_size: one entry per dimension (``None``: per tensor).
        mapping: a key of :data:`MAPPINGS`. clip: fraction of each block's range, (0, 1].
        range_floor: overrides the mapping's floor on the range. dtype: compute precision.
    Returns:
        ``(scale, zero_point)``, each of shape ``x.shape // block_size``: float32 (``dtype``)
        and int32.
    """
    if mapping is None:
        raise ValueError(f"mapping must be one of {tuple(MAPPINGS)}, got None")
    _mapping(mapping)
    arr = _to_numpy_float32(x, keep_float64=np.dtype(dtype) == np.float64)
    arr = arr.astype(_check_dtype(dtype), copy=False)
    bs = _check_block_size(arr.shape, block_size)
    xb = _blocked(arr, bs)
    axes = _block_axes(arr.ndim)
    return qparams_from_range(xb.min(axis=axes), xb.max(axis=axes), bits, mapping, clip,
                              range_floor=range_floor, dtype=dtype)


def _check_zero_point(zp: Any, n_blocks: tuple[int, ...], m: Mapping, bits: int) -> np.ndarray:
    zp = np.asarray(zp)
    if zp.size != math.prod(n_blocks):
        raise ValueError(f"zero_point must have one entry per block, shape {n_blocks}, got "
                         f"{zp.shape}")
    if zp.dtype.kind not in "iuf" or zp.dtype == np.bool_:
        raise ArgumentTypeError(f"zero_point must be integers, got dtype {zp.dtype}")
    if zp.dtype.kind == "f" and not (np.isfinite(zp).all() and (zp == np.round(zp)).all()):
        raise ValueError("zero_point must hold whole numbers (integer codes), got a fractional "
                         "or non-finite value (round it first)")
    qmin, qmax = m.code_range(bits)
    if zp.size and ((zp < qmin).any() or (zp > qmax).any()):
        raise ValueError(f"zero_point must lie in the code range [{qmin}, {qmax}] of "
                         f"{m.name!r} at {bits} bits, got values from {zp.min()} to {zp.max()}")
    fixed = m.fixed_zero_point(bits)
    if fixed is not None and zp.size and (zp != fixed).any():
        raise ValueError(f"mapping {m.name!r} fixes the zero point at {fixed}, got values from "
                         f"{zp.min()} to {zp.max()}")
    return zp.reshape(n_blocks).astype(np.int32)


def _check_scale(scale: Any, n_blocks: tuple[int, ...], dt: np.dtype, name: str = "scale"):
    if np.size(scale) != math.prod(n_blocks):
        raise ValueError(f"{name} must have one entry per block, shape {n_blocks}, got "
                         f"{np.shape(scale)}")
    s = np.asarray(scale)
    if s.dtype.kind not in "fiu" or s.dtype == np.bool_:
        raise ArgumentTypeError(f"{name} must be a float array, got dtype {s.dtype}")
    s = s.astype(dt).reshape(n_blocks)
    if not (np.isfinite(s).all() and (s > 0).all()):
        bad = s[~(np.isfinite(s) & (s > 0))]
        raise ValueError(f"{name} must be finite and positive in every block, got "
                         f"{bad.size} block(s) with {bad.reshape(-1)[0]!r}")
    return s


def quantize_affine(x: Any, scale: Any, zero_point: Any, bits: int = 8, symmetric: bool = True,
                    block_size: tuple[int, ...] | None = None, mapping: str | None = None, *,
                    inv_scale: Any = None, dtype: Any = np.float32) -> QTensor:
    """Quantize ``x`` on a GIVEN grid (no range search): ``clamp(round(x/scale) + zero_point)``.

    The one place in the package where values are rounded onto an integer grid; every method
    (GPTQ, AWQ, SmoothQuant, LLM.int8(), calibration) calls it.

    Args:
        x: any shape, float (numpy or torch).
        scale: per-block float32, shape ``x.shape // block_size`` (positive).
        zero_point: per-block integers inside the mapping's code range, same shape as ``scale``.
        bits: 2..8. symmetric: legacy flag, used only when ``mapping`` is None
            (True: ``"symmetric"``, False: ``"asymmetric"``).
        block_size: one entry per dimension (``None``: per tensor).
        mapping: a key of :data:`MAPPINGS`; overrides ``symmetric``.
        inv_scale: optional per-block factor to MULTIPLY by instead of dividing by ``scale``
            (bitsandbytes computes ``round(x * (127 / absmax))``; the two differ in the last bit).
        dtype: compute precision, float32 (default) or float64.
    Returns:
        :class:`QTensor` (numpy arrays).
    """
    m = _mapping(mapping, symmetric)
    dt = _check_dtype(dtype)
    arr = _to_numpy_float32(x, keep_float64=dt == np.float64).astype(dt, copy=False)
    bits = _check_bits(bits)
    bs = _check_block_size(arr.shape, block_size)
    n_blocks = tuple(n // b for n, b in zip(arr.shape, bs))
    scale = _check_scale(scale, n_blocks, dt)
    zp = _check_zero_point(zero_point, n_blocks, m, bits)
    qmin, qmax = m.code_range(bits)
    xb = _blocked(arr, bs)
    if inv_scale is None:
        q = np.rint(xb / _expand(scale, arr.ndim))
    else:
        inv = _check_scale(inv_scale, n_blocks, dt, "inv_scale")
        q = np.rint(xb * _expand(inv, arr.ndim))
    q = q + _expand(zp, arr.ndim).astype(dt)
    codes = np.clip(q, qmin, qmax).astype(np.int8 if m.signed else np.uint8).reshape(arr.shape)
    return QTensor(codes, scale, zp, bits, m.name == "symmetric", bs, tuple(arr.shape), m.name)


def dequantize_affine(codes: Any, scale: Any, zero_point: Any,
                      block_size: tuple[int, ...] | None = None, mapping: str = "symmetric", *,
                      bits: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """Codes back to real values: ``(codes - zero_point) * scale`` per block.

    Args:
        codes: integer array (numpy or torch), any shape.
        scale, zero_point: per block, shape ``codes.shape // block_size``.
        block_size: one entry per dimension (``None``: per tensor).
        mapping: a key of :data:`MAPPINGS` (checks the zero points).
        bits: when given, the codes and zero points are checked against its code range
            (default: the widest, 8 bits).
        dtype: float32 (default) or float64.
    Returns:
        ``codes.shape`` ``dtype``.
    """
    if mapping is None:
        raise ValueError(f"mapping must be one of {tuple(MAPPINGS)}, got None")
    m = _mapping(mapping)
    dt = _check_dtype(dtype)
    if _is_torch(codes):
        codes = codes.detach().to("cpu").numpy()
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise ArgumentTypeError(f"codes must be an integer array, got dtype {c.dtype}")
    if c.ndim == 0 or c.size == 0:
        raise ValueError(f"codes must be a non-empty array, got shape {c.shape}")
    b = MAX_BITS if bits is None else _check_bits(bits)
    qmin, qmax = m.code_range(b)
    if (c < qmin).any() or (c > qmax).any():
        raise ValueError(f"codes must lie in [{qmin}, {qmax}] for {m.name!r} at {b} bits, got "
                         f"values from {c.min()} to {c.max()}")
    bs = _check_block_size(c.shape, block_size)
    n_blocks = tuple(n // k for n, k in zip(c.shape, bs))
    s = _check_scale(scale, n_blocks, dt)
    zp = _check_zero_point(zero_point, n_blocks, m, b)
    return _dequantize_blocks(c, s, zp, bs, dt)


def _dequantize_blocks(c: np.ndarray, s: np.ndarray, zp: np.ndarray, bs: tuple[int, ...],
                       dt: np.dtype) -> np.ndarray:
    nd = c.ndim
    cb = _blocked(c.astype(np.int32), bs)
    out = (cb - _expand(zp, nd)).astype(dt) * _expand(s, nd)
    return out.reshape(c.shape).astype(dt, copy=False)


def quantize(x: Any, bits: int = 8, symmetric: bool = True,
             block_size: tuple[int, ...] | None = None, clip: float = 1.0,
             mapping: str | None = None) -> QTensor:
    """Round-to-nearest uniform quantization with one scale (and zero point) per block.

    Args:
        x: any shape ``(d0, d1, ...)``, a float numpy array or torch tensor (float16/32/64;
            computed in float32). Must be finite and non-empty.
        bits: 2..8.
        symmetric: restricted symmetric grid (zero_point 0) or asymmetric grid with zero point
            (ignored when ``mapping`` is given).
        block_size: one entry per dimension, each dividing the shape; ``None`` = per-tensor.
            Build it with :func:`block_size_for`.
        clip: fraction of each block's range that the grid covers, in (0, 1]. Values beyond the
            clipped range saturate at the end codes; a smaller clip trades overload error on
            the few large values for a finer step on all the others.
        mapping: a key of :data:`MAPPINGS` (``"symmetric_offset"`` is GPTQ's grid,
            ``"asymmetric_minmax"`` AWQ's).

    Returns:
        :class:`QTensor` (codes ``x.shape`` int8/uint8, scale ``x.shape // block_size`` float32),
        always numpy arrays, also for torch input (use :func:`fake_quantize` to stay in torch).

    Example:
        ``quantize(W, bits=4, block_size=block_size_for(W.shape, "per_group", 128))`` for
        ``W: (out_features, in_features) float32``.
    """
    m = _mapping(mapping, symmetric)
    arr = _to_numpy_float32(x)
    bits = _check_bits(bits)
    clip = _check_clip(clip)
    bs = _check_block_size(arr.shape, block_size)
    scale, zero_point = choose_qparams(arr, bits, bs, m.name, clip)
    return quantize_affine(arr, scale, zero_point, bits, block_size=bs, mapping=m.name)


def dequantize(q: QTensor) -> np.ndarray:
    """Codes back to real values: ``(codes - zero_point) * scale``, shape ``q.shape`` float32."""
    if not isinstance(q, QTensor):
        raise ValueError(f"dequantize expects a QTensor (from quantize), got {type(q).__name__}")
    codes = np.asarray(q.codes)
    bs = _check_block_size(codes.shape, q.block_size)
    n_blocks = tuple(n // b for n, b in zip(codes.shape, bs))
    if tuple(q.shape) != codes.shape or np.shape(q.scale) != n_blocks \
            or np.shape(q.zero_point) != n_blocks:
        raise ValueError(f"inconsistent QTensor: codes {codes.shape} in blocks {bs} need scale "
                         f"and zero_point of shape {n_blocks}, got {np.shape(q.scale)} and "
                         f"{np.shape(q.zero_point)} (shape field {q.shape})")
    return _dequantize_blocks(np.asarray(q.codes), np.asarray(q.scale, np.float32),
                              np.asarray(q.zero_point), q.block_size, np.dtype(np.float32))


def fake_quantize(x: Any, bits: int = 8, symmetric: bool = True,
                  block_size: tuple[int, ...] | None = None, clip: float = 1.0,
                  mapping: str | None = None) -> Any:
    """``dequantize(quantize(x, ...))`` returned as the same kind and dtype as ``x``.

    numpy in -> numpy out, torch in -> torch out (same dtype and device; no gradient).
    """
    x_hat = dequantize(quantize(x, bits, symmetric, block_size, clip, mapping))
    if _is_torch(x):
        import torch

        return torch.from_numpy(x_hat).to(device=x.device, dtype=x.dtype)
    return x_hat.astype(np.asarray(x).dtype, copy=False)


# --- measuring quality -------------------------------------------------------------------------

def sqnr_db(x: Any, x_hat: Any) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB.

    ``x``, ``x_hat``: same shape, float (numpy or torch); computed in float64. Returns ``inf``
    when ``x_hat == x`` exactly.
    """
    a = _to_numpy_float32(x, "x", keep_float64=True)
    b = _to_numpy_float32(x_hat, "x_hat", keep_float64=True)
    if a.shape != b.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {a.shape} and {b.shape}")
    a = a.astype(np.float64)
    signal = float(np.sum(a * a))
    noise = float(np.sum((a - b.astype(np.float64)) ** 2))
    if signal == 0:
        raise ValueError("x is all zeros: SQNR is undefined (no signal)")
    return math.inf if noise == 0 else 10.0 * math.log10(signal / noise)


def rule_of_thumb_sqnr_db(bits: int) -> float:
    """The textbook ``6.02 n + 1.76`` dB: exact for a full-scale SINE wave on a ``2**n``-level
    midrise grid; ``20 log10(2) = 6.02`` dB per bit, ``10 log10(3/2) = 1.76`` dB from the sine's
    power ``A^2/2`` against a uniform signal's ``A^2/3``."""
    return 20 * math.log10(2) * bits + 10 * math.log10(1.5)


# --- theory: the distortion of this grid for a known input distribution ------------------------

_GL_NODES = 48  # Gauss-Legendre nodes per panel: the pdf is smooth inside a cell, so this is exact
                # to ~1e-12 relative for the cell widths used here
_TAIL_PANELS = 64  # panels for the infinite overload tail after the map x = c + t/(1-t)


def _pdf(dist: str, df: float):
    """Unit-variance density of ``dist`` and its support half-width (inf when unbounded)."""
    if dist == "uniform":
        a = math.sqrt(3.0)
        return (lambda x: np.where(np.abs(x) <= a, 1 / (2 * a), 0.0)), a
    if dist == "gaussian":
        return (lambda x: np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)), math.inf
    if dist == "laplace":
        b = 1 / math.sqrt(2.0)
        return (lambda x: np.exp(-np.abs(x) / b) / (2 * b)), math.inf
    if dist == "student_t":
        s = math.sqrt((df - 2) / df)  # scale giving unit variance
        logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        return (lambda x: np.exp(logc) / s * (1 + (x / s) ** 2 / df) ** (-(df + 1) / 2)), math.inf
    raise AssertionError(dist)


def _check_dist(dist: str, df: float) -> None:
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"dist must be one of {DISTRIBUTIONS}, got {dist!r}")
    if dist == "student_t" and not (isinstance(df, (int, float, np.integer, np.floating))
                                    and not isinstance(df, bool) and 2 < df < math.inf):
        raise ValueError(f"student_t needs a finite df > 2 for a finite variance, got df={df!r}")


def _levels(bits: int, symmetric: bool, clip: float) -> np.ndarray:
    """Reconstruction levels with the outer ones at +-clip: :func:`quantize`'s symmetric grid
    (``2**bits - 1`` levels, 0 included), or ``2**bits`` evenly spaced levels (midrise: 0 is NOT a
    level; :func:`quantize`'s asymmetric grid differs, its zero point puts 0 on the grid)."""
    qmin, qmax = code_range(bits, symmetric)
    if symmetric:
        return np.arange(qmin, qmax + 1) * (clip / qmax)
    return -clip + np.arange(qmax + 1) * (2 * clip / qmax)  # asymmetric grid over [-clip, clip]


def _gl_integrate(f, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integral of vectorised f over each [a_i, b_i] by Gauss-Legendre."""
    t, w = np.polynomial.legendre.leggauss(_GL_NODES)
    mid, half = (a + b) / 2, (b - a) / 2
    x = mid[:, None] + half[:, None] * t[None, :]
    return (f(x) * w[None, :]).sum(axis=1) * half


def theoretical_distortion(bits: int, dist: str, clip: float | None = None,
                           symmetric: bool = True, df: float = DEFAULT_T_DF) -> tuple[float, float]:
    """Mean squared error of a uniform grid on a unit-variance input, split in two.

    ``symmetric=True`` is exactly :func:`quantize`'s symmetric grid (``2**bits - 1`` levels
    ``k * clip / (2**(bits-1) - 1)``); ``symmetric=False`` is the midrise grid of ``2**bits``
    evenly spaced levels symmetric about 0 (the classic textbook quantizer; :func:`quantize`'s
    asymmetric grid is this one shifted so that 0 is a level).
    The grid has its outer levels at ``+-clip`` (clip in standard deviations of the input;
    ``None`` = the end of the support for the bounded ``"uniform"`` (sqrt 3) and ``"sine"``
    (sqrt 2) inputs). Inside each cell (between midpoints of neighbouring levels) the error
    is integrated numerically against the density (Gauss-Legendre):

    * granular distortion: inputs inside ``[-clip, clip]``, error at most half a step;
    * overload distortion: inputs beyond ``+-clip``, which saturate at the end level.

    Returns:
        ``(granular, overload)`` mean squared errors (the input has variance 1).
    """
    bits = _check_bits(bits)
    _check_dist(dist, df)
    support = {"uniform": math.sqrt(3.0), "sine": math.sqrt(2.0)}.get(dist, math.inf)
    if clip is None:
        if math.isinf(support):
            raise ValueError(f"dist {dist!r} is unbounded: pass clip (in standard deviations), "
                             f"got clip=None; "
                             f"e.g. optimal_clip({bits}, {dist!r})")
        clip = support
    if not (isinstance(clip, (int, float, np.floating)) and 0 < clip < math.inf):
        raise ValueError(f"clip must be a positive number of standard deviations, got {clip!r}")
    y = _levels(bits, symmetric, float(clip))
    edges = np.concatenate([[-clip], (y[1:] + y[:-1]) / 2, [clip]])
    # cell i covers [edges[i], edges[i+1]] and maps to y[i]; the outer half-cells end at +-clip
    lo, hi = np.maximum(edges[:-1], -support), np.minimum(edges[1:], support)
    keep = hi > lo
    if dist == "sine":  # x = sqrt(2) sin(theta), theta uniform: integrate over the phase,
        # where the density's endpoint singularity disappears
        amp = math.sqrt(2.0)
        th_lo, th_hi = np.arcsin(lo[keep] / amp), np.arcsin(hi[keep] / amp)
        yk = y[keep][:, None]
        granular = _gl_integrate(lambda th: (amp * np.sin(th) - yk) ** 2 / math.pi, th_lo, th_hi).sum()
        return float(granular), 0.0
    pdf, _ = _pdf(dist, df)
    yk = y[keep][:, None]
    granular = float(_gl_integrate(lambda x: (x - yk) ** 2 * pdf(x), lo[keep], hi[keep]).sum())
    overload = 0.0
    if clip < support:  # both tails by symmetry; map [clip, inf) to t in [0, 1)
        def tail(t):
            x = clip + t / (1 - t) if math.isinf(support) else clip + t * (support - clip)
            jac = 1 / (1 - t) ** 2 if math.isinf(support) else (support - clip)
            return (x - clip) ** 2 * pdf(x) * jac
        knots = np.linspace(0.0, 1.0, _TAIL_PANELS + 1)
        overload = 2 * float(_gl_integrate(tail, knots[:-1], knots[1:]).sum())
    return float(granular), float(overload)


def theoretical_sqnr_db(bits: int, dist: str, clip: float | None = None, symmetric: bool = True,
                        df: float = DEFAULT_T_DF) -> float:
    """Predicted SQNR (dB) of a ``bits``-bit uniform grid (see :func:`theoretical_distortion` for
    ``symmetric``) whose outer levels sit at ``+-clip`` standard deviations, for a unit-variance ``dist`` input in :data:`DISTRIBUTIONS`:
    ``-10 log10(granular + overload)`` from :func:`theoretical_distortion`."""
    g, o = theoretical_distortion(bits, dist, clip, symmetric, df)
    return -10.0 * math.log10(g + o)


_GOLDEN = (math.sqrt(5) - 1) / 2  # golden-section step: shrinks the bracket by 0.618 per probe
_CLIP_TOL = 1e-7  # standard deviations: the SQNR is flat to ~1e-12 dB within this of the optimum
_CLIP_SEARCH_ITERS = 60  # bracket width shrinks by 0.618**60 ~ 3e-13: far below any use


def optimal_clip(bits: int, dist: str, symmetric: bool = True,
                 df: float = DEFAULT_T_DF) -> tuple[float, float]:
    """Clip (in standard deviations) that maximises :func:`theoretical_sqnr_db`, and that SQNR.

    A coarse scan finds the bracket, golden-section search refines it (the MSE is unimodal in
    the clip for these symmetric unimodal densities). Returns ``(clip, sqnr_db)``.
    """
    bits = _check_bits(bits)
    _check_dist(dist, df)
    top = {"uniform": math.sqrt(3.0), "sine": math.sqrt(2.0)}.get(dist, 40.0)
    grid = np.linspace(0.05, top, 60)
    vals = [theoretical_sqnr_db(bits, dist, float(c), symmetric, df) for c in grid]
    i = int(np.argmax(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    f = lambda c: -theoretical_sqnr_db(bits, dist, float(c), symmetric, df)  # noqa: E731
    c1, c2 = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    f1, f2 = f(c1), f(c2)
    for _ in range(_CLIP_SEARCH_ITERS):
        if f1 < f2:
            b, c2, f2 = c2, c1, f1
            c1 = b - _GOLDEN * (b - a)
            f1 = f(c1)
        else:
            a, c1, f1 = c1, c2, f2
            c2 = a + _GOLDEN * (b - a)
            f2 = f(c2)
        if b - a < _CLIP_TOL:
            break
    c = (a + b) / 2
    return float(c), theoretical_sqnr_db(bits, dist, float(c), symmetric, df)


def sample_distribution(dist: str, n: int, seed: int = 0, df: float = DEFAULT_T_DF) -> np.ndarray:
    """``n`` float32 samples of a unit-variance ``dist`` (seeded; the inputs the theory assumes)."""
    _check_dist(dist, df)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer count, got {n!r}")
    rng = np.random.default_rng(seed)
    if dist == "uniform":
        x = rng.uniform(-math.sqrt(3), math.sqrt(3), n)
    elif dist == "gaussian":
        x = rng.standard_normal(n)
    elif dist == "laplace":
        x = rng.laplace(0.0, 1 / math.sqrt(2), n)
    elif dist == "student_t":
        x = rng.standard_t(df, n) * math.sqrt((df - 2) / df)
    else:
        x = math.sqrt(2) * np.sin(rng.uniform(-math.pi, math.pi, n))
    return x.astype(np.float32)
