"""Explore bitsandbytes' 4-bit formats: block size and quant type on one weight matrix.

``plot_4bit(W, blocksize, quant_type)`` draws the first block's values against its 16 levels and
the error of the whole matrix as bits per weight change (the static figure); ``explore(W)``
wraps it in ipywidgets controls.
"""

from __future__ import annotations

import numpy as np

from qlearn import nf4, validate

__all__ = ["summary", "plot_4bit", "explore"]

HIST_BINS = 60
QUANT_TYPES = ("nf4", "fp4", "int4")


@validate.also_accepts(group_size="blocksize", qtype="quant_type")
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


@validate.also_accepts(group_size="blocksize", qtype="quant_type")
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


def interactive(W, div_id: str = "nf4-explorer"):
    """The explorer as a figure that works without a kernel: every block size x quant type x
    double quantization setting for ``W`` (any shape, float32) is precomputed and the controls
    swap them in the browser. Returns an ``IPython.display.HTML``; needs ``plotly``."""
    import plotly.graph_objects as go
    from IPython.display import HTML
    from plotly.subplots import make_subplots

    from qlearn.explorers import static

    sizes = [bs for bs in nf4.BLOCKSIZES if bs <= np.asarray(W).size]
    table = {(bs, qt, dq): summary(W, bs, qt, dq)
             for bs in sizes for qt in QUANT_TYPES for dq in (False, True)}

    def frame(bs, qt, dq):
        info = table[(bs, qt, dq)]
        counts, edges = np.histogram(info["block"], bins=HIST_BINS // 2)
        top = float(counts.max()) * 1.1
        lx, ly = [], []
        for v in info["levels"]:
            lx += [round(float(v), 5), round(float(v), 5), None]
            ly += [0, top, None]
        curves = [{"x": [table[(s, q, dq)]["bits"] for s in sizes],
                   "y": [round(table[(s, q, dq)]["rel_mse"], 6) for s in sizes]}
                  for q in QUANT_TYPES]
        return {"title": (f"{qt}, blocks of {bs}{', double quant' if dq else ''}: rel. MSE "
                          f"{info['rel_mse']:.4f} at {info['bits']:.3f} bits/weight"),
                "traces": [{"x": np.round((edges[:-1] + edges[1:]) / 2, 5).tolist(),
                            "y": counts.tolist()}, {"x": lx, "y": ly}, *curves,
                           {"x": [info["bits"]], "y": [round(info["rel_mse"], 6)]}]}

    controls = [static.Control("blocksize", "block size", sizes, 64),
                static.Control("quant_type", "type", list(QUANT_TYPES), "nf4"),
                static.Control("double_quant", "double quant", ["no", "yes"], "no")]
    frames = {f"{bs}|{qt}|{dq}": frame(bs, qt, dq == "yes") for bs in sizes
              for qt in QUANT_TYPES for dq in ("no", "yes")}
    first = frames["64|nf4|no"]["traces"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("first block and its 16 levels",
                                                        "rel. MSE vs bits per weight"))
    fig.add_trace(go.Bar(name="weights", marker_color="#4c72b0", **first[0]), 1, 1)
    fig.add_trace(go.Scatter(name="levels", mode="lines", line={"color": "#dd8452"},
                             **first[1]), 1, 1)
    for qt, tr, colour in zip(QUANT_TYPES, first[2:5], ("#55a868", "#8172b2", "#c44e52")):
        fig.add_trace(go.Scatter(name=qt, mode="lines+markers", line={"color": colour},
                                 **tr), 1, 2)
    fig.add_trace(go.Scatter(name="selected", mode="markers",
                             marker={"symbol": "star", "size": 14, "color": "black"},
                             **first[5]), 1, 2)
    fig.update_layout(title={"text": frames["64|nf4|no"]["title"], "font": {"size": 13}},
                      height=380, template="plotly_white", bargap=0,
                      margin={"l": 50, "r": 10, "t": 70, "b": 45})
    fig.update_xaxes(title_text="weight value", row=1, col=1)
    fig.update_xaxes(title_text="bits per weight", row=1, col=2)
    return HTML(static.html(fig, controls, frames, div_id))
