"""Explore GPTQ on one layer: bits, group size and act-order against round-to-nearest.

``running_output_error`` traces the layer's output error column by column (the error-feedback
picture of the chapter); ``compare`` / ``plot_compare`` measure GPTQ and RTN for one setting
(the static figure); ``explore(W, X)`` wraps ``plot_compare`` in ipywidgets controls.
"""

from __future__ import annotations

import numpy as np
import torch

from qlearn import gptq

__all__ = ["running_output_error", "compare", "plot_compare", "explore"]

BITS_CHOICES = (2, 3, 4, 8)
GROUP_CHOICES = (-1, 32, 128)


def running_output_error(W, X, bits: int = 3, sym: bool = True, percdamp: float = gptq.DEFAULT_PERCDAMP):
    """Output error after each column, for RTN and for per-channel GPTQ with one column per step.

    ``W: (out, in) float32``, ``X: (n, in) float32``. After quantizing columns ``0..k`` the weight is
    (RTN) those columns rounded, the rest original; (GPTQ) those columns rounded and the rest
    already corrected by the error feedback. Returns ``(rtn, gptq_curve)``, each ``(in,) float64``
    relative output errors ``||X W^T - X W_k^T||^2 / ||X W^T||^2``. The last GPTQ point equals
    :func:`qlearn.gptq.gptq_quantize`'s error (per channel) up to float rounding.
    """
    W = torch.as_tensor(np.asarray(W, dtype=np.float32))
    X = torch.as_tensor(np.asarray(X, dtype=np.float32))
    H = gptq.hessian(X).clone()
    scale, zero = gptq.find_params(W, bits, sym)
    scale, zero = scale[:, None], zero[:, None]
    mapping = gptq._mapping(sym)  # the reference grid in qlearn.uniform

    def fake_quantize(w):
        return scale * (gptq._codes(w, scale, zero, bits, mapping).float() - zero)

    q_rtn = fake_quantize(W)
    H.diagonal().add_(percdamp * H.diagonal().mean())
    U = gptq._inverse_hessian_cholesky(H)
    G = X.double().T @ X.double()
    ref = float(((W.double() @ G) * W.double()).sum())

    def err(Wk):
        D = (W - Wk).double()
        return float(((D @ G) * D).sum()) / ref

    cur = W.clone()
    rtn_curve, gptq_curve = [], []
    for i in range(W.shape[1]):
        w = cur[:, i:i + 1]
        q = fake_quantize(w)
        e = (w - q) / U[i, i]
        cur[:, i:] -= e @ U[i:i + 1, i:]
        cur[:, i:i + 1] = q
        gptq_curve.append(err(cur))
        part = W.clone()
        part[:, :i + 1] = q_rtn[:, :i + 1]
        rtn_curve.append(err(part))
    return np.array(rtn_curve), np.array(gptq_curve)


def compare(W, X, bits: int = 4, group_size: int = 128, act_order: bool = False, sym: bool = True,
            H=None, gram=None) -> dict:
    """Relative output errors of RTN and GPTQ for one setting: ``{"rtn", "gptq", "ratio"}``."""
    W = torch.as_tensor(np.asarray(W, dtype=np.float32))
    X = np.asarray(X, dtype=np.float32)
    H = gptq.hessian(X) if H is None else H
    gram = X.astype(np.float64).T @ X.astype(np.float64) if gram is None else gram
    r = gptq.rtn_quantize(W, bits, group_size, sym)
    g = gptq.gptq_quantize(W, H, bits, group_size, sym, act_order=act_order)
    e_r = gptq.relative_output_error(None, W, r.Q, gram=gram)
    e_g = gptq.relative_output_error(None, W, g.Q, gram=gram)
    return {"rtn": e_r, "gptq": e_g, "ratio": e_g / e_r}


def plot_compare(W, X, bits: int = 4, group_size: int = 128, act_order: bool = False,
                 H=None, gram=None):
    """Bar chart of the output error of RTN and GPTQ for one setting (log scale)."""
    import matplotlib.pyplot as plt

    res = compare(W, X, bits, group_size, act_order, H=H, gram=gram)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar(["RTN", "GPTQ" + (" + act-order" if act_order else "")], [res["rtn"], res["gptq"]],
           color=["#999999", "#4c72b0"])
    ax.set_yscale("log")
    ax.set_ylabel("relative output error")
    gs = "per channel" if group_size == -1 else f"group {group_size}"
    ax.set_title(f"{bits}-bit, {gs}: GPTQ / RTN = {res['ratio']:.2f}")
    fig.tight_layout()
    return fig, res


def explore(W, X, H=None, gram=None):
    """ipywidgets controls (bits, group size, act-order) over :func:`plot_compare`.

    Pass ``H`` (:func:`qlearn.gptq.hessian`) and ``gram`` (``X^T X`` float64) to reuse them.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    X = np.asarray(X, dtype=np.float32)
    H = gptq.hessian(X) if H is None else H
    gram = X.astype(np.float64).T @ X.astype(np.float64) if gram is None else gram

    def show(bits=4, group_size=128, act_order=False):
        plot_compare(W, X, bits, group_size, act_order, H=H, gram=gram)
        plt.show()

    return widgets.interactive(show, bits=widgets.Dropdown(options=BITS_CHOICES, value=4),
                               group_size=widgets.Dropdown(options=GROUP_CHOICES, value=128),
                               act_order=widgets.Checkbox(value=False))
