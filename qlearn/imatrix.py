"""Importance matrix (llama.cpp's ``llama-imatrix``): how much each input column matters.

For a linear layer ``y = W @ a`` the error a weight perturbation ``dW[:, j]`` causes is
``dW[:, j] * a_j``, so its expected squared size over the calibration data scales with
``E[a_j^2]``. llama.cpp therefore records, per weight matrix and per input column ``j``, the
mean of the squared activations that reached that column, and the k-quant search weighs each
weight's squared error by it (``quantize(x, qtype, imatrix=...)``). One vector of
``in_features`` numbers per matrix, shared by all its rows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["compute_imatrix"]


def compute_imatrix(activations: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean of squared activations per input column, per weight matrix.

    activations: name -> ``(tokens, in_features)`` float32, the inputs captured at that linear
        layer (e.g. ``qlearn.adapters.capture_inputs``); torch tensors are accepted too.
    Returns name -> ``(in_features,)`` float32 with ``imatrix[j] = mean_t a[t, j]^2``,
    accumulated in float64 (llama.cpp sums in float32 over chunks; the difference is rounding).
    """
    if not isinstance(activations, dict) or not activations:
        raise ValueError("activations must be a non-empty dict name -> (tokens, in_features) array")
    out = {}
    for name, a in activations.items():
        if hasattr(a, "detach"):  # torch.Tensor
            a = a.detach().cpu().numpy()
        a = np.asarray(a)
        if a.ndim != 2:
            raise ValueError(
                f"activations[{name!r}] must be (tokens, in_features), got shape {a.shape} "
                "(flatten batch and sequence: a.reshape(-1, a.shape[-1]))"
            )
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"activations[{name!r}] is empty, shape {a.shape}: capture at least one token")
        if a.dtype.kind != "f":
            raise ValueError(f"activations[{name!r}] must be floating point, got {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(
                f"activations[{name!r}] contains {int((~np.isfinite(a)).sum())} NaN/Inf values; "
                "fix the model run before computing an imatrix"
            )
        a64 = a.astype(np.float64)
        out[name] = (np.einsum("tj,tj->j", a64, a64) / a.shape[0]).astype(np.float32)
    return out
