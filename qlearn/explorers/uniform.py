"""Explore uniform quantization of a weight matrix: bits, granularity, clipping, symmetry.

``plot_grid(W, ...)`` draws the histogram of one block of ``W`` with the quantization grid of
that block on top (the static figure); ``explore(W)`` wraps it in sliders.
"""

from __future__ import annotations

import numpy as np

from qlearn import uniform

__all__ = ["plot_grid", "explore", "grid_summary"]

MAX_GRID_LINES = 64  # above this many levels the grid is drawn as a shaded band, not lines
HIST_BINS = 120


def _block_size(shape, granularity: str, group_size: int):
    return uniform.block_size_for(shape, granularity, group_size if granularity == "per_group" else None)


def grid_summary(W: np.ndarray, bits: int = 4, granularity: str = "per_channel", group_size: int = 128,
                 clip: float = 1.0, symmetric: bool = True) -> dict:
    """Quantize ``W: (rows, cols) float32`` and return the numbers the figure shows.

    Returns a dict with ``sqnr_db`` (whole matrix), ``n_scales``, ``block`` (values of the first
    block, 1-D float32), ``levels`` (that block's grid, float32) and ``block_size``.
    """
    W = np.asarray(W)
    bs = _block_size(W.shape, granularity, group_size)
    q = uniform.quantize(W, bits, symmetric, bs, clip)
    qmin, qmax = uniform.code_range(bits, symmetric)
    s, z = float(q.scale.flat[0]), int(q.zero_point.flat[0])
    levels = (np.arange(qmin, qmax + 1) - z).astype(np.float32) * np.float32(s)
    block = W[tuple(slice(0, b) for b in bs)].ravel()
    return {"sqnr_db": uniform.sqnr_db(W, uniform.dequantize(q)), "n_scales": int(q.scale.size),
            "block": block, "levels": levels, "block_size": bs}


def plot_grid(W: np.ndarray, bits: int = 4, granularity: str = "per_channel", group_size: int = 128,
              clip: float = 1.0, symmetric: bool = True, ax=None):
    """Histogram of the first block of ``W: (rows, cols) float32`` with its quantization grid."""
    import matplotlib.pyplot as plt

    info = grid_summary(W, bits, granularity, group_size, clip, symmetric)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.4))
    block, levels = info["block"], info["levels"]
    lo, hi = min(block.min(), levels.min()), max(block.max(), levels.max())
    ax.hist(block, bins=np.linspace(lo, hi, HIST_BINS), color="#4c72b0", alpha=0.8, label="weights")
    if len(levels) <= MAX_GRID_LINES:
        for v in levels:
            ax.axvline(v, color="#dd8452", lw=0.8, alpha=0.9)
    else:
        ax.axvspan(levels.min(), levels.max(), color="#dd8452", alpha=0.15)
    ax.axvline(levels.min(), color="#c44e52", lw=2, label="clipping range")
    ax.axvline(levels.max(), color="#c44e52", lw=2)
    ax.set_yscale("log")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log)")
    kind = "sym" if symmetric else "asym"
    ax.set_title(f"{bits}-bit {kind}, {granularity} block {info['block_size']}, clip {clip:.2f}: "
                 f"{len(levels)} levels, SQNR {info['sqnr_db']:.2f} dB over W", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    return ax


def explore(W: np.ndarray, group_size: int = 128):
    """Sliders for bits, granularity, clip and symmetry over :func:`plot_grid` (an ipywidgets
    ``interactive``; display it as the last expression of a cell)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(bits, granularity, clip, symmetric):
        plot_grid(W, bits, granularity, group_size, clip, symmetric)
        plt.show()

    return widgets.interactive(
        show,
        bits=widgets.IntSlider(value=4, min=uniform.MIN_BITS, max=uniform.MAX_BITS, description="bits"),
        granularity=widgets.Dropdown(options=list(uniform.GRANULARITIES), value="per_channel",
                                     description="granularity"),
        clip=widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="clip"),
        symmetric=widgets.Checkbox(value=True, description="symmetric"))


CLIPS = (1.0, 0.8, 0.6, 0.4, 0.2)  # clip choices of the static interactive figure


def interactive(W: np.ndarray, group_size: int = 128, symmetric: bool = True,
                div_id: str = "uniform-explorer"):
    """The explorer as a figure that works without a kernel: every (bits, granularity, clip)
    of ``W: (rows, cols) float32`` is precomputed (7 x 3 x 5 settings) and a slider swaps them
    in the browser. Returns an ``IPython.display.HTML``; needs ``plotly``."""
    import plotly.graph_objects as go
    from IPython.display import HTML

    from qlearn.explorers import static

    def frame(bits, granularity, clip):
        info = grid_summary(W, bits, granularity, group_size, clip, symmetric)
        block, levels = info["block"], info["levels"]
        # bins over the block alone: the histogram changes only with the granularity
        edges = np.linspace(block.min(), block.max(), HIST_BINS)
        counts, _ = np.histogram(block, bins=edges)
        centres = (edges[:-1] + edges[1:]) / 2
        top = float(max(counts.max(), 1)) * 1.5
        lines_x, lines_y = [], []
        if len(levels) <= MAX_GRID_LINES:
            for v in levels:
                lines_x += [round(float(v), 5), round(float(v), 5), None]
                lines_y += [0.8, top, None]
        l0, l1 = round(float(levels.min()), 5), round(float(levels.max()), 5)
        kind = "sym" if symmetric else "asym"
        title = (f"{bits}-bit {kind}, {granularity}, clip {clip:.2f}: {len(levels)} levels, "
                 f"SQNR {info['sqnr_db']:.2f} dB over W")
        return {"title": title, "traces": [
            {"x": np.round(centres, 5).tolist(), "y": counts.tolist()},
            {"x": lines_x, "y": lines_y},
            {"x": [l0, l0, None, l1, l1], "y": [0.8, top, None, 0.8, top]}]}

    controls = [static.Control("bits", "bits", list(range(uniform.MIN_BITS, uniform.MAX_BITS + 1)), 4),
                static.Control("granularity", "granularity", list(uniform.GRANULARITIES),
                               "per_channel"),
                static.Control("clip", "clip", list(CLIPS), 1.0)]
    frames = {f"{b}|{g}|{c}": frame(b, g, c) for b in controls[0].values
              for g in controls[1].values for c in CLIPS}
    first = frames["4|per_channel|1.0"]
    fig = go.Figure([
        go.Bar(name="weights", marker_color="#4c72b0", **first["traces"][0]),
        go.Scatter(name="levels", mode="lines", line={"color": "#dd8452", "width": 1},
                   **first["traces"][1]),
        go.Scatter(name="clipping range", mode="lines", line={"color": "#c44e52", "width": 2.5},
                   **first["traces"][2])])
    fig.update_layout(title={"text": first["title"], "font": {"size": 13}}, height=380,
                      margin={"l": 60, "r": 10, "t": 50, "b": 45}, bargap=0,
                      template="plotly_white", legend={"x": 1, "xanchor": "right", "y": 1},
                      xaxis_title="weight value", yaxis_title="count (log)", yaxis_type="log")
    return HTML(static.html(fig, controls, frames, div_id))
