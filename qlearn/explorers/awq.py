"""Explore AWQ's scale exponent: how the layer's output error moves as the ratio r goes 0 -> 1.

``plot_ratio(W, X, ratio)`` draws the loss curve of the 20-point search with the chosen ratio
marked, and the per-channel factors s at that ratio against the activation statistic (the static
figure); ``explore(W, X)`` wraps it in a slider.
"""

from __future__ import annotations

import numpy as np
import torch

from qlearn import awq

__all__ = ["ratio_loss", "plot_ratio", "explore"]


def ratio_loss(W: torch.Tensor, X: torch.Tensor, ratio: float, bits: int = 4,
               group_size: int = 128) -> tuple[float, torch.Tensor]:
    """AWQ's search loss at one ratio: ``mean((X W^T - X (Q(W s)/s)^T)^2)``, and the s used.

    ``W: (out, in) float32``, ``X: (tokens, in) float32``; returns ``(loss, s (in,))``.
    """
    W, X = awq.check_pair(W, X)
    x_mean = X.abs().mean(0)
    s = awq.candidate_scales(x_mean, float(ratio)).view(1, -1)
    Q = awq.pseudo_quantize(W * s, bits, group_size)[0] / s
    with torch.no_grad():
        loss = (X @ W.T - X @ Q.T).pow(2).mean().item()
    return loss, s.view(-1)


def plot_ratio(W: torch.Tensor, X: torch.Tensor, ratio: float = 0.5, bits: int = 4,
               group_size: int = 128, search: awq.AWQScale | None = None, axes=None):
    """Two panels: loss vs ratio (grid search, with ``ratio`` marked) and s_j vs mean|x_j|."""
    import matplotlib.pyplot as plt

    if search is None:
        search = awq.search_scale(W, X, bits, group_size)
    loss, s = ratio_loss(W, X, ratio, bits, group_size)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(7, 3.4))
    ax = axes[0]
    ax.plot(search.ratio_grid.numpy(), search.loss_history.numpy(), "o-", ms=3, label="grid search")
    ax.plot([ratio], [loss], "s", color="#c44e52", ms=8, label=f"r = {ratio:.2f}: {loss:.3e}")
    ax.axvline(search.best_ratio, color="#55a868", ls="--", lw=1, label=f"best r = {search.best_ratio:.2f}")
    ax.set_xlabel("ratio r (s = mean|x|^r)")
    ax.set_ylabel("output MSE")
    ax.set_title(f"{bits}-bit g{group_size}: loss vs ratio", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    xm = search.x_mean_abs.numpy()
    ax.plot(xm, s.numpy(), ".", ms=3, color="#4c72b0")
    ax.set_xlabel("mean |x_j| (activation statistic)")
    ax.set_ylabel("s_j")
    ax.set_title(f"per-channel scale at r = {ratio:.2f} (max s / min s = "
                 f"{float(s.max() / s.min()):.1f})", fontsize=9)
    return axes


def explore(W: torch.Tensor, X: torch.Tensor, bits: int = 4, group_size: int = 128,
            search: awq.AWQScale | None = None):
    """A ratio slider over :func:`plot_ratio` (ipywidgets ``interactive``); pass ``search`` to
    reuse a finished :func:`qlearn.awq.search_scale`."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    if search is None:
        search = awq.search_scale(W, X, bits, group_size)

    def show(ratio):
        plot_ratio(W, X, ratio, bits, group_size, search)
        plt.show()

    return widgets.interactive(show, ratio=widgets.FloatSlider(value=0.5, min=0.0, max=1.0,
                                                               step=0.05, description="ratio r"))
