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
* **old keyword names** (``w_bit=``, ``n_bits=``, ``mode=``, ``quant_type=``, ``blocksize=``)
  keep working with a DeprecationWarning (:func:`renamed`); functions mirroring an upstream API
  keep its keyword and also accept the project's (:func:`also_accepts`).
* **models and token ids**: :func:`module`, :func:`model_tokens`, :func:`language_model`
  (ids inside the model's vocabulary), :func:`tokenizer`, :func:`text`; files: :func:`path`,
  :func:`gguf_file` (safetensors: :mod:`qlearn.checkpoint`).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Any, Callable

import numpy as np

__all__ = ["ArgumentTypeError", "BITS_RANGE", "bits", "flag", "number", "integer", "choice",
           "group_size", "float_tensor", "float_array", "float32_array", "renamed", "also_accepts",
           "shape_of", "module", "tokens", "model_tokens", "language_model", "vocab_size", "text",
           "tokenizer", "function", "optional_integer", "path", "gguf_file", "seed", "threads"]

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
            raise ArgumentTypeError(f"{name} must be a real floating point array, got dtype {x.dtype}")
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
        raise ArgumentTypeError(f"{name} must be a real floating point array, got dtype "
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


def _keyword_aliases(alias_to_param: dict[str, str], deprecated: bool) -> Callable:
    """Decorator factory: let ``f(alias=v)`` mean ``f(param=v)`` (a DeprecationWarning when
    ``deprecated``); passing both names is a TypeError."""
    def deco(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters
        for param in alias_to_param.values():
            if param not in params:
                raise AssertionError(f"{fn.__name__} has no parameter {param!r}")

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for alias, param in alias_to_param.items():
                if alias in kwargs:
                    if param in kwargs:
                        raise TypeError(
                            f"{fn.__name__}() got both {param}= and its deprecated alias {alias}=;"
                            f" pass only {param}=" if deprecated else
                            f"{fn.__name__}() got both {param}= and {alias}= (the same setting);"
                            f" pass one")
                    if deprecated:
                        warnings.warn(f"{fn.__name__}({alias}=...) is deprecated, use {param}=",
                                      DeprecationWarning, stacklevel=2)
                    kwargs[param] = kwargs.pop(alias)
            return fn(*args, **kwargs)

        wrapper.__signature__ = inspect.signature(fn)
        if deprecated:
            wrapper.deprecated_aliases = dict(alias_to_param)
        else:
            wrapper.project_names = dict(alias_to_param)
        return wrapper
    return deco


def renamed(**old_to_new: str) -> Callable:
    """Decorator: accept old keyword names as deprecated aliases of the new ones.

    ``@renamed(w_bit="bits")`` lets ``f(W, w_bit=4)`` call ``f(W, bits=4)`` with a
    DeprecationWarning; passing both names is a TypeError.
    """
    return _keyword_aliases(old_to_new, deprecated=True)


# --- model-level arguments ------------------------------------------------------------------------

def module(model: Any, name: str = "model", decoder: bool = False) -> "torch.nn.Module":  # noqa: F821
    """A ``torch.nn.Module``; with ``decoder`` one with Llama naming (``embed_tokens`` and a
    ``layers`` list of decoder layers, as ``qlearn.models.load`` returns)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(f"{name} must be a torch.nn.Module (e.g. qlearn.models.load('tiny')"
                                f"[0]), got {_kind(model)}")
    if decoder:
        missing = [a for a in ("embed_tokens", "layers") if not hasattr(model, a)]
        if missing or len(model.layers) == 0:
            raise ValueError(f"{name} must be a decoder with Llama naming (embed_tokens and a "
                             f"non-empty layers list), got {_kind(model)} without "
                             f"{' and '.join(missing) or 'decoder layers'}")
    return model


def tokens(x: Any, name: str = "tokens", ndim: int | tuple[int, ...] = (1, 2),
           vocab_size: int | None = None, min_tokens: int = 1,
           shape_doc: str = "(seq,) or (batch, seq)") -> "torch.Tensor":  # noqa: F821
    """Token ids as an int64 torch tensor: integer dtype, ``ndim`` dimensions, at least
    ``min_tokens`` ids, each in ``[0, vocab_size)``."""
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "iu":
            raise ArgumentTypeError(f"{name} must hold integer token ids, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, (list, tuple)):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ArgumentTypeError(f"{name} must be a tensor of token ids, got {_kind(x)} ({e})"
                                    ) from None
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be an int64 tensor of token ids (e.g. from "
                                f"tokenizer.encode), got {_kind(x)}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ArgumentTypeError(f"{name} must hold integer token ids, got dtype {x.dtype}")
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.dim() not in allowed:
        raise ValueError(f"{name} must be {'-D or '.join(map(str, allowed))}-D "
                         f"({shape_doc}), got shape {tuple(x.shape)}")
    if x.numel() < min_tokens:
        raise ValueError(f"{name} must be non-empty, at least {min_tokens} token(s), got shape "
                         f"{tuple(x.shape)}")
    if x.numel():
        lo, hi = (int(v) for v in torch.aminmax(x))
        if lo < 0 or (vocab_size is not None and hi >= vocab_size):
            raise ValueError(f"{name} must be ids in [0, {vocab_size}), got values from {lo} "
                             f"to {hi}")
    return x.long()


def text(value: Any, name: str = "text", allow_empty: bool = False) -> str:
    """A str (non-empty unless ``allow_empty``)."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str, got {_kind(value)}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    return value


def tokenizer(tok: Any, name: str = "tokenizer") -> Any:
    """An object with ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``."""
    if not (callable(getattr(tok, "encode", None)) and callable(getattr(tok, "decode", None))):
        raise ArgumentTypeError(f"{name} must have encode() and decode() (qlearn.models."
                                f"load(...)[1]), got {_kind(tok)}")
    return tok


def function(value: Any, name: str) -> Callable:
    """A callable."""
    if not callable(value):
        raise ArgumentTypeError(f"{name} must be callable, got {value!r} ({_kind(value)})")
    return value


def optional_integer(value: Any, name: str, lo: int | None = None,
                     hi: int | None = None) -> int | None:
    """None or an :func:`integer`."""
    return None if value is None else integer(value, name, lo, hi)


def path(value: Any, name: str = "path", exists: bool = False, suffix: str | None = None):
    """A ``str`` or ``os.PathLike`` as a Path; ``exists``: an existing file."""
    import os
    from pathlib import Path

    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and not value):
        raise ArgumentTypeError(f"{name} must be a file path (str or pathlib.Path), got "
                                f"{value!r} ({_kind(value)})")
    p = Path(value)
    if suffix is not None and p.suffix != suffix:
        raise ValueError(f"{name} must end in {suffix}, got {str(p)!r}")
    if exists and not p.is_file():
        raise ValueError(f"{name} must be an existing file, got {str(p)!r}")
    return p


def vocab_size(model: Any) -> int | None:
    """The number of token ids ``model`` embeds: ``embed_tokens.num_embeddings`` or
    ``config.vocab_size`` (None if it has neither)."""
    n = getattr(getattr(model, "embed_tokens", None), "num_embeddings", None)
    return n if n is not None else getattr(getattr(model, "config", None), "vocab_size", None)


def language_model(model: Any, name: str = "model") -> int:
    """A module mapping (batch, seq) token ids to logits; returns its vocabulary size."""
    module(model, name)
    n = vocab_size(model)
    if not isinstance(n, int):
        raise ValueError(f"{name} must be a language model over token ids (embed_tokens or "
                         f"config.vocab_size, e.g. qlearn.models.load('tiny')[0]), got "
                         f"{type(model).__name__} without either")
    return n


def model_tokens(model: Any, toks: Any, name: str = "tokens", ndim: int | tuple[int, ...] = (1, 2),
                 min_tokens: int = 1, shape_doc: str = "(seq,) or (batch, seq)"
                 ) -> "torch.Tensor":  # noqa: F821
    """A Llama-named decoder and token ids it can embed: the checked ``toks`` (int64)."""
    module(model, decoder=True)
    return tokens(toks, name, ndim, vocab_size(model), min_tokens, shape_doc)


def seed(value: Any, name: str = "seed") -> int:
    """A random seed: an integer >= 0."""
    return integer(value, name, lo=0)


def threads(value: Any, name: str = "threads") -> int | None:
    """None (leave torch's setting) or a positive thread count."""
    return optional_integer(value, name, lo=1)


def also_accepts(**project_to_upstream: str) -> Callable:
    """Decorator for functions that mirror an upstream API by name: keep the upstream keyword
    and also accept the project's name for the same idea, without a warning.

    ``@also_accepts(group_size="blocksize", qtype="quant_type")`` lets
    ``nf4.quantize_4bit(x, group_size=64, qtype="nf4")`` mean ``blocksize=64,
    quant_type="nf4"`` (bitsandbytes' names); passing both names is a TypeError.
    """
    return _keyword_aliases(project_to_upstream, deprecated=False)


def float32_array(x: Any, name: str, ndim: int | tuple[int, ...] | None = None,
                  shape_doc: str = "", finite: bool = True, allow_empty: bool = False,
                  hint: str = "") -> np.ndarray:
    """``x`` as a C-contiguous numpy float32 array, checked without conversion.

    The strict dtype policy of the ggml-format kernels (:mod:`qlearn.kquants`,
    :mod:`qlearn.kernels`): they read the bytes of a float32 array as ggml does, so another
    dtype is refused (with the conversion to use) rather than converted silently."""
    if not isinstance(x, np.ndarray):
        raise ArgumentTypeError(f"{name} must be a numpy float32 array {shape_doc}, got "
                                f"{_kind(x)}{' (' + hint + ')' if hint else ''}".replace("  ", " "))
    if x.dtype != np.float32:
        raise ArgumentTypeError(f"{name} must be float32, got {x.dtype} (convert with "
                                f"x.astype(np.float32))")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            raise ValueError(f"{name} must be {'-D or '.join(map(str, allowed))}-D {shape_doc}, "
                             f"got shape {x.shape}".replace("  ", " "))
    if not allow_empty and x.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {x.shape}")
    if finite and not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(x)).sum())} NaN or Inf "
                         f"values of {x.size} (clean the tensor first)")
    return np.ascontiguousarray(x)


def gguf_file(value: Any, name: str = "gguf_path"):
    """An existing ``.gguf`` file (for the llama.cpp tools), as a Path."""
    p = path(value, name)
    if not p.is_file():
        raise ValueError(f"{name} must be an existing GGUF file, got {str(p)!r} (no such file)")
    return p
