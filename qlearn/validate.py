"""The one validator module: every public function of qlearn checks its arguments here.

A bad argument fails with a ``ValueError`` (wrong value) or ``TypeError`` (wrong kind) that says
what was expected and what came, instead of an exception from deep inside numpy, torch or gguf,
or a silent NaN. Policies decided once:

* **bits**: each method's range is stated once in :data:`BITS_RANGE`.
* **dtype**: floating-point inputs (float16/bfloat16/float32/float64) are accepted and computed
  in float32 unless a function says otherwise; integer, bool and complex inputs are refused.
* **finite**: NaN/Inf inputs are refused (they would poison a scale).
* **float parameters** (clip, alpha, threshold, ratio, temperature, ...): checked with
  :func:`number` against a stated interval.
* **old keyword names** (``w_bit=``, ``n_bits=``, ...) keep working with a DeprecationWarning
  (:func:`renamed`).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Any, Callable

import numpy as np

__all__ = ["ArgumentTypeError", "BITS_RANGE", "bits", "flag", "number", "integer", "choice", "group_size",
           "float_tensor", "float_array", "renamed", "shape_of"]

class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong kind (e.g. an int dtype where floats are expected).

    A TypeError that is also a ValueError (as numpy's AxisError is both), so code written
    against the older ValueError-only checks keeps catching it."""


BITS_RANGE: dict[str, tuple[int, int]] = {
    "uniform": (2, 8),       # codes stored in (u)int8; 1 bit is binarization, another topic
    "gptq": (2, 8),          # packed into int32 words by AutoGPTQ, 2..8 in the reference
    "awq": (2, 8),           # llm-awq/AutoAWQ quantize 2..8 bits (4 in practice)
    "smoothquant": (2, 8),   # absmax fake quantization, int8 in the paper
    "calibration": (2, 8),   # activation grids, same core as uniform
}


def _kind(x: Any) -> str:
    return type(x).__name__


def bits(value: Any, name: str = "bits", lo: int = 2, hi: int = 8) -> int:
    """An integer bit width in ``[lo, hi]`` (bool refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{name} must be an integer from {lo} to {hi}, got {value!r} "
                        f"({_kind(value)})")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    return int(value)


def flag(value: Any, name: str) -> bool:
    """A bool (numpy bools accepted)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r} ({_kind(value)})")
    return bool(value)


def number(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf,
           lo_open: bool = False, hi_open: bool = False, hint: str = "") -> float:
    """A finite real number in the interval ``lo..hi`` (open or closed ends)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r} ({_kind(value)})")
    v = float(value)
    below = v <= lo if lo_open else v < lo
    above = v >= hi if hi_open else v > hi
    if not math.isfinite(v) or below or above:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}"
                         + (f" ({hint})" if hint else ""))
    return v


def integer(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (bool refused) with optional bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{name} must be an integer, got {value!r} ({_kind(value)})")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def choice(value: Any, name: str, options) -> Any:
    """One of ``options`` (compared with ==, hashable values)."""
    options = tuple(options)
    try:
        ok = value in options
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def group_size(value: Any, n: int, name: str = "group_size") -> int:
    """A group size dividing ``n``; ``-1`` means one group of ``n``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{name} must be a positive int or -1, got {value!r} ({_kind(value)})")
    if value == -1:
        return int(n)
    if value <= 0:
        raise ValueError(f"{name} must be a positive int or -1, got {value!r}")
    if n % value:
        raise ValueError(f"{name} must divide in_features = {n}, got {value} (pick a divisor "
                         f"such as 32, 64 or 128, or -1 for one group per row)")
    return int(value)


def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", np.shape(x)))


def float_tensor(x: Any, name: str, ndim: int | tuple[int, ...] | None = None,
                 shape_doc: str = "", finite: bool = True, allow_empty: bool = False,
                 dtypes: str = "float") -> "torch.Tensor":  # noqa: F821
    """``x`` (torch tensor or numpy array) as a float32 torch tensor, checked.

    Args:
        ndim: required number of dimensions (int or tuple of allowed ones).
        dtypes: ``"float"`` accepts any floating dtype (converted to float32), ``"float32"``
            only float32.
    """
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype.kind == "c" or x.dtype.kind not in "fiub":
            raise ArgumentTypeError(f"{name} must be a real floating-point array, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch tensor or numpy array, got {_kind(x)} "
                        f"(wrap it with torch.as_tensor(..., dtype=torch.float32))")
    if not x.is_floating_point():
        raise ArgumentTypeError(f"{name} must be floating point, got dtype {x.dtype} "
                        f"(convert with {name}.float())")
    if dtypes == "float32" and x.dtype != torch.float32:
        raise ArgumentTypeError(f"{name} must be float32, got {x.dtype} (convert with {name}.float())")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions "
                             f"{shape_doc}, got shape {tuple(x.shape)}")
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float32)
    if finite and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/Inf entries of {x.numel()}")
    return x


def float_array(x: Any, name: str, ndim: int | tuple[int, ...] | None = None,
                dtype: Any = np.float32, finite: bool = True,
                allow_empty: bool = False) -> np.ndarray:
    """``x`` (numpy array, torch tensor or list) as a real float numpy array of ``dtype``."""
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        if x.is_complex() or not x.is_floating_point():
            raise ArgumentTypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        x = x.detach().to("cpu").float().numpy()
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise ArgumentTypeError(f"{name} must be an array of numbers, got {_kind(x)} ({e})") from None
    if arr.dtype.kind != "f":
        raise ArgumentTypeError(f"{name} must be a real floating-point array, got dtype "
                                f"{arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, "
                             f"got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    arr = arr.astype(dtype, copy=False)
    if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/Inf value(s) of {arr.size}")
    return arr


def renamed(**old_to_new: str) -> Callable:
    """Decorator: accept old keyword names as deprecated aliases of the new ones.

    ``@renamed(w_bit="bits")`` lets ``f(W, w_bit=4)`` call ``f(W, bits=4)`` with a
    DeprecationWarning; passing both names is a TypeError.
    """
    def deco(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters
        for new in old_to_new.values():
            if new not in params:
                raise AssertionError(f"{fn.__name__} has no parameter {new!r}")

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {new}= and its deprecated "
                                        f"alias {old}=; pass only {new}=")
                    warnings.warn(f"{fn.__name__}({old}=...) is deprecated, use {new}=",
                                  DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.__signature__ = inspect.signature(fn)
        wrapper.deprecated_aliases = dict(old_to_new)
        return wrapper
    return deco
