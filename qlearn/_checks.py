"""Input validation shared by the activation-aware methods (AWQ, SmoothQuant, LLM.int8()).

Every public function of those modules validates here, so a bad tensor fails with a message that
says what was expected, what came, and how to fix it, instead of crashing deep inside torch.
"""

from __future__ import annotations

import numpy as np
import torch

from qlearn import validate

__all__ = ["as_float_tensor", "check_matrix", "check_pair", "check_group_size", "check_bits"]


def as_float_tensor(x, name: str) -> torch.Tensor:
    """Return ``x`` as a float32 torch tensor (numpy float32 arrays are accepted and wrapped)."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.float32:
            raise validate.ArgumentTypeError(f"{name} must be float32, got a numpy array of "
                                             f"dtype {x.dtype}")
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise validate.ArgumentTypeError(f"{name} must be a float32 torch tensor, got {type(x).__name__} "
                         f"(wrap it with torch.as_tensor(..., dtype=torch.float32))")
    if x.dtype != torch.float32:
        raise validate.ArgumentTypeError(f"{name} must be float32, got {x.dtype} (convert with {name}.float())")
    return x


def check_matrix(x, name: str, shape_doc: str) -> torch.Tensor:
    """A non-empty, finite, 2-D float32 tensor; ``shape_doc`` names the axes for the message."""
    x = as_float_tensor(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D {shape_doc}, got shape {tuple(x.shape)} "
                         f"(flatten leading axes with {name}.reshape(-1, {name}.shape[-1]))")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/Inf entries "
                         f"(check the calibration data or the layer that produced it)")
    return x


def check_pair(W, X) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a weight ``W (out, in)`` and its input ``X (tokens, in)``."""
    W = check_matrix(W, "W", "(out_features, in_features)")
    X = check_matrix(X, "X", "(tokens, in_features)")
    if X.shape[1] != W.shape[1]:
        raise ValueError(f"X must have in_features = {W.shape[1]} columns to match W "
                         f"{tuple(W.shape)}, got X of shape {tuple(X.shape)} "
                         f"(X holds the layer's inputs, one token per row)")
    return W, X


def check_group_size(in_features: int, group_size: int) -> int:
    """Group size ``g`` must divide ``in_features``; ``-1`` means one group per row."""
    if group_size == -1:
        return in_features
    if not isinstance(group_size, (int, np.integer)) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int or -1, got {group_size!r}")
    if in_features % group_size:
        raise ValueError(f"group_size must divide in_features = {in_features}, got {group_size} "
                         f"(pick a divisor such as 32, 64 or 128, or -1 for per-channel)")
    return int(group_size)


def check_bits(bits: int, name: str = "bits", lo: int = 2, hi: int = 8) -> int:
    """An int bit width in ``[lo, hi]`` (see :func:`qlearn.validate.bits`)."""
    return validate.bits(bits, name, lo, hi)
