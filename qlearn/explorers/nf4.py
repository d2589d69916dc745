"""Explore bitsandbytes' 4-bit formats: block size and quant type on one weight matrix.

``plot_4bit(W, blocksize, quant_type)`` draws the first block's values against its 16 levels and
the error of the whole matrix as bits per weight change (the static figure); ``explore(W)``
wraps it in ipywidgets controls.
"""

from __future__ import annotations

import numpy as np

from qlearn import nf4

__all__ = ["summary", "plot_4bit", "explore"]

HIST_BINS = 60
QUANT_TYPES = ("nf4", "fp4", "int4")


def summary(W, blocksize: int = 64, quant_type: str = "nf4",
            compress_statistics: bool = False) -> dict:
    """Relative MSE and bits per weight of 4-bit ``W`` (any shape, float32).

    Returns ``rel_mse`` (||W - W_hat||^2 / ||W||^2), ``bits`` (storage per weight), ``levels``
    (the first block's 16 reconstruction values) and ``block`` (that block's weights).
    """
    W = np.asarray(W, dtype=np.float32)
    W_hat = nf4.fake_quantize_4bit(W, blocksize, quant_type, compress_statistics)
    flat = W.reshape(-1)
    absmax = np.abs(flat[:blocksize]).max()
    code = {"nf4": nf4.NF4_CODE, "fp4": nf4.FP4_CODE, "int4": nf4.INT4_CODE}[quant_type]
    return {"rel_mse": float(np.sum((W - W_hat) ** 2) / np.sum(W ** 2)),
            "bits": nf4.bits_per_weight(blocksize, compress_statistics),
            "levels": np.unique(code * absmax), "block": flat[:blocksize]}


def plot_4bit(W, blocksize: int = 64, quant_type: str = "nf4", compress_statistics: bool = False):
    """Left: first block's histogram and its levels. Right: error vs block size, all types."""
    import matplotlib.pyplot as plt

    info = summary(W, blocksize, quant_type, compress_statistics)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(7, 3.2))
    ax0.hist(info["block"], bins=HIST_BINS, color="#4c72b0", alpha=0.8, label="weights")
    for v in info["levels"]:
        ax0.axvline(v, color="#dd8452", lw=1)
    ax0.set_title(f"first block ({blocksize} values), {quant_type} levels")
    ax0.set_xlabel("weight value")
    sizes = [bs for bs in nf4.BLOCKSIZES if bs <= np.asarray(W).size]
    for qt in QUANT_TYPES:
        infos = [summary(W, bs, qt, compress_statistics) for bs in sizes]
        pts = [(i["bits"], i["rel_mse"]) for i in infos]
        ax1.plot(*zip(*pts), "o-", label=qt, lw=2.5 if qt == quant_type else 1)
    ax1.plot(info["bits"], info["rel_mse"], "k*", ms=14, label="selected")
    ax1.set_xlabel("bits per weight (4 + block constants)")
    ax1.set_ylabel("relative MSE")
    ax1.set_title(f"rel. MSE {info['rel_mse']:.4f} at {info['bits']:.3f} bits/weight")
    ax1.legend()
    fig.tight_layout()
    return fig


def explore(W):
    """ipywidgets controls (block size, quant type, double quantization) over :func:`plot_4bit`."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(blocksize, quant_type, double_quant):
        plot_4bit(W, blocksize, quant_type, double_quant)
        plt.show()

    return widgets.interactive(
        show,
        blocksize=widgets.SelectionSlider(options=list(nf4.BLOCKSIZES), value=64,
                                          description="block size"),
        quant_type=widgets.ToggleButtons(options=list(QUANT_TYPES), value="nf4",
                                         description="type"),
        double_quant=widgets.Checkbox(value=False, description="double quant"))
